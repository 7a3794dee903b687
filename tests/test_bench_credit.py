"""bench/bench_credit.py: its statistics against hand-computed values, the method -> overrides
mapping and its episode accounting (tree methods included), the plan and its budget, curve
aggregation, bands, episodes-to-threshold on hand-made curves, reports from partial results,
resume / child-process orchestration with a fake child, and a smoke run of the whole harness
(tiny random Llama, env=compose at the bench default knobs, every method, 2 seeds; slow)."""

from __future__ import annotations

import importlib.util
import json
import math
import shlex
import subprocess
from pathlib import Path
from types import SimpleNamespace

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


def test_report_pools_tool_calls_and_error_recovery_over_seeds(tmp_path, capsys):
    res = _results([4, 5, 6], [16, 17, 18])
    for r, (seen, rec) in zip(res["runs"][:3], [(4, 1), (0, 0), (6, 2)]):
        r["evals"][-1].update(tool_call_rate=0.5, error_seen=seen, error_recovered=rec)
        r["train_error_seen"], r["train_error_recovered"] = 10, 1
    bc.report(res, tmp_path)
    row = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("| grpo |"))
    cells = [c.strip() for c in row.split("|")]
    assert cells[-4] == "0.500"  # 30 of 60 held-out episodes called a tool
    assert cells[-3] == f"3/10 = {bc._fmt(bc.wilson(3, 10))}"  # pooled over the three seeds
    assert cells[-2] == "3/30"


def test_t_interval_across_seeds_by_hand():
    # rates 0.2, 0.3, 0.4: mean 0.3, s = 0.1, se = 0.057735, t_0.975(2) = 4.302653 -> +-0.248414
    m, lo, hi = bc.across_seeds([0.2, 0.3, 0.4])
    assert m == pytest.approx(0.3) and (lo, hi) == pytest.approx((0.051586, 0.548414), abs=1e-5)


def test_method_overrides_and_tree_sample_accounting():
    assert bc.method_overrides("grpo", 4, 2) == ["algorithm=grpo", "algorithm.group_size=4"]
    assert bc.method_overrides("grpo_turn-group", 6, 3)[-2:] == [
        "algorithm.turn_norm=group", "algorithm.group_size=6"]
    assert "algorithm.archer.critic_backbone=policy" in bc.method_overrides("archer-policy", 4, 2)
    assert bc.method_overrides("tree-fork", 4, 2) == [
        "algorithm=grpo", "algorithm.credit=tree", "rollout.tree.mode=fork",
        "algorithm.group_size=2", "rollout.tree.max_branches=2", "rollout.tree.branch=2"]
    err = bc.method_overrides("tree-error", 8, 3)
    assert err[2:] == ["rollout.tree.mode=error", "algorithm.group_size=5",
                       "rollout.tree.max_branches=3", "rollout.tree.branch=2"]
    assert bc.method_overrides("tree-fork", 3, 1)[-1] == "rollout.tree.branch=1"
    assert bc.method_overrides("tree-fork", 2, 1)[-3:] == [
        "algorithm.group_size=1", "rollout.tree.max_branches=1", "rollout.tree.branch=1"]
    for g, b in ((4, 0), (4, 4), (2, 3)):  # no branch slot, or no root
        with pytest.raises(ValueError, match="tree method"):
            bc.method_overrides("tree-fork", g, b)
    with pytest.raises(ValueError, match="not one of"):
        bc.method_overrides("ppo", 4, 2)

    def cfg(group, mode, branches, tasks=4):
        return SimpleNamespace(algorithm=SimpleNamespace(group_size=group),
                               rollout=SimpleNamespace(tree=SimpleNamespace(
                                   mode=mode, max_branches=branches)),
                               trainer=SimpleNamespace(tasks_per_step=tasks))
    assert bc.episodes_per_step(cfg(2, "fork", 2)) == 16  # 4 tasks x (2 roots + 2 branches)
    assert bc.episodes_per_step(cfg(4, "off", 4)) == 16  # max_branches unused when off
    assert bc.episodes_per_step(cfg(5, "error", 3, tasks=2)) == 16
    assert (bc.n_evals(32, 16), bc.n_evals(24, 16), bc.n_evals(8, 16)) == (2, 2, 1)


