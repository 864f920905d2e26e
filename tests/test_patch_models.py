"""patch() on tiny random Hugging Face models of every supported family: the patched model (router
and shared experts in torch, routed experts in ReferenceExperts) must give the original logits;
the adapters' routing must equal the HF router's; the original expert parameters must be freed.
Runs with whichever transformers is installed (5.x: fused experts; 4.x: ModuleList experts)."""

from __future__ import annotations

import gc
import weakref

import pytest
import torch
import torch.nn.functional as F
from torch import nn

transformers = pytest.importorskip("transformers")

from hybrid_moe.models import SUPPORTED_MODEL_TYPES, moe_block_specs  # noqa: E402
from hybrid_moe.patch import PatchedMoEBlock, patch, patched_blocks  # noqa: E402
from hybrid_moe.reference import ReferenceExperts  # noqa: E402

COMMON = dict(
    hidden_size=64,
    intermediate_size=96,
    num_hidden_layers=2,
    vocab_size=128,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=64,
)
DEEPSEEK_MLA = dict(
    kv_lora_rank=16,
    q_lora_rank=None,
    qk_rope_head_dim=8,
    qk_nope_head_dim=8,
    v_head_dim=16,
    moe_intermediate_size=32,
    n_shared_experts=1,
    n_routed_experts=8,
    num_experts_per_tok=2,
)


def _config(family: str):
    t = transformers
    if family == "qwen3_moe":
        return t.Qwen3MoeConfig(
            **COMMON,
            moe_intermediate_size=32,
            num_experts=8,
            num_experts_per_tok=2,
            head_dim=16,
            norm_topk_prob=True,
        )
    if family == "qwen2_moe":
        return t.Qwen2MoeConfig(
            **COMMON,
            moe_intermediate_size=32,
            num_experts=8,
            num_experts_per_tok=2,
            shared_expert_intermediate_size=48,
            norm_topk_prob=False,
        )
    if family == "mixtral":
        return t.MixtralConfig(**COMMON, num_local_experts=8, num_experts_per_tok=2)
    if family == "olmoe":
        return t.OlmoeConfig(**COMMON, num_experts=8, num_experts_per_tok=2)
    if family == "deepseek_v2":
        return t.DeepseekV2Config(
            **COMMON,
            **DEEPSEEK_MLA,
            first_k_dense_replace=1,
            topk_method="group_limited_greedy",
            n_group=4,
            topk_group=2,
            routed_scaling_factor=1.5,
        )
    if family == "deepseek_v3":
        return t.DeepseekV3Config(
            **COMMON,
            **DEEPSEEK_MLA,
            first_k_dense_replace=1,
            n_group=4,
            topk_group=2,
            routed_scaling_factor=2.5,
            norm_topk_prob=True,
        )
    raise AssertionError(family)


def _model(family: str, dtype: torch.dtype, seed: int = 0) -> nn.Module:
    """A tiny model with every weight random (HF zero-inits routers and biases)."""
    torch.manual_seed(seed)
    cfg = _config(family)
    model = transformers.AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.uniform_(0.8, 1.2)
            else:
                p.normal_(0, 0.15)
        for name, b in model.named_buffers():
            if "e_score_correction_bias" in name:
                b.normal_(0, 0.1)
    return model.to(dtype)


FAMILIES = ["qwen3_moe", "qwen2_moe", "mixtral", "olmoe", "deepseek_v2", "deepseek_v3"]


def _first(out):
    return out[0] if isinstance(out, tuple) else out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
