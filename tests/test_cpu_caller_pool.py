"""Blocking CPU calls compute on the caller's thread too (cpu/thread_pool.h caller_pool): a call on
`threads` threads uses threads - 1 pool workers plus the caller, so it never runs more threads
than asked (a waiting caller beside a full pool time-sliced a core on the lent Xeon)."""

from __future__ import annotations

import torch

from child_python import run_python
from hybrid_moe._native import native
from hybrid_moe.cpu_experts import CpuExpertStore, reference_layer, run_layer


def test_threads_count_the_caller():
    four = dict(native.cpu_pool_info(4))
    assert four["threads"] == 4 and four["workers"] == 3 and four["caller_helps"]
    one = dict(native.cpu_pool_info(1))  # one thread: one worker, the caller waits
    assert one["threads"] == 1 and one["workers"] == 1 and not one["caller_helps"]


def test_the_caller_computes_items_and_results_stay_right():
    # Items long enough (generic code, 1024 x 384) that one pool worker cannot take them all
    # before the caller's thread joins; a few calls in case the worker was faster once.
    H, I, E = 1024, 384, 4
    g = torch.Generator().manual_seed(2)
    mk = lambda *s: torch.randn(*s, generator=g) * 0.05  # noqa: E731
    store = CpuExpertStore.from_tensors(mk(E, I, H), mk(E, I, H), mk(E, H, I), fmt="bf16")
    x, ids = torch.randn(3, H, generator=g), torch.tensor([[0, 1], [2, 3], [1, 2]])
    w = torch.rand(3, 2, generator=g) + 0.1
    ref = reference_layer(*store.dequantized(), x, ids, w)
    by_caller = []
    for _ in range(5):
        native.cpu_pool_tracing(True)
        try:
            out = run_layer(store, x, ids, w, threads=2, isa="generic")
        finally:
            native.cpu_pool_tracing(False)
        assert (out - ref).abs().max() <= 1e-4 * ref.abs().max()
        by_caller.append(int((native.cpu_last_pool_trace()["items"][:, 0] == -1).sum()))
        if by_caller[-1]:
            break
    assert max(by_caller) > 0, by_caller  # 1 worker + the caller's thread


def test_caller_helps_off_gives_a_full_pool_and_a_waiting_caller():
    code = "from hybrid_moe._native import native\nprint(dict(native.cpu_pool_info(4)))\n"
    r = run_python(code, env={"HYBRID_MOE_CALLER_HELPS": "0"})
    assert "'workers': 4" in r.stdout and "'caller_helps': False" in r.stdout, r.stderr
