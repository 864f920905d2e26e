"""Runtime: the live hybrid CPU/GPU expert runtime shared by a model's layers (DESIGN.md section 3).

    rt = Runtime(budget="30%", policy="value", profile="h200-lent", threads=None)
    layer = HybridMoELayer(rt, layer_idx, weights, top_k=8)     # hybrid_moe.layer
    out = layer(hidden [T, H], topk_ids [T, k], topk_weights [T, k])
    rt.stats()        # per layer CPU/GPU expert counts, hits, copies, copy bytes, CPU/GPU time

or `hybrid_moe.patch(model, rt)` for a Hugging Face model.

One native runtime (csrc/runtime/runtime.h) owns the CPU thread pool, the host expert store
(page-locked with a GPU), the VRAM expert cache (DeviceSlab + Mover) and the decision engine
(ExpertCache, Policy, Scheduler, CostModel). Layers register their experts as they are built;
the first forward starts the runtime, fixing the layer count (n_layers, or the registered layers)
and the cache size: the budget is a share of ALL registered experts (or bytes, or slots). Pass
n_layers when known (patch() does) so each layer is copied straight into pinned memory.

Budget: 0 / "0%" = every expert on the CPU; a fraction in (0, 1] or "30%" of all experts; an int
number of slots; or bytes with a unit ("2GiB"). A non-zero budget must hold at least top_k slots.
CPU-only (device="cpu", or hybrid_moe built without CUDA): the same API runs every expert through
the CPU kernels; a non-zero budget then counts as 0 and stats()["budget_ignored"] says so.

Decode steps (T <= decode_max_tokens) on CUDA tensors are stream-ordered on the caller's current
stream and can be captured with torch.cuda.graph after one eager step (use
capture_error_mode="thread_local": the runtime's copy thread keeps working meanwhile). Errors
inside the stream's host functions (e.g. an expert id out of range on the GPU path, which is only
seen on the host) cannot raise where they happen: that step's output is wrong, and the next call
to the runtime (or check()) raises RuntimeError.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import torch

from hybrid_moe._native import native
from hybrid_moe.cost_model import load_profile, to_native
from hybrid_moe.policies import check_value_params, policy_names

_UNITS = {"b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 2**10, "mib": 2**20, "gib": 2**30}
LIVE_POLICIES = ("cpu", "static", "lru", "lfu", "lru-fetch", "value")


def parse_runtime_budget(budget) -> tuple[float, int, int]:
    """budget -> (fraction, bytes, slots) with exactly one >= 0 (the others -1).

    int >= 0: slots; float in [0, 1]: fraction of all experts; str: '30%', '0', '0.3', '12'
    (slots) or bytes with a unit ('2GiB', '512MB')."""
    bad = ValueError(
        f"budget {budget!r} not understood: expected slots (int >= 0), a fraction in "
        "[0, 1], a percentage ('30%') or bytes ('2GiB')"
    )
    if isinstance(budget, bool):
        raise bad
    if isinstance(budget, int):
        if budget < 0:
            raise bad
        return -1.0, -1, int(budget)
    if isinstance(budget, float):
        if not 0.0 <= budget <= 1.0:
            raise ValueError(f"budget fraction must be in [0, 1], got {budget}")
        return float(budget), -1, -1
    if isinstance(budget, str):
        s = budget.strip().lower()
        if s.endswith("%"):
            try:
                pct = float(s[:-1])
            except ValueError:
                raise bad from None
            if not 0.0 <= pct <= 100.0:
                raise ValueError(f"budget percentage must be in [0%, 100%], got {budget!r}")
            return pct / 100.0, -1, -1
        m = re.fullmatch(r"([0-9.e+]+)\s*(b|kb|mb|gb|kib|mib|gib)", s)
        if m:
            try:
                return -1.0, int(float(m.group(1)) * _UNITS[m.group(2)]), -1
            except ValueError:
                raise bad from None
        try:
            v = float(s)
        except ValueError:
            raise bad from None
        if v.is_integer() and (v > 1 or v == 0) and "." not in s:
            return parse_runtime_budget(int(v))
        return parse_runtime_budget(v)
    raise bad


def _resolve_device(device) -> torch.device:
    from hybrid_moe.system import cuda_available

    cuda_ok = bool(cuda_available()) and torch.cuda.is_available()
    if device is None:
        return torch.device("cuda", torch.cuda.current_device()) if cuda_ok else torch.device("cpu")
    if isinstance(device, int) and not isinstance(device, bool):
        device = torch.device("cuda", device)
    try:
        dev = torch.device(device)
    except (TypeError, RuntimeError) as exc:
        raise ValueError(
            f"device must be 'cpu', 'cuda', 'cuda:N' or an int, got {device!r}"
        ) from exc
    if dev.type == "cuda":
        if not cuda_ok:
            raise ValueError(
                f"device {device!r} asked for, but no CUDA device is usable (hybrid_moe "
                "built without CUDA or torch sees no GPU): use device='cpu'"
            )
        return torch.device(
            "cuda", dev.index if dev.index is not None else torch.cuda.current_device()
        )
    if dev.type != "cpu":
        raise ValueError(f"device must be cpu or cuda, got {device!r}")
    return dev


def _default_profile(device: torch.device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        if "H200" in name or "H100" in name:
            return "h200-lent"
    return "consumer-4090"


class Runtime:
    """The shared runtime of one model (see the module docstring).

    budget: 0 (default: all on the CPU), fraction, '30%', slots (int) or bytes ('2GiB').
    policy: one of cpu, static, lru, lfu, lru-fetch, value ('oracle' is simulator-only).
    profile: hardware profile name, path or dict (hybrid_moe.cost_model.load_profile); None: the
        shipped profile closest to this machine. The runtime refines it from observed times.
    threads: CPU pool size (None: HYBRID_MOE_THREADS, else the physical cores, minus 2 on a GPU
        runtime so that its planner thread and the caller keep a core each).
    device: 'cpu', 'cuda', 'cuda:N', an int or None (the GPU when usable, else the CPU).
    n_layers: number of MoE layers, when known (layer_idx then lies in [0, n_layers)).
    decode_max_tokens: T above it takes the host-driven prefill path (not graph-capturable).
    frequency: per (layer, expert) use counts [n_layers, n_expert] of a calibration run, or the
        path of a co-activation profile JSON (layers[].heat, e.g. ../shared/traces/
        qwen3-30b-a3b.coactivation.json): static's fixed GPU set (default: uniform, i.e. an
        arbitrary set); lru, lfu, lru-fetch and value start from the same placement and adapt
        (default: an empty cache).
    hint_probability: the next-layer predictor's assumed accuracy until it is measured.
    value_params: the value policy's tunables, {name: number} (hybrid_moe.policies.VALUE_PARAMS;
        defaults and their reasons in csrc/core/policy.h, ValueParams); None: the defaults.
    """

    def __init__(
        self,
        budget: int | float | str = 0,
        policy: str = "value",
        profile: str | Path | dict | None = None,
        threads: int | None = None,
        device: str | int | torch.device | None = None,
        n_layers: int | None = None,
        decode_max_tokens: int = 64,
        frequency: Any = None,
        hint_probability: float = 0.8,
        value_params: dict | None = None,
    ):
        self._check_policy(policy)
        self.value_params = check_value_params(value_params)
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ValueError(f"threads must be a positive int or None, got {threads!r}")
        if n_layers is not None and (
            isinstance(n_layers, bool) or not isinstance(n_layers, int) or n_layers < 1
        ):
            raise ValueError(f"n_layers must be a positive int or None, got {n_layers!r}")
        if (
            isinstance(decode_max_tokens, bool)
            or not isinstance(decode_max_tokens, int)
            or not 1 <= decode_max_tokens <= 4096
        ):
            raise ValueError(
                f"decode_max_tokens must be an int in [1, 4096], got {decode_max_tokens!r}"
            )
        if not isinstance(hint_probability, (int, float)) or not 0 <= hint_probability <= 1:
            raise ValueError(f"hint_probability must be in [0, 1], got {hint_probability!r}")
        self.budget = budget
        self._budget = parse_runtime_budget(budget)
        self.policy = policy
        self.device = _resolve_device(device)
        prof = _default_profile(self.device) if profile is None else profile
        self.profile = load_profile(prof)
        self.threads = threads
        self.decode_max_tokens = decode_max_tokens
        self.hint_probability = float(hint_probability)
        self._n_layers = n_layers
        self._frequency = frequency
        self.budget_ignored = (
            self.device.type == "cpu"
            and self._budget != (-1.0, -1, 0)
            and any(v > 0 for v in self._budget)
        )
        self._native = None

    @staticmethod
    def _check_policy(policy) -> None:
        if not isinstance(policy, str):
            raise ValueError(
                f"policy must be a string, one of {list(LIVE_POLICIES)}; got "
                f"{type(policy).__name__}"
            )
        if policy == "oracle":
            raise ValueError(
                "policy 'oracle' needs future knowledge and exists only in the "
                f"simulator (hybrid_moe.sim); the runtime takes one of {list(LIVE_POLICIES)}"
            )
        if policy not in policy_names():
            raise ValueError(f"unknown policy {policy!r}: expected one of {list(LIVE_POLICIES)}")

    def _frequency_list(self, frequency) -> list[float]:
        if frequency is None:
            return []
        if isinstance(frequency, (str, Path)):  # a co-activation profile JSON: its per-layer heat
            from hybrid_moe.sim import profile_from_heat

            if not Path(frequency).is_file():
                raise ValueError(f"frequency: no co-activation profile file at {frequency}")
            frequency = profile_from_heat(frequency)
        f = torch.as_tensor(frequency, dtype=torch.float64)
        if f.dim() != 2 or (self._n_layers is not None and f.shape[0] != self._n_layers):
            raise ValueError(f"frequency must be [n_layers, n_expert], got {list(f.shape)}")
        return f.reshape(-1).tolist()

    # ---- construction (native runtime created at the first layer) -----------------------------

    def _declare_layers(self, n_layers: int) -> None:
        """Set the layer count before any layer registers (patch() does); no-op once known."""
        if self._native is None and self._n_layers is None:
            self._n_layers = int(n_layers)

    def _ensure_native(self):
        if self._native is None:
            freq = self._frequency_list(self._frequency)
            frac, nbytes, slots = self._budget
            self._native = native.Runtime(
                to_native(self.profile),
                self.policy,
                self.threads or 0,
                self.device.index if self.device.type == "cuda" else -1,
                frac,
                nbytes,
                slots,
                self._n_layers or 0,
                self.decode_max_tokens,
                self.hint_probability,
                freq,
                self.value_params,
            )
        return self._native

    def register_layer(
        self,
        layer_idx: int,
        fmt: str,
        hidden: int,
        intermediate: int,
        n_expert: int,
        top_k: int,
        packed: torch.Tensor,
    ) -> None:
        """Copy one layer's packed experts (uint8 [n_expert, stride], CPU) into the host store."""
        if isinstance(layer_idx, bool) or not isinstance(layer_idx, int):
            raise ValueError(f"layer_idx must be an int, got {type(layer_idx).__name__}")
        if self._n_layers is not None and not 0 <= layer_idx < self._n_layers:
            raise ValueError(
                f"layer_idx must be in [0, n_layers={self._n_layers}), got {layer_idx}"
            )
        rt = self._ensure_native()
        if packed.dtype != torch.uint8 or packed.device.type != "cpu" or not packed.is_contiguous():
            raise ValueError("packed experts must be a contiguous uint8 CPU tensor")
        rt.register_layer(
            int(layer_idx),
            fmt,
            int(hidden),
            int(intermediate),
            int(n_expert),
            int(top_k),
            packed.data_ptr(),
        )

    def reconfigure(
        self,
        *,
        budget: int | float | str | None = None,
        policy: str | None = None,
        profile: str | Path | dict | None = None,
        frequency: Any = None,
        hint_probability: float | None = None,
        value_params: dict | None = None,
    ) -> None:
        """Switch policy / budget / profile / frequency / hint_probability / value_params, keeping
        the registered experts (no second copy of the host store). Arguments left None keep their
        value ({} restores the value policy's defaults), except
        frequency, which only the static policy reads: None clears it. Waits for every queued
        step, rebuilds the VRAM cache (CUDA graphs captured before must be captured again) and
        zeroes the stats. On a bad argument it raises and the runtime keeps its configuration."""
        policy = self.policy if policy is None else policy
        self._check_policy(policy)
        parsed = self._budget if budget is None else parse_runtime_budget(budget)
        prof = self.profile if profile is None else load_profile(profile)
        hp = self.hint_probability if hint_probability is None else hint_probability
        if not isinstance(hp, (int, float)) or not 0 <= hp <= 1:
            raise ValueError(f"hint_probability must be in [0, 1], got {hp!r}")
        vp = self.value_params if value_params is None else check_value_params(value_params)
        if self._native is not None:
            frac, nbytes, slots = parsed
            self._native.reconfigure(
                to_native(prof),
                policy,
                frac,
                nbytes,
                slots,
                float(hp),
                self._frequency_list(frequency),
                vp,
            )
        self.policy, self.profile, self.hint_probability = policy, prof, float(hp)
        self.value_params = vp
        if budget is not None:
            self.budget, self._budget = budget, parsed
        self._frequency = frequency
        self.budget_ignored = (
            self.device.type == "cpu"
            and self._budget != (-1.0, -1, 0)
            and any(v > 0 for v in self._budget)
        )

    def enable_timeline(self, capacity: int = 200_000) -> None:
        """Record up to `capacity` decode-path events from now on (0: off); read with timeline()."""
        self.native.enable_timeline(int(capacity))

    def timeline(self):
        """Recorded decode-path events as hybrid_moe.timeline.Timeline (waits for queued steps)."""
        from hybrid_moe.timeline import Timeline

        self._settle()
        return Timeline(self.native.timeline(), self.native.timeline_dropped())

    # ---- state -------------------------------------------------------------------------------

    @property
    def native(self):
        """The native runtime (hybrid_moe._C.Runtime); raises until a layer registered."""
        if self._native is None:
            raise RuntimeError("no layer registered yet: build the model's HybridMoELayers first")
        return self._native

    @property
    def started(self) -> bool:
        return self._native is not None and self._native.started

    def start(self) -> None:
        """Fix the layer count and cache size now (otherwise the first forward does)."""
        self.native.start()

    def check(self) -> None:
        """Raise (RuntimeError) an error recorded inside a stream host function, if any."""
        if self._native is not None:
            self._native.check_error()

    def synchronize(self) -> None:
        """Wait for the device's queued work and the copy thread, then check()."""
        self._settle()
        if self._native is not None:
            self._native.wait_copies()
        self.check()

    def wait_copies(self) -> None:
        """Block until every expert copy requested so far has landed (e.g. before a capture)."""
        if self._native is not None:
            self._native.wait_copies()

    @property
    def n_slots(self) -> int:
        """VRAM expert slots (0 before start() and without a GPU)."""
        return self._native.n_slots if self.started else 0

    def stats(self) -> dict[str, Any]:
        """Counters since the last reset_stats(): per layer (list under 'layers') and totals.

        Per layer: forwards, tokens, pairs (= tokens * top_k selections), cpu_pairs + gpu_pairs
        (= pairs), experts (distinct per forward, summed) = cpu_experts + gpu_experts, hits,
        misses, in_flight, demand/prefetch/admit_copies, copy_bytes, decode_fetch_on_cpu, cpu_us,
        gpu_us (measured; cpu_timed / gpu_timed steps), hit_rate (hits / experts).
        Totals: the same keys summed, hit_rate, n_slots, resident_experts, hint_accuracy,
        cost_scale {cpu, gpu, copy} (observed / profile), mover {copies_done, bytes_copied,
        dropped, waits_for_release}, policy, device, budget, budget_ignored. On a GPU runtime it
        first waits for the queued steps (torch.cuda.synchronize), so call it off the hot path."""
        self._settle()
        out: dict[str, Any] = {
            "policy": self.policy,
            "device": str(self.device),
            "budget": self.budget,
            "budget_ignored": self.budget_ignored,
            "started": self.started,
            "n_slots": self.n_slots,
        }
        layers = [] if self._native is None else list(self._native.layer_stats())
        for d in layers:
            d["hit_rate"] = d["hits"] / d["experts"] if d["experts"] else 0.0
        out["layers"] = layers
        keys = [k for k in (layers[0] if layers else {}) if k != "hit_rate"]
        for k in keys:
            out[k] = sum(d[k] for d in layers)
        out["hit_rate"] = out["hits"] / out["experts"] if layers and out["experts"] else 0.0
        if self._native is not None:
            out["decode_sync"] = self._native.decode_sync
            out["host_store"] = self._native.host_store
            out["host_packing"] = self._native.host_packing
            out["resident_experts"] = self._native.resident_experts()
            out["hint_accuracy"] = self._native.hint_accuracy()
            out["cost_scale"] = dict(
                zip(("cpu", "gpu", "copy"), self._native.cost_scales(), strict=True)
            )
            out["mover"] = dict(
                zip(
                    ("copies_done", "bytes_copied", "dropped", "waits_for_release"),
                    self._native.mover_stats(),
                    strict=True,
                )
            )
        return out

    def reset_stats(self) -> None:
        """Zero the counters (after the steps already queued on the GPU have been counted)."""
        self._settle()
        if self._native is not None:
            self._native.reset_stats()

    def _settle(self) -> None:
        # GPU steps are counted by host functions that run when the stream reaches them: wait for
        # queued work so stats() / reset_stats() see every step issued so far (not while capturing).
        if (
            self.device.type == "cuda"
            and self._native is not None
            and not torch.cuda.is_current_stream_capturing()
        ):
            torch.cuda.synchronize(self.device)
            self._native.settle()  # the planner thread has handled every finished step

    def __repr__(self) -> str:
        return (
            f"Runtime(budget={self.budget!r}, policy={self.policy!r}, device={self.device}, "
            f"profile={self.profile.get('name')!r}, n_slots={self.n_slots})"
        )