@pytest.mark.parametrize("family", FAMILIES)
def test_patched_logits_equal_original(family, dtype):
    """float32: patched logits equal the original's to 2e-5 (only summation order differs).
    bfloat16: HF rounds every intermediate (gate/up/act/down outputs, the per-expert sum) to bf16
    while the reference keeps float32 to the end, so
      - each patched block, fed the original block's exact input, must match its output within
        2% of the output's max (measured <= 1%: a few bf16 ulps);
      - end to end, a token whose top-k is a near tie may pick another expert in the next layer
        (the inputs differ by bf16 ulps), so the logits are compared by relative norm < 6e-2
        (measured 0.3-0.8% without such a flip, <= 4% with one)."""
    model = _model(family, dtype)
    ids = torch.randint(0, 128, (2, 9), generator=torch.Generator().manual_seed(1))
    specs = moe_block_specs(model)
    assert len(specs) == (1 if family.startswith("deepseek") else 2)  # DeepSeek layer 0: dense
    block_io: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [
        b.register_forward_hook(
            lambda mod, args, out: block_io.append((args[0].clone(), _first(out).clone()))
        )
        for b, _ in specs
    ]
    with torch.no_grad():
        want = model(ids).logits
    for h in hooks:
        h.remove()
    patch(model, make_layer=lambda spec: ReferenceExperts(spec.experts))
    blocks = patched_blocks(model)
    assert len(blocks) == len(specs)
    assert all(isinstance(b.experts, ReferenceExperts) for b in blocks)
    with torch.no_grad():
        got = model(ids).logits
        block_out = [_first(b(x)) for b, (x, _) in zip(blocks, block_io, strict=True)]
    assert got.dtype == want.dtype and got.shape == want.shape
    for out, (_, ref) in zip(block_out, block_io, strict=True):
        assert out.dtype == ref.dtype and out.shape == ref.shape
        err = (out.float() - ref.float()).abs().max() / ref.float().abs().max()
        assert err <= (2e-6 if dtype == torch.float32 else 2e-2), float(err)
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
        tol = 2e-5
    else:
        rel = (got.float() - want.float()).norm() / want.float().norm()
        assert rel < 6e-2, float(rel)
        tol = 6e-2
    # The comparison can fail: zeroing one executor's weights changes the logits.
    blocks[-1].experts.down.zero_()
    with torch.no_grad():
        broken = model(ids).logits.float()
    assert (broken - want.float()).norm() / want.float().norm() > 2 * tol


@pytest.mark.parametrize("family", FAMILIES)
def test_route_matches_hf_router(family):
    """spec.route reproduces the block's own routing: same expert ids (as sets, DeepSeek uses
    unsorted top-k) and the same weights."""
    model = _model(family, torch.float32, seed=3)
    x = torch.randn(33, 64, generator=torch.Generator().manual_seed(4))
    for block, spec in moe_block_specs(model):
        ids, w = spec.route(x)
        assert ids.dtype == torch.int64 and w.dtype == torch.float32
        assert ids.shape == (33, spec.top_k) == w.shape
        gate_out = block.gate(x[None])  # [1, T, H]: some 4.x gates unpack (B, S, H)
        if isinstance(gate_out, tuple) and len(gate_out) == 3:  # transformers 5 TopKRouter
            _, ref_w, ref_ids = gate_out
        elif isinstance(gate_out, tuple):  # transformers 4 DeepSeek gate: (ids, weights)
            ref_ids, ref_w = gate_out
        else:  # transformers 4 nn.Linear router: recompute as the 4.x block does
            pytest.skip("4.x router is an nn.Linear; covered by the logits test")
        order, ref_order = ids.argsort(-1), ref_ids.argsort(-1)
        assert torch.equal(ids.gather(1, order), ref_ids.gather(1, ref_order))
        torch.testing.assert_close(
            w.gather(1, order), ref_w.float().gather(1, ref_order), atol=1e-6, rtol=1e-6
        )


def test_original_expert_params_are_released():
    model = _model("qwen2_moe", torch.float32)
    blocks = [b for b, _ in moe_block_specs(model)]
    watched = [weakref.ref(p) for b in blocks for p in b.experts.parameters()]
    kept = [weakref.ref(p) for b in blocks for p in b.gate.parameters()]
    assert watched
    patch(model, make_layer=lambda spec: ReferenceExperts(spec.experts))
    gc.collect()
    assert all(r() is None for r in watched), "original expert tensors still alive"
    assert all(r() is not None for r in kept), "router must stay in torch"
    names = [n for n, _ in model.named_parameters()]
    assert not any(".experts." in n for n in names), names
    assert any(n.endswith("mlp.gate.weight") for n in names)  # state-dict names unchanged
    assert any("mlp.shared_expert_gate.weight" in n for n in names)
    assert all(not hasattr(b, "experts") for b in blocks)  # deleted from the old block too