def test_dry_run_plan_commands_budget_and_composed_configs(tmp_path, capsys):
    from rl.config import load_config, to_dataclass

    out = tmp_path / "b"
    res = bc.main(["--dry-run", "--episodes", "24", "--eval-every", "16", "--eval-tasks", "5",
                   "--tasks-per-step", "2", "--group", "4", "--out", str(out)])
    jobs = res["jobs"]
    names = [j["job"] for j in jobs]
    assert names[:2] == ["sft", "start"] and len(jobs) == 2 + 7 * 3
    assert names[2:9] == [f"{m}-s0" for m in bc.METHODS] and names[-1] == "tree-error-s2"
    # 21 runs x 24 training episodes; eval: start 5 + 21 runs x 2 evaluations (16, 24) x 5
    assert res["budget"] == {"runs": 21, "train_episodes": 504, "eval_episodes": 215,
                             "total_episodes": 719}
    printed = capsys.readouterr().out
    assert "# budget: training episodes 504 (21 x 24); held-out eval episodes 215; " \
           "total env episodes 719" in printed
    assert "# configs: all compose and validate" in printed
    lines = [x for x in printed.splitlines() if x.startswith("turnrl train")]
    assert len(lines) == 22  # the SFT job and the 21 runs
    run = next(j for j in jobs if j["job"] == "tree-fork-s1")
    line = next(x for x in lines if f"trainer.run_dir={out / 'tree-fork-s1'}" in x)
    assert shlex.split(line)[2:] == run["overrides"]  # the printed line is the run's config
    assert f"model.name={out / 'sft' / 'checkpoints' / 'step_000000' / 'model'}" in run["overrides"]
    assert "trainer.steps=3" in run["overrides"] and "trainer.seed=1" in run["overrides"]
    cfg = to_dataclass(load_config([o for o in run["overrides"] if not o.startswith("model.")]))
    assert (cfg.rollout.tree.mode, cfg.algorithm.group_size, cfg.rollout.tree.max_branches,
            cfg.algorithm.credit) == ("fork", 2, 2, "tree")
    assert bc.episodes_per_step(cfg) == 8 and not out.exists()  # a dry run writes nothing


def test_check_plan_names_the_job_that_breaks_budget_or_config(tmp_path, capsys):
    base = ["--dry-run", "--model", "smollm2-135m-instruct", "--episodes", "8", "--eval-every",
            "8", "--tasks-per-step", "2", "--group", "4", "--seeds", "0", "--out", str(tmp_path)]
    with pytest.raises(SystemExit, match="1 job"):
        bc.main([*base, "--methods", "grpo", "tree-fork", "--override", "rollout.max_turns=1"])
    assert "tree-fork-s0: ConfigError: rollout.tree.mode=fork needs rollout.max_turns >= 2" \
        in capsys.readouterr().out
    with pytest.raises(SystemExit):  # an override that changes one method's sample budget
        bc.main([*base, "--methods", "tree-error", "--override", "rollout.tree.max_branches=4"])
    # 2 tasks x (2 roots + 4 branch slots) = 12, planned 2 x 4 = 8
    assert "tree-error-s0: 12 episodes per step, the others 8" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        bc.main([*base[:-2], "--episodes", "12", "--out", str(tmp_path)])  # not a step multiple


def test_episodes_to_threshold_on_hand_made_curves():
    curve = [(32, 0.6), (0, 0.1), (16, 0.4), (48, 0.5)]  # unsorted on purpose
    assert bc.episodes_to_threshold(curve, 0.5) == 32
    assert bc.episodes_to_threshold(curve, 0.4) == 16  # reaching it exactly counts
    assert bc.episodes_to_threshold(curve, 0.1) == 0
    assert bc.episodes_to_threshold(curve, 0.7) is None
    assert bc.episodes_to_threshold([], 0.5) is None


def test_reach_per_seed_and_mean_curve():
    res = _results([4, 5, 6], [16, 17, 18])  # n=20: grpo ends at 0.20/0.25/0.30
    r = bc.reach(res, 0.4)
    # archer: at 8 episodes 8/20, 8/20, 9/20 (k // 2) -> every seed and the mean reach 0.4 at 8
    assert r["archer"] == {"mean": 8, "per_seed": {0: 8, 1: 8, 2: 8}}
    assert r["grpo"] == {"mean": None, "per_seed": {0: None, 1: None, 2: None}}
    r = bc.reach(res, 0.25)  # grpo seeds reach 0.25 at 16 only where k >= 5; mean 0.25 at 16
    assert r["grpo"] == {"mean": 16, "per_seed": {0: None, 1: 16, 2: 16}}
    assert bc.reach(res, 0.1)["grpo"]["mean"] == 0  # the shared start (2/20) is episode 0


def test_band_uses_seeds_when_they_spread_else_wilson():
    row = {"seeds": 3, "seed_mean": bc.across_seeds([0.2, 0.3, 0.4]),
           "pooled": bc.wilson(18, 60)}
    assert bc.band(row) == pytest.approx((0.051586, 0.548414), abs=1e-5)
    row = {"seeds": 3, "seed_mean": bc.across_seeds([0.0, 0.5, 1.0]), "pooled": bc.wilson(30, 60)}
    assert bc.band(row) == (0.0, 1.0)  # the t interval clipped to [0, 1]
    for rates in ([0.3], [0.0, 0.0, 0.0]):  # one seed, or no spread: eval noise is all there is
        k = round(sum(rates) * 20)
        row = {"seeds": len(rates), "seed_mean": bc.across_seeds(rates),
               "pooled": bc.wilson(k, 20 * len(rates))}
        assert bc.band(row) == pytest.approx(bc.wilson(k, 20 * len(rates))[1:])


