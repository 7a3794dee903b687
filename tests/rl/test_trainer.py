"""The local driver (rl/trainer.py) end to end on a tiny random Llama: the best-checkpoint guard
(``eval.every``) saves and links its best, keeps it past ``keep_last``, evaluates it on the
held-out tasks for the stage table, gives the learner the last weights back, and a resume
restores the best."""

from __future__ import annotations

import json

import torch
from safetensors.torch import load_file

from rl import checkpoint as ckpt

# the best-checkpoint guard on every step, one checkpoint kept besides the best
GUARD = ("eval.every=1", "eval.guard_tasks=2", "trainer.keep_last=1")


def test_guard_keeps_links_and_reports_the_best(tmp_path, tiny_run, capsys):
    threads = torch.get_num_threads()
    try:
        t = tiny_run.trainer(tmp_path, *GUARD)
        held = {x.id for x in t.parts.eval_tasks}
        assert len(t.guard_tasks) == 2 and not held & {x.id for x in t.guard_tasks}
        results = t.fit()
    finally:
        torch.set_num_threads(threads)
    # a random model solves nothing: every guard score ties, so the best is step 0
    assert (t.state.best_step, t.state.best_guard) == (0, 0.0)
    root = tmp_path / "checkpoints"
    assert ckpt.best_target(root) == "step_000000"
    assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_000000", "step_000002"]
    assert list(results) == ["base", "grpo", "grpo best@step0"]
    assert "| grpo best@step0 | 2 |" in (tmp_path / "results.md").read_text()
    assert f"best checkpoint: {root / 'best'}" in capsys.readouterr().out
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["guard/best_step"]) for r in rows if "guard/success" in r] == [
        (0, 0.0), (1, 0.0), (2, 0.0)]
    assert any("eval_grpo_best/success" in r for r in rows)
    # the best weights were loaded for its evaluation only: the learner ends on the last policy
    last = load_file(str(root / "step_000002" / "model" / "model.safetensors"))
    first = load_file(str(root / "best" / "model" / "model.safetensors"))
    params = dict(t.learner.model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in last.items() if k in params)
    assert any(not torch.equal(first[k], v) for k, v in last.items()), "nothing trained"
    # a resume restores the guard's best with the rest of the run state
    r = tiny_run.trainer(tmp_path, *GUARD, "resume=true")
    r.resume()
    assert (r.state.step, r.state.best_step, r.state.best_guard) == (2, 0, 0.0)
