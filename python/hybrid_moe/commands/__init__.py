"""Subcommands of the `hybrid-moe` CLI, one module each (see hybrid_moe.cli)."""
