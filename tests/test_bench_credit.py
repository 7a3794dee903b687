"""bench/bench_credit.py: its statistics against hand-computed values, the curve aggregation
and pairwise verdicts on made-up results, and a smoke run of the whole harness (tiny random
Llama, env=compose at the bench default knobs, every method, 2 seeds, 2 evaluations each)."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location(
    "bench_credit", Path(__file__).resolve().parents[1] / "bench" / "bench_credit.py")
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)


def test_two_proportion_sample_size_matches_hand_computation():
    # p1=0.3, p2=0.5: pbar=0.4; (1.95996*sqrt(0.48) + 0.84162*sqrt(0.46))^2 / 0.04
    # = (1.35790 + 0.57082)^2 / 0.04 = 92.99 -> 93 per arm (the textbook value)
    assert bc.n_two_proportions(0.3, 0.5) == 93
    # 0.2 vs 0.3: (1.95996*sqrt(2*.25*.75) + .84162*sqrt(.16+.21))^2/.01 = 293.0 -> 294
    assert bc.n_two_proportions(0.2, 0.3) in (293, 294)
    with pytest.raises(ValueError):
        bc.n_two_proportions(0.4, 0.4)


def test_seeds_needed_by_hand():
    # p=0.3, delta=0.1, seed_var=0.01, N=100: var = 0.02 + (0.21 + 0.24)/100 = 0.0245
    # S = 7.8489 * 0.0245 / 0.01 = 19.23 -> 20
    assert bc.seeds_needed(0.3, 0.1, 0.01, 100) == 20
    assert bc.seeds_needed(0.3, 0.5, 0.0, 10_000) == 2  # floor of two seeds


def test_newcombe_and_welch_by_hand():
    d, lo, hi = bc.newcombe(5, 10, 5, 10)
    p, l1, u1 = bc.wilson(5, 10)
    assert d == 0 and lo == pytest.approx(-math.hypot(p - l1, u1 - p)) and hi == -lo
    assert (l1, u1) == pytest.approx((0.2366, 0.7634), abs=1e-4)  # Wilson 5/10
    d, lo, hi = bc.welch([0.2, 0.4], [0.1, 0.1, 0.1])
    # va = 0.02/2 = 0.01, vb = 0: se = 0.1, dof = 1 -> t = 12.706
    assert d == pytest.approx(0.2) and hi - d == pytest.approx(1.27062, abs=1e-4)
    assert math.isnan(bc.welch([0.1], [0.2, 0.3])[1])


def _results(k_a, k_b, n=20):
    runs = []
    for m, ks in (("grpo", k_a), ("archer", k_b)):
        for s, k in enumerate(ks):
            runs.append({"method": m, "seed": s,
                         "evals": [{"episodes": 8, "k": k // 2, "n": n},
                                   {"episodes": 16, "k": k, "n": n}]})
    return {"methods": ["grpo", "archer"], "start": {"k": 2, "n": n}, "runs": runs,
            "args": {"env": "compose", "knobs": []}}


def test_curves_pool_seeds_and_pairs_resolve_only_clear_gaps(tmp_path):
    res = _results([4, 5, 6], [16, 17, 18])
    cv = bc.curves(res)
    g = cv["grpo"]
    assert [r["episodes"] for r in g] == [0, 8, 16]
    assert (g[0]["k"], g[0]["n"], g[0]["seeds"]) == (6, 60, 3)  # the shared start, per seed
    assert (g[-1]["k"], g[-1]["n"]) == (15, 60)
    assert g[-1]["seed_mean"][0] == pytest.approx(0.25)
    assert g[-1]["pooled"][1:] == pytest.approx(bc.wilson(15, 60)[1:])
    (pair,) = bc.pairwise(res)
    assert pair["resolved"] and pair["newcombe"][0] == pytest.approx(15 / 60 - 51 / 60)
    close = bc.pairwise(_results([4, 9, 6], [5, 8, 7]))[0]
    assert not close["resolved"]
    sz = bc.sizing(res, 0.1)
    assert sz["n_pilot_tasks"] == 20 and sz["episodes_per_arm"] > 100
    (tmp_path / "results.json").write_text(json.dumps(res))
    bc.report(res, tmp_path)
    assert (tmp_path / "credit.png").stat().st_size > 1000


@pytest.mark.slow
def test_smoke_run_every_method(tmp_path, tiny_model_dir):
    out = tmp_path / "bench"
    res = bc.main([
        "--model", str(tiny_model_dir), "--episodes", "8", "--eval-every", "4",
        "--tasks-per-step", "2", "--group", "2", "--eval-tasks", "3", "--seeds", "0", "1",
        "--lr", "1e-3", "--out", str(out), "--override", "rollout.max_turns=2",
        "rollout.max_tokens_per_turn=6", "learner.autocast=fp32",
        "algorithm.archer.critic_updates=2", "algorithm.archer.batch_size=4",
        "algorithm.archer.critic_max_tokens=128"])
    assert len(res["runs"]) == 2 * len(bc.METHODS)
    for r in res["runs"]:
        assert r["episodes"] == 8 and r["steps"] == 2
        assert [e["episodes"] for e in r["evals"]] == [4, 8]
        assert all(e["n"] == 3 for e in r["evals"])
    archer = [r for r in res["runs"] if r["method"] == "archer"]
    # 2 steps x 2 updates x 4 samples over the turns of 8 episodes (1-2 turns each)
    for r in archer:
        assert r["critic_samples"] == 16 and 8 <= r["turns_added"] <= 16
        assert r["reuse_ratio"] == pytest.approx(16 / r["turns_added"])
    assert json.loads((out / "results.json").read_text())["runs"] == res["runs"]
    assert (out / "credit.png").exists()
