"""End to end with the real embedded SmolLM2: SFT, then 2 RL steps, then eval of the checkpoint.

Small batches and short generations (about a minute on 2 CPU cores).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rl.cli import main

pytestmark = pytest.mark.slow

SMALL = [  # engine=hf: the default engine=auto would start vLLM where it is installed
    "engine=hf", "trainer.wandb=disabled", "trainer.num_threads=2", "tasks.eval_size=2",
    "rollout.max_tokens_per_turn=40", "rollout.max_turns=2",
]


def _weights(model_dir: Path) -> dict[str, torch.Tensor]:
    return load_file(str(next(model_dir.glob("*.safetensors"))))


def test_sft_then_two_rl_steps_then_eval(tmp_path, capsys):
    sft_dir, rl_dir = tmp_path / "sft", tmp_path / "rl"
    main(["sft", f"trainer.run_dir={sft_dir}", "sft.num_examples=16", "sft.epochs=2",
          "sft.lr=1e-4", *SMALL])
    (sft_ckpt,) = sorted((sft_dir / "checkpoints").iterdir())
    sft_model = sft_ckpt / "model"
    assert (sft_model / "config.json").exists()

    # RL from the SFT folder, loaded through the plain from_pretrained(path) route. REINFORCE on
    # outcome + format reward: any well-formed episode gives a non-zero gradient.
    main(["train", f"trainer.run_dir={rl_dir}", f"model.name={sft_model}", "sft.enabled=false",
          "eval.compare_stages=false", "trainer.steps=2", "trainer.tasks_per_step=2",
          "algorithm.group_size=2", "algorithm.advantage=reinforce", "learner.lr=1e-4",
          "algorithm.drop_uniform_groups=false",
          "++algorithm.reward_weights={outcome: 1.0, format: 1.0}", *SMALL])
    rows = [json.loads(x) for x in (rl_dir / "metrics.jsonl").read_text().splitlines()]
    rl_rows = [r for r in rows if r.get("stage") == "rl"]
    assert [r["step"] for r in rl_rows] == [0, 1]
    for key in ("reward/mean", "actor/ratio_mean", "grad_norm", "perf/rollout_tokens_per_s"):
        assert all(key in r for r in rl_rows)
    assert (rl_dir / "config.yaml").exists() and (rl_dir / "samples.txt").stat().st_size > 0
    assert (rl_dir / "progress.png").exists()
    ckpt = rl_dir / "checkpoints" / "step_000002"
    assert (ckpt / "manifest.json").exists() and (ckpt / "state.pt").exists()

    before, after = _weights(sft_model), _weights(ckpt / "model")
    assert any(r["grad_norm"] > 0 for r in rl_rows), "no trajectory earned any reward"
    assert any(not torch.equal(before[k], after[k]) for k in before), "RL changed nothing"

    capsys.readouterr()
    main(["eval", "--checkpoint", str(ckpt), "--out", str(tmp_path / "eval"),
          f"model.name={sft_model}", *SMALL])
    out = capsys.readouterr().out
    assert "| success | " in out and "| tool_call_rate | " in out  # the harness's table
    assert (tmp_path / "eval" / "results.json").exists()
