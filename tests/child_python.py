"""A fresh Python process for tests of settings read once per process (environment variables)."""

from __future__ import annotations

import os
import subprocess
import sys


def run_python(code: str, *args: str, env: dict | None = None, timeout: float = 120, cwd=None):
    """Run `code` in a new interpreter (sys.argv[1:] = args) with os.environ updated by `env` (a
    value of None removes that variable); stdout and stderr captured as text."""
    child_env = dict(os.environ)
    for k, v in (env or {}).items():
        if v is None:
            child_env.pop(k, None)
        else:
            child_env[k] = v
    return subprocess.run(
        [sys.executable, "-c", code, *args],
        env=child_env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
