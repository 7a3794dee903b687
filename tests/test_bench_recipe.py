"""bench/bench_recipe.py: the pooled paired gain over seeds, checked by hand on two fake runs."""

from __future__ import annotations

import importlib.util
import json
import sys
from argparse import Namespace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_recipe", ROOT / "bench/bench_recipe.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_recipe"] = mod
    spec.loader.exec_module(mod)
    return mod


def _run(out: Path, name: str, sft: list[float], grpo: list[float]) -> None:
    d = out / name
    d.mkdir(parents=True)
    res = {"sft": {"success": sum(sft) / len(sft), "success_by_task": sft},
           "grpo": {"success": sum(grpo) / len(grpo), "success_by_task": grpo,
                    "tool_call_rate": 1.0}}
    (d / "results.json").write_text(json.dumps(res))
    rows = [{"step": 0, "stage": "rl", "health/kl_to_start": 0.0, "health/kl_update": 0.02},
            {"step": 1, "stage": "rl", "health/kl_to_start": 0.01, "health/kl_update": 0.04}]
    (d / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")


def test_pooled_paired_gain_by_hand(tmp_path):
    # seed 0: 4 tasks, gains [+1, 0, 0, 0]; seed 1: gains [+1, +1, 0, -1]
    _run(tmp_path, "arm_s0", [0, 0, 1, 1], [1, 0, 1, 1])
    _run(tmp_path, "arm_s1", [0, 0, 1, 1], [1, 1, 1, 0])
    table = _bench().report(Namespace(out=str(tmp_path), baseline="sft"))
    row = table.splitlines()[2]
    # pooled d = [1,0,0,0,1,1,0,-1]: mean 0.25, sd = sqrt((4*0.5625 + 3*0.0625 + 1.5625)/7)
    # = 0.70711, half = t(0.975, 7) 2.36462 * 0.70711 / sqrt(8) = 0.59116
    assert "| +0.250 [-0.341, +0.841] (8) |" in row
    # per-seed gains 0.25 and 0.25: t over seeds has zero spread
    assert "+0.250, +0.250 (N=4)" in row and "| +0.250 [+0.250, +0.250] |" in row
    assert "| 0.0100 |" in row and "| 0.0300 |" in row  # last KL to start, mean KL per update
