"""`hybrid-moe demo`, the README's first command, on a reduced size: it runs and reports."""

from __future__ import annotations

import pytest

from hybrid_moe.cli import main


def test_demo_runs_and_reports_every_policy(capsys):
    assert main(["demo", "--layers", "1", "--tokens", "2", "--warmup", "1", "--threads", "2"]) == 0
    out = capsys.readouterr().out
    assert "1 of 48 layers" in out
    for policy in ("cpu", "static", "lru", "lru-fetch", "value"):
        assert f"│ {policy} " in out
    assert "tokens/s" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (["demo", "--budget", "150%"], "--budget must be in"),
        (["demo", "--budget", "lots"], "--budget must be a share"),
        (["demo", "--tokens", "-1"], "--tokens must be >= 0"),
    ],
)
def test_demo_bad_arguments(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err
