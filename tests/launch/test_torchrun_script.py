"""launch/torchrun.sh as a user runs it (heavy, `make test-launch`): 2 DeepSpeed ZeRO-2 ranks on
CPU train the tiny model one step to a checkpoint holding both ranks' states. The script
itself chooses DS_ACCELERATOR=cpu here (no CUDA)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from launch_cluster import MARKER, check_run, end_marked, marked_pids

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.heavy
def test_torchrun_script_trains_two_ranks_to_a_checkpoint(tiny_model_dir, tmp_path):
    run = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k != "DS_ACCELERATOR"}
    env.update({MARKER: str(tmp_path), "OMP_NUM_THREADS": "1"})
    cmd = ["bash", "launch/torchrun.sh", "2", "learner=deepspeed_zero2",
           f"model.name={tiny_model_dir}", "engine=hf", "sft.enabled=false",
           "eval.compare_stages=false", "trainer.wandb=disabled", "trainer.steps=1",
           "trainer.save_every=1", "trainer.tasks_per_step=2", "algorithm.group_size=2",
           "algorithm.drop_uniform_groups=false", "rollout.max_turns=1",
           "rollout.max_tokens_per_turn=6", "learner.autocast=fp32",
           "learner.deepspeed.bf16=off", f"trainer.run_dir={run}"]
    t0 = time.monotonic()
    try:
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    finally:
        left = marked_pids(str(tmp_path))
        end_marked(str(tmp_path))
    print(f"\n[torchrun.sh] 2 ranks, 1 step: {time.monotonic() - t0:.0f} s")
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert left == []  # torchrun ended both ranks
    [row] = check_run(run, 1)
    assert row["update/trained_seqs"] == 4.0  # both ranks' groups: 2 tasks x 2 samples
    ckpt = run / "checkpoints" / "step_000001"
    assert json.loads((ckpt / "manifest.json").read_text())["world_size"] == 2
    assert (ckpt / "rank0.pt").exists() and (ckpt / "rank1.pt").exists()
    assert res.stdout.count("[turnrl] done") == 1  # rank 0 alone prints
