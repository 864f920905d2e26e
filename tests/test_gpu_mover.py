"""Mover protocol: residency flips only after the copy, referenced slots are never overwritten,
stale and overflowing prefetches are dropped; and a random-plan stress test with concurrent
fetches and evictions, every output checked against a float32 reference.
HM_GPU_STRESS_PLANS sets the stress size (default 300 here; 10000 on the GPU machine run)."""

from __future__ import annotations

import os
import random
import time

import torch

from hybrid_moe import gpu


def _small(fmt="bf16", hidden=256, inter=128, n_exp=16, n_slots=6, **kw):
    gen = torch.Generator().manual_seed(7)
    g = torch.randn(n_exp, inter, hidden, generator=gen) / hidden**0.5
    u = torch.randn(n_exp, inter, hidden, generator=gen) / hidden**0.5
    d = torch.randn(n_exp, hidden, inter, generator=gen) / inter**0.5
    packed = gpu.pack_experts(g, u, d, fmt)
    store = gpu.PinnedExpertStore.from_tensors(packed, fmt, hidden, inter)
    slab = gpu.DeviceSlab(fmt, hidden, inter, n_slots=n_slots)
    return packed, store, slab, gpu.Mover(store, slab, **kw)


def test_referenced_slot_is_not_overwritten_until_release(cuda_device):
    _, store, slab, mv = _small()
    mv.request_fetch(3, 0)
    mv.wait_idle()
    assert mv.poll_completions() == [(3, 0, "ready", 0)]
    assert mv.acquire(1, [0], [3])
    assert not mv.acquire(2, [0], [4])  # slot 0 does not hold expert 4
    mv.request_fetch(5, 0)
    assert mv.resident_expert(0) == -1  # no new plan may name it ...
    assert not mv.acquire(3, [0], [3])
    time.sleep(0.05)
    assert torch.equal(slab.read_slot(0), store.expert_bytes(3))  # ... but its bytes stay
    assert not mv.idle()
    mv.release(1)
    mv.wait_idle()
    assert mv.resident_expert(0) == 5
    assert torch.equal(slab.read_slot(0), store.expert_bytes(5))
    assert mv.stats()["waits_for_release"] == 1
    import pytest

    with pytest.raises(ValueError, match="not acquired"):
        mv.release(1)
    with pytest.raises(ValueError, match="expert must be in"):
        mv.request_fetch(16, 0)


def test_stale_and_overflowing_prefetches_are_dropped(cuda_device):
    _, _, _, mv = _small(max_pending_prefetch=2)
    mv.request_fetch(1, 1)
    mv.wait_idle()
    mv.poll_completions()
    mv.set_generation(5)
    mv.request_fetch(2, 1, prefetch=True, generation=4)  # stale: dropped, slot 1 keeps expert 1
    mv.wait_idle()
    assert mv.poll_completions() == [(2, 1, "dropped", 4)]
    assert mv.resident_expert(1) == 1
    assert mv.acquire(9, [1, 2], [1, -1]) is False
    mv.request_fetch(4, 2)
    mv.wait_idle()
    mv.poll_completions()
    assert mv.acquire(10, [1, 2], [1, 4])  # hold both slots so prefetches must wait
    for e, s in ((6, 1), (7, 2), (8, 1)):  # (8, 1) supersedes (6, 1)
        mv.request_fetch(e, s, prefetch=True, generation=5)
    mv.request_fetch(9, 3, prefetch=True, generation=5)  # 3 pending > 2: oldest (7, 2) dropped
    comps = mv.poll_completions()
    assert (6, 1, "dropped", 5) in comps and (7, 2, "dropped", 5) in comps
    mv.release(10)
    mv.wait_idle()
    assert mv.residency()[1:4] == [8, 4, 9]


def test_stress_random_plans_with_concurrent_fetches(cuda_device):
    n_plans = int(os.environ.get("HM_GPU_STRESS_PLANS", "300"))
    fmt = os.environ.get("HM_GPU_STRESS_FORMAT", "bf16")
    hidden, inter, n_exp, n_slots = 512, 256, 24, 8
    packed, _, slab, mv = _small(fmt, hidden, inter, n_exp, n_slots)
    rng = random.Random(1234)
    dev = cuda_device
    f32 = [
        tuple(t.to(dev) for t in gpu.unpack_expert(packed[e], fmt, hidden, inter))
        for e in range(n_exp)
    ]
    pool = torch.randn(16, hidden, device=dev).bfloat16()  # token vectors
    # reference output of every (expert, pool vector): [n_exp, 16, hidden] fp32
    xf = pool.float()
    pre = torch.stack([(torch.nn.functional.silu(xf @ g.T) * (xf @ u.T)) @ d.T for g, u, d in f32])
    for s in range(n_slots):
        mv.request_fetch(s, s)
    mv.wait_idle()
    outstanding = []  # (plan_id, event, out, ref)
    checked = 0
    worst = 0.0
    for pid in range(n_plans):
        # concurrent evictions / fetches, demand and (sometimes stale) prefetch
        for _ in range(rng.randint(0, 2)):
            mv.request_fetch(
                rng.randrange(n_exp),
                rng.randrange(n_slots),
                prefetch=rng.random() < 0.5,
                generation=pid - rng.randint(0, 1),
            )
        mv.set_generation(pid)
        res = mv.residency()
        ready = [s for s in range(n_slots) if res[s] >= 0]
        if ready:
            n_tok = rng.randint(1, 3)
            tokens, slots, experts, weights = [], [], [], []
            for t in range(n_tok):
                for s in rng.sample(ready, min(len(ready), rng.randint(1, 4))):
                    tokens.append(t)
                    slots.append(s)
                    experts.append(res[s])
                    weights.append(rng.uniform(0.1, 1.0))
            if mv.acquire(pid, slots, experts):
                vec = [rng.randrange(16) for _ in range(n_tok)]
                x = pool[vec]
                out = gpu.run_decode(slab, x, tokens, slots, weights)
                ev = torch.cuda.Event()
                ev.record()
                ref = torch.zeros(n_tok, hidden, device=dev)
                for t, e, w in zip(tokens, experts, weights, strict=True):
                    ref[t] += w * pre[e, vec[t]]
                outstanding.append((pid, ev, out, ref))
        while len(outstanding) > 6 or (outstanding and pid == n_plans - 1):
            p, ev, out, ref = outstanding.pop(0)
            ev.synchronize()
            err = ((out - ref).norm() / ref.norm()).item()
            worst = max(worst, err)
            assert err < 3e-3, f"plan {p}: rel err {err:.2e} (slot overwritten under a plan?)"
            mv.release(p)
            checked += 1
    mv.wait_idle()
    st = mv.stats()
    print(f"stress: {checked} plans checked of {n_plans}, worst rel err {worst:.2e}, stats {st}")
    assert checked >= n_plans // 2
    assert st["copies_done"] > n_plans // 4 and st["waits_for_release"] > 0
