"""Where a decode layer's time goes: the runtime's host-clock timeline (csrc/runtime/timeline.h).

    rt.enable_timeline()            # before the steps to look at
    ... decode steps ...
    tl = rt.timeline()              # Timeline; tl.summary() -> dict of medians/means in us

One *visit* is one layer's decode step as the stream's host functions saw it:
    plan_begin .. plan_end          planning on the host (scheduler, mover requests, CPU submit),
                                    in three parts: plan_convert (inputs: x to fp32, hint top-k),
                                    plan_schedule (Runtime::plan: checks, scheduler, slots) and
                                    plan_submit (the kernel's pair list, partials zeroed, the CPU
                                    job built and submitted)
    plan_end .. join_begin          the GPU expert kernel, plus hand-off latency
    join_begin .. cpu_done          waiting for the CPU's experts (0 when they were done first)
    .. join_end                     releasing slots and pins
    prev join_end .. plan_begin     `gap`: the previous layer's add-partials, the ops between
                                    layers, this layer's D2H staging and host-function latency
With the planner computing CPU items (HYBRID_MOE_PLANNER_HELPS, the default) join_begin is when
the planner next looks, after its items: `gpu` then includes most of the CPU's time and cpu_wait
shrinks to the tail; plan_end .. cpu_done is the CPU side either way.
Eager steps also record enqueue_begin/end on the caller's thread: `lead` = plan_begin -
enqueue_end says whether the caller runs ahead of the stream (large: the stream is the bottleneck)
or behind it (small or negative: the caller, e.g. Python, is).
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

KINDS = {
    0: "enqueue_begin",
    1: "enqueue_end",
    2: "plan_begin",
    3: "plan_end",
    4: "join_begin",
    5: "cpu_done",
    6: "join_end",
    7: "copy_done",
    8: "plan_inputs",
    9: "plan_scheduled",
}
PHASES = ("gap", "plan", "gpu", "cpu_wait", "release", "period", "lead")
# Parts of `plan` (summary() only; describe() keeps its one line)
PLAN_PARTS = ("plan_convert", "plan_schedule", "plan_submit")


@dataclass
class Visit:
    layer: int
    t: dict[str, float] = field(default_factory=dict)  # event name -> us
    cpu_experts: int = 0
    gpu_experts: int = 0
    cpu_waited: bool = False
    phases: dict[str, float] = field(default_factory=dict)


class Timeline:
    """Decode-path events [(t_us, layer, kind, a, b)] grouped into per-layer visits."""

    def __init__(self, events, dropped: int = 0):
        self.events = sorted(events, key=lambda e: e[0])
        self.dropped = int(dropped)
        self.copies = [e[0] for e in self.events if e[2] == 7]
        self.visits = self._visits()

    def _visits(self) -> list[Visit]:
        open_visit: dict[int, Visit] = {}
        # Enqueue events pair with visits of the same layer in order; the stream may plan a layer
        # before the caller's forward returned, so an enqueue_end can follow its plan_begin.
        begins: dict[int, list[float]] = {}
        ends: dict[int, list[float]] = {}
        by_layer: dict[int, list[Visit]] = {}
        done: list[Visit] = []
        for t, layer, kind, a, b in self.events:
            name = KINDS.get(kind)
            if name == "enqueue_begin":
                begins.setdefault(layer, []).append(t)
            elif name == "enqueue_end":
                ends.setdefault(layer, []).append(t)
            elif name == "plan_begin":
                v = Visit(layer)
                v.t["plan_begin"] = t
                by_layer.setdefault(layer, []).append(v)
                open_visit[layer] = v
            elif layer in open_visit:
                v = open_visit[layer]
                v.t[name] = t
                if name == "plan_end":
                    v.cpu_experts, v.gpu_experts = a, b
                elif name == "cpu_done":
                    v.cpu_waited = bool(a)
                elif name == "join_end":
                    done.append(open_visit.pop(layer))
        for layer, vs in by_layer.items():
            for v, tb, te in zip(vs, begins.get(layer, []), ends.get(layer, []), strict=False):
                v.t["enqueue_begin"], v.t["enqueue_end"] = tb, te
        done.sort(key=lambda v: v.t["plan_begin"])
        prev = None
        for i, v in enumerate(done):
            t = v.t
            p = v.phases
            if "plan_end" in t:
                p["plan"] = t["plan_end"] - t["plan_begin"]
                if "plan_inputs" in t and "plan_scheduled" in t:
                    p["plan_convert"] = t["plan_inputs"] - t["plan_begin"]
                    p["plan_schedule"] = t["plan_scheduled"] - t["plan_inputs"]
                    p["plan_submit"] = t["plan_end"] - t["plan_scheduled"]
            if "join_begin" in t and "plan_end" in t:
                p["gpu"] = t["join_begin"] - t["plan_end"]
            jb = t.get("join_begin")
            cd = t.get("cpu_done", jb)
            if jb is not None:
                # Doorbell decode may see the CPU finish before the kernel: no wait then.
                p["cpu_wait"] = max(0.0, cd - jb)
                p["release"] = t["join_end"] - max(cd, jb)
            if prev is not None:
                p["gap"] = t["plan_begin"] - prev.t["join_end"]
            if i + 1 < len(done):
                p["period"] = done[i + 1].t["plan_begin"] - t["plan_begin"]
            if "enqueue_end" in t:
                p["lead"] = t["plan_begin"] - t["enqueue_end"]
            prev = v
        return done

    def summary(self) -> dict[str, float]:
        """Per phase: median and mean over visits (us); share of visits with CPU experts; copies."""
        out: dict[str, float] = {"visits": len(self.visits), "copies": len(self.copies)}
        for ph in PHASES + PLAN_PARTS:
            xs = [v.phases[ph] for v in self.visits if ph in v.phases]
            if xs:
                out[f"{ph}_p50_us"] = statistics.median(xs)
                out[f"{ph}_mean_us"] = statistics.fmean(xs)
        with_cpu = [v for v in self.visits if v.cpu_experts > 0]
        out["share_with_cpu"] = len(with_cpu) / len(self.visits) if self.visits else 0.0
        waits = [v.phases["cpu_wait"] for v in with_cpu if "cpu_wait" in v.phases]
        if waits:
            out["cpu_wait_when_cpu_mean_us"] = statistics.fmean(waits)
        if self.visits:
            out["cpu_experts_mean"] = statistics.fmean(v.cpu_experts for v in self.visits)
            out["gpu_experts_mean"] = statistics.fmean(v.gpu_experts for v in self.visits)
        out["dropped_events"] = self.dropped
        return out

    def describe(self) -> str:
        """One line: mean us per phase (per layer visit)."""
        s = self.summary()
        parts = [f"{ph} {s[f'{ph}_mean_us']:.0f}" for ph in PHASES if f"{ph}_mean_us" in s]
        if all(f"{pp}_mean_us" in s for pp in PLAN_PARTS) and "plan_mean_us" in s:
            split = "/".join(f"{s[f'{pp}_mean_us']:.1f}" for pp in PLAN_PARTS)
            parts[[p.split()[0] for p in parts].index("plan")] += (
                f" (convert/schedule/submit {split})"
            )

        return (
            f"{s['visits']} visits, mean us/layer: " + ", ".join(parts) + f"; cpu experts "
            f"{s.get('cpu_experts_mean', 0):.2f}, gpu {s.get('gpu_experts_mean', 0):.2f}"
        )
