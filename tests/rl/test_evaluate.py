"""The eval harness: intervals against hand-computed values, the metrics of scripted episodes on
the real math env, pass@k, and the eval folder (results.json, trajectories.jsonl, report.html)."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from types import SimpleNamespace

import pytest

from rl.evaluate import (
    EvalResult,
    Interval,
    evaluate_tasks,
    pass_at_k,
    summarize,
    t_interval,
    wilson,
    write_eval_folder,
)
from rl.rollout.engines.base import GenerationOutput, GenerationRequest, SamplingParams
from rl.types import Task, ToolCall, Trajectory, Turn


def test_wilson_matches_the_hand_formula_and_known_values():
    iv = wilson(3, 10)
    z = 1.959963984540054
    p, n = 0.3, 10
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    assert iv.value == 0.3 and iv.n == 10 and iv.method == "wilson"
    assert iv.low == pytest.approx(centre - half, abs=1e-9)
    assert iv.high == pytest.approx(centre + half, abs=1e-9)
    assert (round(iv.low, 4), round(iv.high, 4)) == (0.1078, 0.6032)
    zero = wilson(0, 4)  # never 0-width at the boundary, unlike the normal approximation
    assert zero.low == 0.0 and zero.high == pytest.approx(0.4899, abs=1e-4)
    with pytest.raises(ValueError, match="successes=5"):
        wilson(5, 4)


def test_t_interval_matches_hand_computation():
    iv = t_interval([1.0, 2.0, 3.0, 4.0])
    sd = math.sqrt(((1.5**2) * 2 + (0.5**2) * 2) / 3)  # 1.2910
    half = 3.182446305284263 * sd / 2  # t_{0.975, 3} * sd / sqrt(4)
    assert iv.value == 2.5
    assert (iv.low, iv.high) == (pytest.approx(2.5 - half), pytest.approx(2.5 + half))
    one = t_interval([0.7])
    assert one.value == 0.7 and math.isnan(one.low)


@pytest.mark.parametrize("n,c,k,want", [(4, 1, 2, 0.5), (5, 0, 1, 0.0), (3, 2, 2, 1.0),
                                        (4, 2, 1, 0.5), (10, 3, 5, 1 - 21 / 252)])
def test_pass_at_k_unbiased_estimator(n, c, k, want):
    assert pass_at_k(n, c, k) == pytest.approx(want)


def _traj(tid: str, reward: float, calls: list[ToolCall], truncated: bool = False) -> Trajectory:
    t = Trajectory(task=Task(id=tid, prompt="p"), token_ids=[1, 2, 3], loss_mask=[0, 1, 1],
                   logprobs=[0.0, -0.1, -0.2], prompt_len=1, truncated=truncated)
    t.turns = [Turn(1, 3, "x", "stop", tool_calls=calls)]
    t.outcome_reward, t.reward_terms = reward, {"outcome": reward}
    t.info["success"] = reward >= 1.0  # the env's verdict (rewards.outcome.success reads it)
    return t


def test_summarize_counts_parse_and_call_errors_by_kind():
    trajs = [
        _traj("a", 1.0, [ToolCall("calculator", {"expression": "1+1"})]),
        _traj("b", 0.0, [ToolCall("", {}, error="invalid JSON in tool call: Expecting value"),
                         ToolCall("calculator", {}, error="calculator timed out after 1 s")]),
        _traj("c", 0.0, [ToolCall("search", {}, error="unknown tool 'search'; available: []"),
                         ToolCall("", {}, error="unclosed <tool_call> tag")], truncated=True),
        _traj("d", 1.0, []),
    ]
    res = summarize(trajs)
    m = res.metrics
    assert m["success"].value == 0.5 and m["success"].method == "wilson"
    assert m["tool_call_rate"].value == 0.25
    assert m["tool_calls"].value == pytest.approx(5 / 4)
    assert m["parse_errors"].value == pytest.approx(2 / 4)
    assert m["truncated"].value == 0.25
    assert m["reward/outcome"].value == 0.5
    assert res.parse_errors == {"json": 1, "tags": 1}
    assert res.call_errors == {"calculator": {"calls": 2, "errors": 1, "timeout": 1},
                               "search": {"calls": 1, "errors": 1, "unknown_tool": 1}}
    table = res.table()
    assert "| success | 0.500 |" in table and "| search | 1 | 1 | unknown_tool=1 |" in table


def test_summarize_error_recovery_counts_only_episodes_that_acted_after_an_error():
    bad = ToolCall("calculator", {}, error="calculator: invalid expression")
    good = ToolCall("calculator", {"expression": "1+1"})

    def two_turns(tid: str, reward: float, first: list[ToolCall]) -> Trajectory:
        t = _traj(tid, reward, first)
        t.turns.append(Turn(3, 3, "<answer>2</answer>", "stop"))
        return t

    trajs = [two_turns("a", 1.0, [bad]),  # error, then acted and solved: recovered
             two_turns("b", 0.0, [bad]),  # error, then acted and failed
             _traj("c", 0.0, [bad]),  # the error was the last turn: never acted after it
             two_turns("d", 1.0, [good])]  # no error
    m = summarize(trajs).metrics
    assert (m["error_seen"].value, m["error_seen"].n) == (0.5, 4)
    rec = m["error_recovery"]
    assert (rec.value, rec.n, rec.method) == (0.5, 2, "wilson")
    assert (rec.low, rec.high) == (wilson(1, 2).low, wilson(1, 2).high)
    assert "error_recovery" not in summarize([trajs[2], trajs[3]]).metrics  # nobody acted after one


def test_summarize_several_samples_per_task_clusters_by_task_and_gives_pass_at_k():
    # task a: 2 of 2 solved, task b: 0 of 2, task c: 1 of 2
    trajs = [_traj(t, r, []) for t, r in
             [("a", 1.0), ("a", 1.0), ("b", 0.0), ("b", 0.0), ("c", 1.0), ("c", 0.0)]]
    res = summarize(trajs, n_per_task=2, k_values=[1, 2])
    m = res.metrics
    assert m["success"].method == "t over tasks" and m["success"].n == 3
    assert m["success"].value == pytest.approx(0.5)
    assert m["pass@1"].value == pytest.approx((1 + 0 + 0.5) / 3)
    assert m["pass@2"].value == pytest.approx(2 / 3) and m["pass@2"].method == "wilson"
    assert m["pass@2"].n == 3


class ScriptedEngine:
    """Plays a fixed list of actions per task (found by its prompt in the request)."""

    def __init__(self, tokenizer, scripts: dict[str, list[str]]):
        self.tok, self.scripts = tokenizer, scripts

    def generate(self, requests: Sequence[GenerationRequest], sampling: SamplingParams):
        outs = []
        for r in requests:
            text = self.tok.decode(r.prompt_ids)
            key = next(k for k in self.scripts if k in text)
            turn = text.count("<|im_start|>assistant") - 1
            ids = self.tok.encode(self.scripts[key][turn], add_special_tokens=False)
            ids.append(self.tok.eos_token_id)
            outs.append(GenerationOutput(ids, [-0.5] * len(ids), "stop"))
        return outs

    def update_weights(self, named_tensors):
        return None


SCRIPTS = {
    "Compute 2+3.": ['<tool_call>{"name": "calculator", "arguments": {"expression": "2+3"}}'
                     '</tool_call>', "<answer>5</answer>"],
    "Compute 7*6.": ['<tool_call>{"name": "calculator", "arguments": {"expression": "7*6"}}'
                     '</tool_call>', "<answer>42</answer>"],
    "Compute 9-4.": ['<tool_call>{"name": "calculator", "arguments": {"expression": 9-4}'
                     '</tool_call>', "<answer>5</answer>"],  # invalid JSON, right answer
    "Compute 8+8.": ["<answer>15</answer>"],  # no tool, wrong
}


@pytest.fixture()
def math_eval(tokenizer):
    import envs.tasks  # noqa: F401  (registers the envs)
    from envs.base import make_env
    from rl.config import Config

    cfg = Config()
    cfg.env.name, cfg.env.format = "math", "hermes-prompt"
    parts = SimpleNamespace(tokenizer=tokenizer, native_tools=False,
                            env_factory=lambda: make_env("math", tool_format="hermes-prompt"))
    answers = {"Compute 2+3.": 5, "Compute 7*6.": 42, "Compute 9-4.": 5, "Compute 8+8.": 16}
    tasks = [Task(id=f"t{i}", prompt=p, answer=a) for i, (p, a) in enumerate(answers.items())]
    return cfg, parts, ScriptedEngine(tokenizer, SCRIPTS), tasks


def test_evaluate_tasks_on_the_math_env(math_eval):
    cfg, parts, engine, tasks = math_eval
    res = evaluate_tasks(cfg, parts, engine, tasks, n_samples=1, seed=3)
    m = res.metrics
    assert len(res.trajectories) == 4
    assert m["success"].value == 0.75  # 2+3, 7*6 and 9-4 (answer right despite the bad call)
    assert m["tool_call_rate"].value == 0.5  # only two episodes made a successful call
    assert m["parse_errors"].value == 0.25 and res.parse_errors == {"json": 1}
    assert res.call_errors == {"calculator": {"calls": 2, "errors": 0}}
    assert m["turns"].value == pytest.approx((2 + 2 + 2 + 1) / 4)
    assert m["success"].low < 0.75 < m["success"].high
    assert res.settings["seeds"] == [3] and res.settings["env"] == "math"
    assert res.summary()["success"] == 0.75
    flat = res.summary(intervals=True)
    assert flat["success_low"] == m["success"].low and flat["success_high"] == m["success"].high
    assert {"success", "reward", "tool_call_rate", "tool_calls", "turns", "model_tokens",
            "tool_errors"} <= set(flat)  # every key of rl.build.evaluate's dict
    assert flat["tool_errors"] == 0.25  # the invalid-JSON call


def test_evaluate_tasks_with_samples_and_seeds_reports_pass_at_k(math_eval):
    cfg, parts, engine, tasks = math_eval
    res = evaluate_tasks(cfg, parts, engine, tasks, n_samples=2, seeds=[1, 2])
    assert len(res.trajectories) == 16  # 4 tasks x 2 samples x 2 seeds
    assert res.metrics["pass@4"].value == 0.75 and res.metrics["pass@1"].value == 0.75
    assert res.metrics["success"].method == "t over tasks"
    assert {t.info["eval_seed"] for t in res.trajectories} == {1, 2}
    with pytest.raises(ValueError, match="n_samples=0"):
        evaluate_tasks(cfg, parts, engine, tasks, n_samples=0)


def test_eval_folder_holds_every_trajectory(math_eval, tmp_path):
    from html.parser import HTMLParser

    cfg, parts, engine, tasks = math_eval
    res = evaluate_tasks(cfg, parts, engine, tasks)
    out = write_eval_folder(res, tmp_path / "ev", parts.tokenizer)
    data = json.loads((out / "results.json").read_text())
    assert data["metrics"]["success"]["value"] == 0.75
    assert data["metrics"]["success"]["method"] == "wilson"
    assert data["parse_errors"] == {"json": 1}
    lines = (out / "trajectories.jsonl").read_text().splitlines()
    assert [json.loads(x)["task_id"] for x in lines] == ["t0", "t1", "t2", "t3"]
    rec = json.loads(lines[0])
    model_text = "".join(s["text"] for s in rec["segments"] if s["loss"])
    assert '"calculator"' in model_text and "<answer>5</answer>" in model_text
    assert "Compute 2+3." not in model_text  # the prompt carries no loss

    class Episodes(HTMLParser):
        def __init__(self):
            super().__init__()
            self.eps: list[dict] = []

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "div" and "ep" in (a.get("class") or "").split():
                self.eps.append(a)

    p = Episodes()
    p.feed((out / "report.html").read_text())
    assert len(p.eps) == 4
    assert [e["data-success"] for e in p.eps] == ["1", "1", "1", "0"]


def test_eval_result_table_lists_every_metric():
    r = EvalResult({"success": Interval(0.5, 0.2, 0.8, 8, "wilson")}, {}, {})
    assert r.table().splitlines()[2] == "| success | 0.500 | [0.200, 0.800] | 8 | wilson |"


def test_turnrl_eval_cli_on_a_folder_and_a_checkpoint(tiny_model_dir, tmp_path, capsys):
    import torch
    from transformers import AutoModelForCausalLM

    from rl.cli import main

    common = ["--tasks", "3", "--engine", "hf", f"model.name={tiny_model_dir}",
              "rollout.max_tokens_per_turn=6",
              "rollout.max_turns=2", "trainer.num_threads=1", "trainer.wandb=disabled"]
    main(["eval", "--out", str(tmp_path / "base"), *common])
    out = capsys.readouterr().out
    assert "| success |" in out and "eval folder:" in out
    base = [json.loads(x) for x in (tmp_path / "base" / "trajectories.jsonl").open()]
    assert len(base) == 3 and (tmp_path / "base" / "report.html").exists()

    # a "checkpoint" whose weights differ: its episodes must be generated by those weights
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    model.save_pretrained(tmp_path / "weights")  # plain weights (no manifest to verify)
    main(["eval", "--out", str(tmp_path / "ck"), "--checkpoint", str(tmp_path / "weights"),
          *common])
    res = json.loads((tmp_path / "ck" / "results.json").read_text())
    assert res["settings"]["checkpoint"] == str(tmp_path / "weights")
    ck = [json.loads(x) for x in (tmp_path / "ck" / "trajectories.jsonl").open()]
    assert [r["turns"][0]["text"] for r in ck] != [r["turns"][0]["text"] for r in base]
    with pytest.raises(SystemExit, match="no such folder"):
        main(["eval", "--checkpoint", str(tmp_path / "missing"), *common])