def _partial_out(out: Path) -> None:
    """A run still going: 2 of 3 grpo seeds started (one 1 evaluation in), archer-s0 not yet."""
    args = {"env": "compose", "knobs": ["depth=2"]}
    jobs = ["start", "grpo-s0", "archer-s0", "grpo-s1", "archer-s1"]
    bc._write(out / "plan.json", {"args": args, "methods": ["grpo", "archer"],
                                  "seeds": [0, 1], "model": "m", "jobs": jobs})
    bc._write(bc.run_file(out, "start"), {"k": 2, "n": 20, "success": 0.1, "seconds": 1.0,
                                          "done": True})
    bc._write(bc.run_file(out, "grpo-s0"), {
        "method": "grpo", "seed": 0, "done": True, "evals": [
            {"episodes": 8, "k": 4, "n": 20}, {"episodes": 16, "k": 6, "n": 20}]})
    bc._write(bc.run_file(out, "grpo-s1"), {
        "method": "grpo", "seed": 1, "done": False, "evals": [{"episodes": 8, "k": 8, "n": 20}]})
    bc._write(bc.run_file(out, "archer-s1"), {"method": "archer", "seed": 1, "done": False,
                                              "evals": []})


def test_report_from_partial_results(tmp_path, capsys):
    _partial_out(tmp_path)
    res = bc.collect(tmp_path)
    assert [(r["method"], r["seed"]) for r in res["runs"]] == [("grpo", 0), ("grpo", 1),
                                                                ("archer", 1)]
    assert res["start"] == {"k": 2, "n": 20, "success": 0.1, "seconds": 1.0}
    g = bc.curves(res)["grpo"]
    assert [(r["episodes"], r["seeds"], r["k"], r["n"]) for r in g] == [
        (0, 2, 4, 40), (8, 2, 12, 40), (16, 1, 6, 20)]
    assert g[1]["seed_mean"][0] == pytest.approx(0.3)  # (0.2 + 0.4) / 2
    assert [r["episodes"] for r in bc.curves(res)["archer"]] == [0]  # only the shared start
    out = bc.main(["--report", "--out", str(tmp_path), "--threshold", "0.25"])
    printed = capsys.readouterr().out
    assert "| grpo | 1 | 16 | 20 | 0.300 |" in printed  # the furthest point, one seed so far
    # >= 0.25: the mean curve at 8 (0.3); seed 0 at 16 (0.2, then 0.3), seed 1 at 8 (0.4)
    assert "| 8; 16, 8 |" in printed
    assert "| archer |" not in printed  # nothing past episode 0 yet
    assert (tmp_path / "credit.png").stat().st_size > 1000 and out["runs"] == res["runs"]
    for f in tmp_path.glob("*-s*/bench_run.json"):  # earlier still: no evaluation after start
        f.unlink()
    assert bc.main(["--report", "--out", str(tmp_path)])["runs"] == []
    assert "sizing: no run has finished an evaluation yet" in capsys.readouterr().out


def _fake_child(out: Path, fail: set[str], calls: list[str], start_k: int = 1):
    def run(cmd, *a, **kw):
        job = cmd[cmd.index("--only") + 1]
        calls.append(job)
        if job in fail:
            return subprocess.CompletedProcess(cmd, 3)
        if job == "start":
            bc._write(bc.run_file(out, job), {"k": start_k, "n": 4, "success": start_k / 4,
                                              "seconds": 0, "done": True})
        else:
            m, s = job.rsplit("-s", 1)
            bc._write(bc.run_file(out, job), {"method": m, "seed": int(s), "done": True,
                                              "evals": [{"episodes": 8, "k": 2, "n": 4}]})
        return subprocess.CompletedProcess(cmd, 0)
    return run


