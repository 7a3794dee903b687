"""Tool-use health (rl/tooluse.py): error kinds, step metrics, the progress-bar fields and the
monitor's warnings; learning health (rl/health.py): its metrics (hand-computed), progress-bar
fields, the collapse warning, the health panels of progress.png and the per-step table of
report.html; the run logger's (rl/tracking.py) samples.jsonl and report.html."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rl.health import HealthMonitor, health_postfix, health_stats
from rl.report import render_report
from rl.tooluse import (
    ToolUseMonitor,
    call_error_kind,
    env_needs_tools,
    tool_postfix,
    tool_use_stats,
)
from rl.tracking import RunLogger
from rl.types import Task, ToolCall, Trajectory, Turn


def _traj(calls: list[ToolCall], info: dict | None = None) -> Trajectory:
    t = Trajectory(task=Task(id="t", prompt="p", answer=1), token_ids=[5, 6, 7],
                   loss_mask=[0, 1, 1], logprobs=[0.0, -0.1, -0.1], prompt_len=1)
    t.turns = [Turn(1, 3, "x", "stop", tool_calls=calls, info=info or {})]
    return t


OK = ToolCall("calculator", {"expression": "1+1"})


@pytest.mark.parametrize("error,name,kind", [
    (None, "calculator", None),
    ("invalid JSON in tool call: Expecting value", "", "json"),
    ('tool call must be a JSON object {"name": ...}', "", "schema"),
    ('tool call has no "name"', "", "schema"),
    ('"arguments" must be a JSON object', "f", "schema"),
    ("unclosed <tool_call> tag", "", "tags"),
    ("</tool_call> without <tool_call>", "", "tags"),
    ("unknown tool 'search'; available: ['calculator']", "search", "unknown_tool"),
    ("calculator timed out after 10 s", "calculator", "timeout"),
    ("not run: the turn also gave a final answer", "calculator", "not_run"),
    ("division by zero", "calculator", "tool_error"),
    ("something odd", "", "other_parse"),
])
def test_call_error_kind(error, name, kind):
    assert call_error_kind(ToolCall(name, {}, error=error)) == kind


def test_a_format_given_kind_wins():
    c = ToolCall("", {}, error="whatever")
    c.kind = "xml"  # type: ignore[attr-defined]
    assert call_error_kind(c) == "xml"


def test_tool_use_stats_per_episode():
    lenient = ToolCall("calculator", {"expression": "2"})
    lenient.lenient = True  # type: ignore[attr-defined]
    trajs = [
        _traj([OK, ToolCall("", {}, error="invalid JSON in tool call: x")]),
        _traj([lenient, ToolCall("calculator", {}, error="calculator timed out after 1 s")]),
        _traj([ToolCall("", {}, error="unclosed <tool_call> tag")]),
        _traj([], info={"lenient_calls": 2}),
    ]
    s = tool_use_stats(trajs)
    assert s["tools/call_rate"] == 0.5
    assert s["tools/calls"] == 5 / 4 and s["tools/ok_calls"] == 2 / 4
    assert s["tools/parse_errors"] == 2 / 4
    assert s["tools/parse_error/json"] == 1 / 4 and s["tools/parse_error/tags"] == 1 / 4
    assert s["tools/call_errors"] == 1 / 4 and s["tools/call_error/timeout"] == 1 / 4
    assert s["tools/lenient_calls"] == 3 / 4  # one tagged call + two counted by the env
    assert tool_postfix(s) == {"call": "0.50", "perr": "0.50", "lenient": "0.75"}


def test_monitor_warns_after_patience_steps_without_a_successful_call():
    mon = ToolUseMonitor(needs_tools=True, patience=2)
    no_call = [_traj([]), _traj([])]
    assert mon.observe(0, no_call) == []
    w = mon.observe(1, no_call)
    assert len(w) == 1 and "no successful tool call for 2 steps" in w[0]
    assert "wrote no tool call at all" in w[0]
    assert mon.observe(2, no_call) == []  # repeated every `patience` steps, not every step
    assert len(mon.observe(3, no_call)) == 1
    assert mon.observe(4, [_traj([OK])]) == [] and mon.no_call_steps == 0
    assert mon.observe(5, no_call) == []


def test_monitor_flags_mostly_unparsable_calls_and_ignores_tool_free_envs():
    bad = [_traj([ToolCall("", {}, error="invalid JSON in tool call: x"), OK])] * 2 + \
          [_traj([ToolCall("", {}, error="invalid JSON in tool call: y")])]
    w = ToolUseMonitor(needs_tools=True, patience=5).observe(7, bad)
    assert len(w) == 1 and "60% of tool calls could not be parsed (json=3)" in w[0]
    assert ToolUseMonitor(needs_tools=False, patience=1).observe(0, [_traj([])]) == []
    with pytest.raises(ValueError, match="patience"):
        ToolUseMonitor(True, patience=0)


def test_monitor_after_sft():
    mon = ToolUseMonitor(needs_tools=True)
    w = mon.after_sft([_traj([ToolCall("", {}, error="unclosed <tool_call> tag")])])
    assert len(w) == 1 and "after SFT, 0 of 1 episodes" in w[0] and "1.00 unparsable" in w[0]
    assert mon.after_sft([_traj([OK])]) == []


def test_env_needs_tools():
    assert env_needs_tools(lambda: SimpleNamespace(tools=[{"name": "f"}])) is True
    assert env_needs_tools(lambda: SimpleNamespace(tools=[])) is False
    assert env_needs_tools(lambda: SimpleNamespace(tools=[{}], needs_tools=False)) is False


def test_run_logger_samples_write_jsonl_and_report(tmp_path, tokenizer):
    t = _traj([OK])
    t.token_ids = tokenizer.encode("Q: 1+1?A: 2", add_special_tokens=False)
    n = len(t.token_ids)
    t.loss_mask, t.logprobs = [0] * 4 + [1] * (n - 4), [0.0] * n
    t.turns[0].start, t.turns[0].end = 4, n
    log = RunLogger(tmp_path / "run", {}, "disabled", "")
    log.samples(3, [t, t], tokenizer)
    log.samples(4, [t], tokenizer)
    log.close()
    rows = [json.loads(x) for x in (tmp_path / "run" / "samples.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [3, 3, 4]
    assert "".join(s["text"] for s in rows[0]["segments"]) == tokenizer.decode(t.token_ids)
    page = (tmp_path / "run" / "report.html").read_text()
    assert page.count('class="ep ') == 3


# -- learning health -------------------------------------------------------------------------------
def _episode(group: int, reward: float, logprobs: list[float], truncated: bool = False,
             calls: list[ToolCall] | None = None) -> Trajectory:
    """A prompt token then one model turn with the given sampler logprobs."""
    n = len(logprobs)
    t = Trajectory(task=Task(id=str(group), prompt="p"), token_ids=[1] * (n + 1),
                   loss_mask=[0] + [1] * n, logprobs=[0.0, *logprobs], prompt_len=1,
                   group_id=group, truncated=truncated)
    t.turns = [Turn(1, n + 1, "x", "stop", tool_calls=calls or [])]
    t.outcome_reward = reward
    return t


def test_health_stats_hand_computed():
    bad = ToolCall("", {}, error="invalid JSON in tool call: x")  # a parse error
    failed = ToolCall("calculator", {}, error="division by zero")  # ran and failed: not parsing
    trajs = [_episode(0, 1.0, [-1.0, -0.5]), _episode(0, 0.0, [-2.0], truncated=True),
             _episode(1, 1.0, [-0.5], calls=[bad, failed]), _episode(1, 1.0, [0.0])]
    trajs[3].turns.append(Turn(2, 2, "y", "stop"))  # 5 model turns in all
    s = health_stats(trajs)
    assert s["health/neg_logprob"] == pytest.approx((1 + 0.5 + 2 + 0.5 + 0) / 5)
    assert s["health/groups"] == 2 and s["health/informative_groups"] == 1  # [1,0] and [1,1]
    assert s["health/group_reward_std"] == pytest.approx((0.5 + 0.0) / 2)
    assert s["health/truncated"] == 0.25
    assert s["health/parse_error_rate"] == pytest.approx(1 / 5)
    # no episodes: counts are zero, the means that would divide by nothing are absent
    assert health_stats([]) == {"health/groups": 0.0, "health/informative_groups": 0.0,
                                "health/truncated": 0.0, "health/parse_error_rate": 0.0}


def test_metrics_row_carries_the_health_keys():
    import torch

    from rl.config import Config
    from rl.step import StepCore

    trajs = [_episode(0, 1.0, [-1.0]), _episode(0, 0.0, [-3.0])]
    row = StepCore(Config(), None, 0, None).metrics_row(
        trajs, torch.tensor([1.0, 0.0]), {"grad_norm": 0.5}, {"rollout": 1.0})
    assert row["health/neg_logprob"] == pytest.approx(2.0)
    assert (row["health/informative_groups"], row["health/group_reward_std"]) == (1.0, 0.5)
    assert row["grad_norm"] == 0.5  # the learner's health keys pass through


def test_health_postfix_shows_only_what_the_row_has():
    assert health_postfix({}) == {}
    assert health_postfix({"health/neg_logprob": 0.8123, "health/informative_groups": 3.0,
                           "health/groups": 8.0}) == {"H": "0.81", "inf": "3/8"}
    assert health_postfix({"health/kl_to_start": 0.00123, "health/neg_logprob": "nan"}) == {
        "kl": "0.0012"}


def _row(std: float, informative: float, entropy: float, grad: float, success: float = 0.5,
         groups: float = 8.0) -> dict:
    return {"reward/mean": 0.5, "reward/success": success, "health/group_reward_std": std,
            "health/informative_groups": informative, "health/groups": groups,
            "health/neg_logprob": entropy, "grad_norm": grad}


def _warnings(mon: HealthMonitor, rows: list[dict]) -> list[tuple[int, str]]:
    return [(step, w) for step, r in enumerate(rows) for w in mon.observe(step, r)]


def test_health_monitor_warns_once_on_an_echo_trap():
    healthy = [_row(0.40, 7, 0.90, 1.0), _row(0.45, 8, 0.85, 1.2), _row(0.42, 7, 0.88, 0.9)]
    collapse = [_row(0.30, 6, 0.70, 1.1),
                _row(0.10, 2, 0.40, 1.0),  # spread below 30% of ~0.42: 1 step
                _row(0.05, 1, 0.20, 1.3),  # 2 steps -> warn
                _row(0.00, 0, 0.10, 30.0),  # entropy and grad norm collapse too: no repeat
                _row(0.00, 0, 0.05, 50.0)]
    mon = HealthMonitor()
    w = _warnings(mon, healthy + collapse)
    assert len(w) == 1 and w[0][0] == 5
    line = w[0][1]
    assert line.startswith("[turnrl] WARNING: step 5:")
    assert "within-group reward std 0.050 < 30% of its first-steps 0.423 for 2 steps" in line
    assert "informative groups 1/8 (first steps 92%)" in line
    for knob in ("learner.lr", "algorithm.loss.kl_coef", "rollout.temperature",
                 "trainer.tasks_per_step", "eval.every"):
        assert knob in line
    # a resumed run keeps the promise: restored state never warns again
    again = HealthMonitor()
    again.load_state_dict(mon.state_dict())
    assert again.observe(9, _row(0.0, 0, 0.01, 500.0)) == []


def test_health_monitor_entropy_and_grad_spike_each_warn():
    mon = HealthMonitor()
    rows = [{"health/neg_logprob": h} for h in (1.0, 1.1, 0.9, 0.5, 0.25, 0.2, 0.1)]
    w = _warnings(mon, rows)
    assert len(w) == 1 and w[0][0] == 5  # 0.25 and 0.2 < 0.3 x 1.0: two steps
    assert "entropy proxy (-logprob/token) 0.200 < 30% of its RL-start 1.000" in w[0][1]
    mon = HealthMonitor()
    w = _warnings(mon, [{"grad_norm": g} for g in (1.0, 2.0, 1.5, 7.0, 1.0, 11.0, 40.0)])
    assert len(w) == 1 and w[0][0] == 5  # 7 <= 5 x 1.5; 11 > 5 x median(1, 2, 1.5, 7, 1) = 1.5
    assert "grad norm 11 > 5x the running median 1.5" in w[0][1]


def test_health_monitor_entropy_collapse_with_rising_success_is_sharpening():
    """Entropy under a third of its start while the train success rises (make train's math
    runs that gained most did this) does not warn; the same fall with flat success does."""
    ent = (0.4, 0.45, 0.4, 0.3, 0.2, 0.1, 0.08, 0.05)
    rising = [{"health/neg_logprob": h, "reward/success": s}
              for h, s in zip(ent, (0.2, 0.25, 0.2, 0.3, 0.35, 0.4, 0.45, 0.45))]
    assert _warnings(HealthMonitor(), rising) == []
    flat = [{"health/neg_logprob": h, "reward/success": 0.25} for h in ent]
    w = _warnings(HealthMonitor(), flat)
    assert len(w) == 1 and w[0][0] == 6 and "train success not rising" in w[0][1]


def test_health_monitor_stays_quiet_on_healthy_and_saturating_runs():
    import random

    rng = random.Random(0)
    healthy = [_row(0.4 + rng.uniform(-0.15, 0.15), rng.choice([5, 6, 7, 8]),
                    0.9 * (1 - step / 200) + rng.uniform(-0.05, 0.05), rng.uniform(0.5, 2.0))
               for step in range(100)]  # entropy slowly down by half, noisy grad norms
    assert _warnings(HealthMonitor(), healthy) == []
    # groups go uniform because the tasks are solved: saturation, not collapse
    solved = [_row(0.4, 7, 0.9, 1.0)] * 3 + [_row(0.0, 0, 0.8, 1.0, success=1.0)] * 5
    assert _warnings(HealthMonitor(), solved) == []
    # a model that never succeeds at the start has no spread to lose
    assert _warnings(HealthMonitor(), [_row(0.0, 0, 0.9, 1.0, success=0.0)] * 8) == []


def test_health_monitor_takes_missing_and_odd_values():
    mon = HealthMonitor()
    rows = [{}, {"reward/mean": 0.1}, {"grad_norm": "nan", "health/neg_logprob": "inf"},
            {"health/group_reward_std": 0.3}, {"health/groups": 0.0,
                                              "health/informative_groups": 0.0,
                                              "health/group_reward_std": 0.0},
            {"grad_norm": None, "health/neg_logprob": True}] * 4
    assert _warnings(mon, rows) == []
    assert mon.state_dict()["grad_norms"] == [] and mon.state_dict()["first"]["entropy"] == []
    with pytest.raises(ValueError, match="patience"):
        HealthMonitor(patience=0)


def test_progress_png_gets_health_panels_only_for_present_keys(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from rl.tracking import RunLogger as Logger

    made: list[int] = []
    subplots = plt.subplots

    def spy(nrows=1, ncols=1, **kw):
        made.append(nrows)
        return subplots(nrows, ncols, **kw)

    monkeypatch.setattr(plt, "subplots", spy)
    old = Logger(tmp_path / "old", {}, "disabled", "")  # a row from before the health keys
    old.log(0, {"reward/mean": 0.5, "episode/model_tokens": 10.0, "episode/tool_calls": 1.0})
    assert old.plot() is not None and made == [1]
    log = Logger(tmp_path / "new", {}, "disabled", "")
    for step in range(3):  # only part of the learner's keys, one of them non-finite once
        log.log(step, {"reward/mean": 0.5, "health/neg_logprob": 0.9 - step / 10,
                       "health/informative_groups": 3.0, "health/groups": 4.0,
                       "health/group_reward_std": 0.3, "grad_norm": float("nan") if step
                       else 1.0, "health/truncated": 0.0})
    assert log.plot() == tmp_path / "new" / "progress.png" and made == [1, 2]
    assert (tmp_path / "new" / "progress.png").stat().st_size > 0
    old.close()
    log.close()


def test_report_has_a_per_step_health_table():
    rows = [{"step": -1, "stage": "sft", "sft/nll": 1.0},
            {"step": 0, "reward/mean": 0.25, "reward/success": 0.5, "tools/call_rate": 1.0,
             "health/neg_logprob": 0.8, "health/kl_to_start": "nan"},
            {"step": 1, "reward/mean": 0.5, "reward/success": 0.75, "health/kl_to_start": 0.002}]
    page = render_report([], step_rows=rows)
    assert "per-step learning health (2 steps)" in page
    assert "<th>health/neg_logprob</th>" in page and "<th>health/kl_to_start</th>" in page
    assert "health/kl_update" not in page  # no row has it
    assert "<tr><td>1</td><td>0.5</td><td>0.75</td><td>-</td><td>-</td><td>0.002</td></tr>" in page
    assert "per-step" not in render_report([])
