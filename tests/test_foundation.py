"""The package imports, reports the machine, and turns C++ errors into Python exceptions."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest

import hybrid_moe
from hybrid_moe import native


def test_version_matches_metadata():
    from importlib.metadata import version

    assert hybrid_moe.__version__ == version("hybrid_moe")
    assert re.fullmatch(r"\d+\.\d+\.\d+.*", hybrid_moe.__version__)


def test_info_reports_build_and_machine():
    data = hybrid_moe.info()
    for key in (
        "version",
        "cuda_built",
        "cuda_available",
        "gpus",
        "cpu_isa",
        "cpu_isa_reason",
        "threads",
    ):
        assert key in data
    assert data["cpu_isa"] in ("generic", "avx2", "avx512", "amx")
    assert data["cpu_isa_reason"]
    assert data["threads"] >= 1
    assert data["cpu_isa"] in data["cpu_variants_built"]
    # the runtime's Q8_0 host rows follow the variant (HYBRID_MOE_Q8_ROWS16=auto, unset in tests)
    if "HYBRID_MOE_Q8_ROWS16" not in os.environ:
        want = "gguf" if data["cpu_isa"] == "generic" else "q8_rows16"
        assert data["q8_0_host_packing"] == want
    if data["cuda_available"]:
        assert data["gpus"] and data["gpus"][0]["total_memory"] > 0
    else:
        assert data["gpus"] == []
        assert data["cuda_unavailable_reason"]


def test_cuda_available_agrees_with_torch():
    torch = pytest.importorskip("torch")
    if native.cuda_built:
        assert hybrid_moe.cuda_available() == torch.cuda.is_available()
    else:
        assert hybrid_moe.cuda_available() is False


def test_unknown_isa_raises_value_error_with_location():
    with pytest.raises(ValueError, match=r"unknown CPU ISA 'sse9'.*isa\.cpp:\d+"):
        hybrid_moe.set_cpu_isa("sse9")


def test_set_isa_generic_then_auto():
    assert hybrid_moe.set_cpu_isa("generic")["isa"] == "generic"
    best = hybrid_moe.set_cpu_isa("auto")
    assert best["isa"] in hybrid_moe.info()["cpu_variants_built"]


def test_set_isa_beyond_machine_is_rejected():
    feats = native.cpu_features()
    if native.amx_built and feats["amx_tile"] and feats["os_amx"]:
        pytest.skip("this machine runs AMX: nothing beyond it to reject")
    with pytest.raises(ValueError, match="cannot run on this machine"):
        hybrid_moe.set_cpu_isa("amx")
    hybrid_moe.set_cpu_isa("auto")


def test_set_isa_wrong_type_is_type_error():
    with pytest.raises(TypeError, match="must be a str"):
        hybrid_moe.set_cpu_isa(3)


def test_env_override_caps_isa():
    code = "import hybrid_moe, json; print(json.dumps(hybrid_moe.native.cpu_isa()))"
    env_out = subprocess.run(
        [sys.executable, "-c", code],
        env={"HYBRID_MOE_CPU_ISA": "generic", "PATH": ""},
        capture_output=True,
        text=True,
        check=True,
    )
    choice = json.loads(env_out.stdout)
    assert choice["isa"] == "generic"
    assert "HYBRID_MOE_CPU_ISA=generic" in choice["reason"]


def test_bad_env_isa_is_a_clear_error():
    code = "import hybrid_moe; hybrid_moe.native.cpu_isa()"
    r = subprocess.run(
        [sys.executable, "-c", code],
        env={"HYBRID_MOE_CPU_ISA": "quantum", "PATH": ""},
        capture_output=True,
        text=True,
    )
    assert r.returncode != 0
    assert "ValueError" in r.stderr and "HYBRID_MOE_CPU_ISA='quantum'" in r.stderr


def test_bad_thread_env(monkeypatch):
    from hybrid_moe.system import default_threads

    monkeypatch.setenv("HYBRID_MOE_THREADS", "zero")
    with pytest.raises(ValueError, match="HYBRID_MOE_THREADS"):
        default_threads()
    monkeypatch.setenv("HYBRID_MOE_THREADS", "3")
    assert default_threads() == 3


def test_cli_info_json():
    r = subprocess.run(
        [sys.executable, "-m", "hybrid_moe.cli", "info", "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    data = json.loads(r.stdout)
    assert data["version"] == hybrid_moe.__version__


def test_cli_info_table():
    from hybrid_moe.cli import main

    assert main(["info"]) == 0


def test_ci_runs_the_readme_test_command():
    from conftest import REPO_ROOT

    readme = (REPO_ROOT / "README.md").read_text()
    ci = (REPO_ROOT / ".ci" / "run").read_text()
    blocks = re.findall(r"```(?:bash|sh)\n(.*?)```", readme, flags=re.S)
    assert len(blocks) >= 2, "README must open with two command blocks"
    test_cmd = blocks[1].strip().splitlines()[-1].strip()
    assert test_cmd in ci, f"README's test command {test_cmd!r} not run by .ci/run"


def test_cpp_errors_and_streams_work_with_torch_loaded_first():
    # Regression: with torch imported first, a toolchain that links libstdc++ statically made the
    # first C++ `stream << int` in the module crash (GPU machine, 2026-11-28). Run in a fresh
    # process so the import order is torch, then hybrid_moe.
    code = (
        "import torch, hybrid_moe\n"
        "try:\n"
        "    hybrid_moe.set_cpu_isa('sse9')\n"
        "except ValueError as e:\n"
        "    assert 'sse9' in str(e)\n"
        "    print('ok')\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == "ok"
