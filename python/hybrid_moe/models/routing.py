"""Router math of each family, reproduced from transformers' modeling code (4.5x ModuleList and
5.x fused versions compute the same math; where they round differently it is noted).

Every function takes router logits [T, E] as the block computes them and returns
(topk_ids int64 [T, k], topk_weights float32 [T, k]). Weights are rounded exactly as the original
block rounds them before multiplying the expert outputs (e.g. to bf16 for Qwen3 in a bf16 model),
then widened to float32, so an executor that multiplies in float32 applies the same weights.
"""

from __future__ import annotations

import torch


def softmax_topk(
    logits: torch.Tensor, top_k: int, normalize: bool, round_to: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen3-MoE, Qwen2-MoE, OLMoE (norm_topk_prob from the config), Mixtral (always normalized):
    softmax in float32 over all experts, top-k, optional renormalisation over the k, then the
    block's cast (`round_to`: Qwen/OLMoE cast to the logits' dtype; Mixtral in transformers 5
    keeps float32, in 4.x casts to the hidden dtype)."""
    probs = torch.softmax(logits, dim=-1, dtype=torch.float32)
    w, ids = torch.topk(probs, top_k, dim=-1)
    if normalize:
        w = w / w.sum(dim=-1, keepdim=True)
    if round_to is not None:
        w = w.to(round_to)
    return ids.to(torch.int64), w.to(torch.float32)


def _group_mask(group_scores: torch.Tensor, topk_group: int, n_expert: int) -> torch.Tensor:
    """[T, n_group] scores -> bool [T, E], True for experts of the topk_group best groups."""
    n_group = group_scores.shape[-1]
    group_idx = torch.topk(group_scores, k=topk_group, dim=-1, sorted=False)[1]
    group_mask = torch.zeros_like(group_scores)
    group_mask.scatter_(1, group_idx, 1)
    return (
        group_mask.unsqueeze(-1)
        .expand(-1, n_group, n_expert // n_group)
        .reshape(-1, n_expert)
        .bool()
    )


def deepseek_v3_topk(
    logits: torch.Tensor,
    bias: torch.Tensor,
    top_k: int,
    n_group: int,
    topk_group: int,
    normalize: bool,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V3 (DeepseekV3TopkRouter): float32 logits -> sigmoid scores; choose with
    scores + e_score_correction_bias, limited to the topk_group groups whose two best biased
    scores sum highest; weights are the unbiased scores of the chosen, renormalised (+1e-20) if
    norm_topk_prob, times routed_scaling_factor. Weights stay float32 (as in transformers)."""
    n_expert = logits.shape[-1]
    scores = logits.float().sigmoid()
    choice = scores + bias.float()
    group_scores = choice.view(-1, n_group, n_expert // n_group).topk(2, dim=-1)[0].sum(dim=-1)
    choice = choice.masked_fill(~_group_mask(group_scores, topk_group, n_expert), float("-inf"))
    ids = torch.topk(choice, k=top_k, dim=-1, sorted=False)[1]
    w = scores.gather(1, ids)
    if normalize:
        w = w / (w.sum(dim=-1, keepdim=True) + 1e-20)
    return ids.to(torch.int64), (w * scaling).to(torch.float32)


def deepseek_v2_topk(
    logits: torch.Tensor,
    top_k: int,
    method: str,
    n_group: int | None,
    topk_group: int | None,
    scaling: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DeepSeek-V2 (DeepseekV2TopkRouter / 4.x DeepseekV2MoEGate): float32 softmax; 'greedy'
    top-k, or 'group_limited_greedy' (keep the topk_group groups with the best single score, zero
    the rest); weights times routed_scaling_factor. transformers applies no norm_topk_prob here
    (it reads the flag but never uses it), and neither do we: we reproduce transformers."""
    n_expert = logits.shape[-1]
    scores = logits.float().softmax(dim=-1, dtype=torch.float32)
    if method == "group_limited_greedy":
        group_scores = scores.view(-1, n_group, n_expert // n_group).max(dim=-1).values
        scores = scores.masked_fill(~_group_mask(group_scores, topk_group, n_expert), 0.0)
    elif method != "greedy":
        raise ValueError(
            f"DeepSeek-V2 topk_method must be 'greedy' or 'group_limited_greedy', got {method!r}"
        )
    w, ids = torch.topk(scores, k=top_k, dim=-1, sorted=False)
    return ids.to(torch.int64), (w * scaling).to(torch.float32)
