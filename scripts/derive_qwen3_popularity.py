"""Derive the compact per-layer popularity parameters of the qwen3-30b-a3b synthetic preset from
../shared/traces/qwen3-30b-a3b.coactivation.json (per-layer heat of 128 experts at top-8 over
75,773 decode tokens). Prints two Python lists to paste into hybrid_moe/presets.py:

  top16_share[l]  share of layer l's selections held by its 16 most used experts
  dead[l]         experts layer l never selected

The generator rebuilds a popularity vector per layer from these two numbers (presets.py), so no
heat array is copied into the repository.

    python scripts/derive_qwen3_popularity.py [path/to/coactivation.json]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np


def main() -> None:
    default = Path(__file__).resolve().parents[2] / "shared/traces/qwen3-30b-a3b.coactivation.json"
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    data = json.loads(path.read_text())
    shares, dead = [], []
    for layer in data["layers"]:
        heat = np.sort(np.asarray(layer["heat"], dtype=np.float64))[::-1]
        shares.append(round(float(heat[:16].sum() / heat.sum()), 3))
        dead.append(int((heat == 0).sum()))
    print(f"QWEN3_30B_TOP16_SHARE = {shares}")
    print(f"QWEN3_30B_DEAD_EXPERTS = {dead}")


if __name__ == "__main__":
    main()
