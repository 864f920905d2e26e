"""Safetensors and state-dict expert loaders: per-expert HF names (gate_proj/up_proj/down_proj and
Mixtral's w1/w3/w2), transformers' fused gate_up_proj/down_proj, sharded directories, dtype rules,
and the errors (missing tensor, unsupported dtype, corrupt file, no experts). Also checks that the
weights a loader reads equal the ones the model adapters take from a live HF model."""

from __future__ import annotations

import json

import pytest
import torch

safetensors_torch = pytest.importorskip("safetensors.torch")

from hybrid_moe.loaders import (  # noqa: E402
    ExpertWeights,
    SafetensorsExperts,
    load_safetensors_experts,
    load_state_dict_experts,
)

E, H, I = 4, 48, 24


def _experts(seed: int, dtype=torch.bfloat16):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(E, I, H, generator=g).to(dtype),
        torch.randn(E, I, H, generator=g).to(dtype),
        torch.randn(E, H, I, generator=g).to(dtype),
    )


def _per_expert_sd(layers: dict[int, tuple], mixtral=False) -> dict[str, torch.Tensor]:
    names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    block = "block_sparse_moe" if mixtral else "mlp"
    sd = {}
    for n, (gate, up, down) in layers.items():
        sd[f"model.layers.{n}.self_attn.q_proj.weight"] = torch.randn(H, H)
        sd[f"model.layers.{n}.{block}.gate.weight"] = torch.randn(E, H)
        # Shared experts must not be taken for routed ones.
        sd[f"model.layers.{n}.mlp.shared_experts.gate_proj.weight"] = torch.randn(I, H)
        sd[f"model.layers.{n}.mlp.shared_experts.down_proj.weight"] = torch.randn(H, I)
        for e in range(E):
            for name, t in zip(names, (gate[e], up[e], down[e]), strict=True):
                sd[f"model.layers.{n}.{block}.experts.{e}.{name}.weight"] = t.clone()
    return sd


def _check(w: ExpertWeights, src, fmt="bf16"):
    assert isinstance(w, ExpertWeights) and w.format == fmt
    assert (w.n_expert, w.hidden, w.intermediate) == (
        src[0].shape[0],
        src[2].shape[1],
        src[0].shape[1],
    )
    for got, want in zip((w.gate, w.up, w.down), src, strict=True):
        assert torch.equal(got, want.to(got.dtype))


@pytest.mark.parametrize("mixtral", [False, True], ids=["hf-names", "mixtral-names"])
def test_per_expert_file_round_trip(tmp_path, mixtral):
    layers = {0: _experts(1), 2: _experts(2)}
    path = tmp_path / "model.safetensors"
    safetensors_torch.save_file(_per_expert_sd(layers, mixtral), str(path))
    ckpt = SafetensorsExperts(path)
    assert ckpt.moe_layers == [0, 2] and ckpt.layout(0) == "per-expert"
    got = load_safetensors_experts(path)
    for n, src in layers.items():
        _check(got[n], src)
    # dtype conversion on request
    w32 = ckpt.layer(2, dtype=torch.float32)
    assert w32.format == "f32" and torch.equal(w32.down, layers[2][2].float())


def test_sharded_directory_and_fused_layout(tmp_path):
    src0, src1 = _experts(3, torch.float32), _experts(4, torch.float16)
    fused = {
        "model.layers.0.mlp.experts.gate_up_proj": torch.cat([src0[0], src0[1]], dim=1),
        "model.layers.0.mlp.experts.down_proj": src0[2],
    }
    other = {
        "model.layers.1.mlp.experts.gate_up_proj": torch.cat([src1[0], src1[1]], dim=1),
        "model.layers.1.mlp.experts.down_proj": src1[2],
        "lm_head.weight": torch.randn(8, H),
    }
    safetensors_torch.save_file(fused, str(tmp_path / "model-00001-of-00002.safetensors"))
    safetensors_torch.save_file(other, str(tmp_path / "model-00002-of-00002.safetensors"))
    ckpt = SafetensorsExperts(tmp_path)
    assert ckpt.moe_layers == [0, 1] and ckpt.layout(1) == "fused"
    _check(ckpt.layer(0), src0, "f32")
    _check(ckpt.layer(1), src1, "f32")  # float16 -> float32, lossless
    assert ckpt.layer(1, dtype=torch.bfloat16).format == "bf16"