def test_jobs_run_in_child_processes_resume_and_refuse_other_plans(tmp_path, monkeypatch):
    out = tmp_path / "b"
    argv = ["--model", str(tmp_path), "--episodes", "8", "--eval-every", "8", "--eval-tasks",
            "4", "--tasks-per-step", "2", "--group", "4", "--seeds", "0", "1", "--methods",
            "grpo", "tree-fork", "--out", str(out)]
    calls: list[str] = []
    monkeypatch.setattr(bc.subprocess, "run", _fake_child(out, {"tree-fork-s1"}, calls))
    with pytest.raises(SystemExit, match="tree-fork-s1"):  # the others still ran
        bc.main(argv)
    assert calls == ["start", "grpo-s0", "tree-fork-s0", "grpo-s1", "tree-fork-s1"]
    assert json.loads((out / "failed.json").read_text()) == {"tree-fork-s1": 3}
    assert len(json.loads((out / "results.json").read_text())["runs"]) == 3
    calls.clear()
    monkeypatch.setattr(bc.subprocess, "run", _fake_child(out, set(), calls))
    res = bc.main(argv)  # the same command again: only the failed job reruns
    assert calls == ["tree-fork-s1"] and not (out / "failed.json").exists()
    assert len(res["runs"]) == 4 and (out / "credit.png").exists()
    with pytest.raises(SystemExit):  # another budget in the same folder is refused
        bc.main([*argv[:3], "16", *argv[4:]])


def test_a_start_model_outside_the_window_stops_before_any_run(tmp_path, monkeypatch):
    argv = ["--model", str(tmp_path), "--episodes", "8", "--eval-every", "8", "--tasks-per-step",
            "2", "--group", "4", "--seeds", "0", "--methods", "grpo"]
    calls: list[str] = []
    monkeypatch.setattr(bc.subprocess, "run", _fake_child(tmp_path / "a", set(), calls, 0))
    with pytest.raises(SystemExit, match=r"0/4 = 0.000 is outside --start-window \[0.15, 0.6\]"):
        bc.main([*argv, "--out", str(tmp_path / "a")])
    assert calls == ["start"]
    calls.clear()  # 3/4 = 0.75 passes a window of [0.5, 0.8]; the run follows
    monkeypatch.setattr(bc.subprocess, "run", _fake_child(tmp_path / "b", set(), calls, 3))
    bc.main([*argv, "--out", str(tmp_path / "b"), "--start-window", "0.5", "0.8"])
    assert calls == ["start", "grpo-s0"]


@pytest.mark.slow
def test_smoke_run_every_method(tmp_path, tiny_model_dir):
    out = tmp_path / "bench"
    res = bc.main([
        "--model", str(tiny_model_dir), "--episodes", "8", "--eval-every", "4",
        "--tasks-per-step", "2", "--group", "2", "--eval-tasks", "3", "--seeds", "0", "1",
        "--lr", "1e-3", "--out", str(out), "--in-process", "--start-window", "0", "1",
        "--override", "rollout.max_turns=2",
        "rollout.max_tokens_per_turn=6", "learner.autocast=fp32",
        "algorithm.archer.critic_updates=2", "algorithm.archer.batch_size=4",
        "algorithm.archer.critic_max_tokens=128"])
    assert len(res["runs"]) == 2 * len(bc.METHODS)
    for r in res["runs"]:
        assert r["episodes"] == 8 and r["steps"] == 2 and r["done"]
        assert [e["episodes"] for e in r["evals"]] == [4, 8]
        assert all(e["n"] == 3 for e in r["evals"])
    archer = [r for r in res["runs"] if r["method"] == "archer"]
    # 2 steps x 2 updates x 4 samples over the turns of 8 episodes (1-2 turns each)
    for r in archer:
        assert r["critic_samples"] == 16 and 8 <= r["turns_added"] <= 16
        assert r["reuse_ratio"] == pytest.approx(16 / r["turns_added"])
    for r in res["runs"]:  # tree methods: 1 root + 1 branch slot per task, so 8 episodes too
        if r["method"].startswith("tree-"):
            assert r["branch_episodes"] + r["fill_episodes"] == 4
        else:
            assert r["branch_episodes"] == r["fill_episodes"] == 0
    assert json.loads((out / "results.json").read_text())["runs"] == res["runs"]
    assert (out / "credit.png").exists()


@pytest.mark.slow
def test_child_processes_for_real(tmp_path, tiny_model_dir):
    """The default path: each job in a fresh `bench_credit.py --only <job>` process."""
    out = tmp_path / "bench"
    argv = ["--model", str(tiny_model_dir), "--episodes", "4", "--eval-every", "4",
            "--tasks-per-step", "2", "--group", "2", "--eval-tasks", "2", "--seeds", "0",
            "--methods", "grpo", "tree-fork", "--lr", "1e-3", "--out", str(out),
            "--start-window", "0", "1", "--override",
            "rollout.max_turns=2", "rollout.max_tokens_per_turn=6", "learner.autocast=fp32"]
    res = bc.main(argv)
    assert [(r["method"], r["episodes"], r["done"]) for r in res["runs"]] == [
        ("grpo", 4, True), ("tree-fork", 4, True)]
    assert res["start"]["n"] == 2 and (out / "credit.png").exists()
    assert json.loads((out / "plan.json").read_text())["jobs"] == ["start", "grpo-s0",
                                                                  "tree-fork-s0"]
