"""`turnrl train env=<search|sql|code>` end to end, small: a cold start on 4 demonstrations, then 2
RL steps of 2 tasks x 2 samples with the embedded SmolLM2 (~6 min each on the loaded 2-core
box; `make test-heavy`). One test for the three envs, whose runs differ only by name."""

from __future__ import annotations

import json

import pytest


@pytest.mark.slow
@pytest.mark.heavy
@pytest.mark.parametrize("env", ["search", "sql", "code"])
def test_two_training_steps_with_the_default_model(tmp_path, env: str) -> None:
    from rl.cli import main

    run = tmp_path / "run"
    main(["train", f"env={env}", f"trainer.run_dir={run}", "engine=hf", "trainer.wandb=disabled",
          "trainer.num_threads=1", "trainer.steps=2", "trainer.tasks_per_step=2",
          "algorithm.group_size=2", "algorithm.advantage=reinforce",
          "algorithm.drop_uniform_groups=false", "sft.num_examples=4", "sft.batch_size=4",
          "eval.compare_stages=false", "tasks.train_size=16", "tasks.eval_size=2",
          "rollout.max_turns=3", "rollout.max_tokens_per_turn=48",
          "rollout.max_total_tokens=1024"])
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    rl_rows = [r for r in rows if r.get("stage") == "rl"]
    assert [r["step"] for r in rl_rows] == [0, 1]
    assert all("reward/env_success" in r and "reward/mean" in r for r in rl_rows)
    assert any(r.get("stage") == "sft" for r in rows)
    assert (run / "checkpoints" / "step_000002" / "manifest.json").exists()
    assert f"name: {env}" in (run / "config.yaml").read_text()
