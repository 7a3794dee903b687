"""Tool-use health: error kinds, step metrics, the progress-bar fields and the monitor's warnings;
the run logger's samples.jsonl and report.html."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from rl.tracking import (
    RunLogger,
    ToolUseMonitor,
    call_error_kind,
    env_needs_tools,
    tool_postfix,
    tool_use_stats,
)
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