def test_missing_tensor_is_named(tmp_path):
    sd = _per_expert_sd({5: _experts(5)})
    del sd["model.layers.5.mlp.experts.1.up_proj.weight"]
    safetensors_torch.save_file(sd, str(tmp_path / "m.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"model\.layers\.5\.mlp\.experts\.1\.up_proj\.weight is "
        r"missing",
    ):
        load_safetensors_experts(tmp_path / "m.safetensors")
    # The last expert's absence is seen through config.json's expert count.
    sd = _per_expert_sd({0: _experts(6)})
    for p in ("gate_proj", "up_proj", "down_proj"):
        del sd[f"model.layers.0.mlp.experts.{E - 1}.{p}.weight"]
    d = tmp_path / "ckpt"
    d.mkdir()
    safetensors_torch.save_file(sd, str(d / "model.safetensors"))
    (d / "config.json").write_text(json.dumps({"model_type": "qwen3_moe", "num_experts": E}))
    with pytest.raises(ValueError, match=rf"experts\.{E - 1}\.gate_proj\.weight is missing"):
        load_safetensors_experts(d)
    fused = {"model.layers.0.mlp.experts.gate_up_proj": torch.randn(E, 2 * I, H)}
    safetensors_torch.save_file(fused, str(tmp_path / "f.safetensors"))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.experts\.down_proj is missing"):
        load_safetensors_experts(tmp_path / "f.safetensors")


def test_bad_dtype_shape_and_corrupt_file(tmp_path):
    sd = _per_expert_sd({0: _experts(7)})
    sd["model.layers.0.mlp.experts.2.down_proj.weight"] = torch.zeros(H, I, dtype=torch.int8)
    safetensors_torch.save_file(sd, str(tmp_path / "q.safetensors"))
    with pytest.raises(
        ValueError,
        match=r"experts\.2\.down_proj\.weight has dtype torch.int8.*"
        r"supported: bfloat16, float16, float32",
    ):
        load_safetensors_experts(tmp_path / "q.safetensors")
    bad = {
        "model.layers.0.mlp.experts.gate_up_proj": torch.randn(E, 2 * I, H - 8),
        "model.layers.0.mlp.experts.down_proj": torch.randn(E, H, I),
    }
    safetensors_torch.save_file(bad, str(tmp_path / "t.safetensors"))
    with pytest.raises(ValueError, match=r"gate_up_proj must be \[E, 2I, H\] = \[4, 48, 48\]"):
        load_safetensors_experts(tmp_path / "t.safetensors")
    good = tmp_path / "g.safetensors"
    safetensors_torch.save_file(_per_expert_sd({0: _experts(8)}), str(good))
    data = good.read_bytes()
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="corrupt or truncated"):
        load_safetensors_experts(cut)
    (tmp_path / "none.safetensors").unlink(missing_ok=True)
    safetensors_torch.save_file(
        {"lm_head.weight": torch.randn(2, 2)}, str(tmp_path / "none.safetensors")
    )
    with pytest.raises(ValueError, match="no routed expert tensors"):
        SafetensorsExperts(tmp_path / "none.safetensors")
    with pytest.raises(FileNotFoundError):
        SafetensorsExperts(tmp_path / "absent")


def test_state_dict_loader_and_views():
    src = _experts(9)
    sd = _per_expert_sd({3: src})
    got = load_state_dict_experts(sd)
    assert list(got) == [3]
    _check(got[3], src)
    gate_up = torch.cat([src[0], src[1]], dim=1)
    fused = load_state_dict_experts(
        {
            "model.layers.1.mlp.experts.gate_up_proj": gate_up,
            "model.layers.1.mlp.experts.down_proj": src[2],
        }
    )[1]
    _check(fused, src)
    assert fused.gate.data_ptr() == gate_up.data_ptr()  # fused layout: views, no copy
    with pytest.raises(ValueError, match="layer 7 has no routed experts"):
        load_state_dict_experts(sd, layers=[7])


def test_expert_weights_validation():
    g, u, d = _experts(10)
    with pytest.raises(ValueError, match="format must be one of"):
        ExpertWeights("q4_k", g, u, d)
    with pytest.raises(ValueError, match=r"ExpertWeights.down must be \[4, 48, 24\]"):
        ExpertWeights("bf16", g, u, d[:, :, :-1])
    with pytest.raises(ValueError, match=r"must be torch\.bfloat16"):
        ExpertWeights("bf16", g.float(), u, d)
    w = ExpertWeights("bf16", g, u, d)
    assert w.expert_bytes() == 3 * I * H * 2
    c = w.clone()
    assert c.gate.data_ptr() != g.data_ptr() and torch.equal(c.gate, g)
    assert ExpertWeights.dense(g.float(), u.float(), d.float()).to_bf16().format == "bf16"


def test_loader_agrees_with_adapter_on_a_saved_hf_model(tmp_path):
    """save_pretrained of a tiny HF model, read back with the safetensors loader: the same
    ExpertWeights as the adapter takes from the live model (whatever names transformers saved)."""
    transformers = pytest.importorskip("transformers")
    from hybrid_moe.models import moe_block_specs

    cfg = transformers.Qwen3MoeConfig(
        hidden_size=32,
        intermediate_size=64,
        moe_intermediate_size=16,
        num_experts=4,
        num_experts_per_tok=2,
        num_hidden_layers=2,
        vocab_size=64,
        num_attention_heads=2,
        num_key_value_heads=1,
        head_dim=16,
    )
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(cfg).to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_()
    model.save_pretrained(tmp_path)
    ckpt = SafetensorsExperts(tmp_path)
    specs = moe_block_specs(model)
    assert ckpt.moe_layers == [s.layer_idx for _, s in specs]
    for _, spec in specs:
        w = ckpt.layer(spec.layer_idx)
        _check(w, (spec.experts.gate, spec.experts.up, spec.experts.down), "bf16")