def test_unsupported_model_and_bad_arguments():
    class Cfg:
        model_type = "llama"

    plain = nn.Linear(4, 4)
    plain.config = Cfg()
    with pytest.raises(
        ValueError,
        match=r"'llama' is not supported; supported model types: "
        + ", ".join(SUPPORTED_MODEL_TYPES),
    ):
        patch(plain, make_layer=lambda s: nn.Identity())
    with pytest.raises(ValueError, match=r"has no \.config"):
        patch(nn.Linear(4, 4), make_layer=lambda s: nn.Identity())
    model = _model("olmoe", torch.float32)
    with pytest.raises(TypeError, match="needs make_layer"):
        patch(model)
    with pytest.raises(TypeError, match="runtime must be callable as make_layer"):
        patch(model, runtime=object())
    with pytest.raises(TypeError, match=r"expected an nn\.Module"):
        patch(model, make_layer=lambda s: "not a module")


def test_runtime_callable_is_used_as_make_layer_and_shapes_are_checked():
    model = _model("qwen3_moe", torch.float32)
    seen = []

    def runtime(spec):
        seen.append((spec.layer_idx, spec.experts.n_expert, spec.experts.format))
        return ReferenceExperts(spec.experts)

    patch(model, runtime)
    assert seen == [(0, 8, "f32"), (1, 8, "f32")]
    block = patched_blocks(model)[0]
    with pytest.raises(ValueError, match="hidden size 64"):
        block(torch.randn(3, 65))
    out = _first(block(torch.randn(2, 5, 64)))  # [B, S, H] in, same shape out
    assert out.shape == (2, 5, 64)


class _LegacyQwen3Block(nn.Module):
    """transformers 4.5x Qwen3MoeSparseMoeBlock, written out: nn.Linear router, ModuleList of
    expert MLPs, forward returns (hidden, router_logits)."""

    def __init__(self, cfg):
        super().__init__()
        self.top_k, self.norm_topk_prob = cfg.num_experts_per_tok, cfg.norm_topk_prob
        self.gate = nn.Linear(cfg.hidden_size, cfg.num_experts, bias=False)
        self.experts = nn.ModuleList(
            nn.ModuleDict(
                dict(
                    gate_proj=nn.Linear(64, 32, bias=False),
                    up_proj=nn.Linear(64, 32, bias=False),
                    down_proj=nn.Linear(32, 64, bias=False),
                )
            )
            for _ in range(cfg.num_experts)
        )
        for e in self.experts:  # ModuleDict has no attribute access by name; alias them
            for k in ("gate_proj", "up_proj", "down_proj"):
                object.__setattr__(e, k, e[k])

    def forward(self, h):
        b, s, d = h.shape
        x = h.view(-1, d)
        logits = self.gate(x)
        w = torch.softmax(logits, dim=1, dtype=torch.float)
        w, sel = torch.topk(w, self.top_k, dim=-1)
        if self.norm_topk_prob:
            w /= w.sum(dim=-1, keepdim=True)
        w = w.to(x.dtype)
        out = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for j in range(self.top_k):
                e = self.experts[int(sel[t, j])]
                xt = x[t]
                y = e["down_proj"](F.silu(e["gate_proj"](xt)) * e["up_proj"](xt))
                out[t] += w[t, j] * y
        return out.view(b, s, d), logits


def test_modulelist_layout_and_router_logits_tuple():
    cfg = _config("qwen3_moe")
    torch.manual_seed(5)

    class Holder(nn.Module):
        def __init__(self):
            super().__init__()
            self.config = cfg
            self.layers = nn.ModuleList([nn.Module()])
            self.layers[0].mlp = _LegacyQwen3Block(cfg)

    m = Holder()
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.2)
    h = torch.randn(2, 4, 64)
    with torch.no_grad():
        want, want_logits = m.layers[0].mlp(h)
    ((_, spec),) = moe_block_specs(m)
    assert spec.layout == "modulelist" and spec.returns_router_logits and spec.layer_idx == 0
    patch(m, make_layer=lambda s: ReferenceExperts(s.experts))
    assert isinstance(m.layers[0].mlp, PatchedMoEBlock)
    with torch.no_grad():
        got, logits = m.layers[0].mlp(h)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(logits, want_logits)
