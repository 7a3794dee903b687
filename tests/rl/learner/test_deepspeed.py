"""DeepSpeed learner: config, backend choice, and real 2-process ZeRO-2 / ZeRO-3 training of the
tiny model on CPU (gloo): weights change, stay finite, none lost or zeroed, identical on every
rank, equal to single-process torch training; save/load and per-rank state round-trip."""

from __future__ import annotations

import math

import pytest
import torch
from ds_worker import ROWS, make_batch

from rl.algos import AGGREGATIONS
from rl.learner import dist, make_learner
from rl.learner.deepspeed import ds_config, resolve_bf16
from rl.learner.precision import resolve_autocast
from rl.learner.torch import DeepSpeedConfig, LearnerConfig, LossConfig, TorchLearner

HERE = "cuda" if torch.cuda.is_available() else "cpu"  # where a config without a device computes


def test_ds_config_from_learner_config():
    cfg = LearnerConfig(micro_batch_size=3, grad_clip=0.5, deepspeed=DeepSpeedConfig(
        zero_stage=3, offload_optimizer=True, offload_params=True,
        overrides={"zero_optimization": {"reduce_bucket_size": 1000}, "steps_per_print": 7}))
    c = ds_config(cfg)
    assert c["train_micro_batch_size_per_gpu"] == 3 and c["gradient_clipping"] == 0.5
    assert c["managed_gradient_accumulation"] is False and c["gradient_accumulation_steps"] == 1
    z = c["zero_optimization"]
    assert z["stage"] == 3 and z["offload_optimizer"]["device"] == "cpu"
    assert z["offload_param"]["device"] == "cpu"
    assert z["reduce_bucket_size"] == 1000 and z["contiguous_gradients"] is True  # deep merge
    assert c["steps_per_print"] == 7
    assert c["bf16"]["enabled"] is (resolve_autocast("auto", HERE)[0] == "bf16")


def test_bad_deepspeed_options_are_clear_errors():
    with pytest.raises(ValueError, match="zero_stage"):
        ds_config(LearnerConfig(deepspeed=DeepSpeedConfig(zero_stage=4)))
    with pytest.raises(ValueError, match="offload_params needs zero_stage=3"):
        ds_config(LearnerConfig(deepspeed=DeepSpeedConfig(zero_stage=2, offload_params=True)))
    with pytest.raises(ValueError, match="bf16"):
        resolve_bf16("yes")
    assert resolve_bf16("on") and not resolve_bf16("off")
    assert resolve_bf16("auto") is (resolve_autocast("auto", HERE)[0] == "bf16")


def test_make_learner_chooses_by_backend(tiny_model):
    assert isinstance(make_learner(tiny_model, LearnerConfig(backend="torch")), TorchLearner)
    with pytest.raises(KeyError, match="'deepspeed', 'torch'"):
        make_learner(tiny_model, LearnerConfig(backend="megatron"))


def test_shard_splits_contiguously_and_completely():
    items = list(range(7))
    parts = [dist.shard(items, r, 3) for r in range(3)]
    assert parts == [[0, 1, 2], [3, 4], [5, 6]]
    assert dist.shard(items, 0, 1) == items and dist.shard([], 1, 2) == []


def test_data_parallel_runs_refuse_what_would_silently_diverge(monkeypatch):
    from rl.config import Config

    monkeypatch.setenv("WORLD_SIZE", "2")
    cfg = Config()
    dist.check_data_parallel(cfg, multi=False)  # one process: anything goes
    with pytest.raises(SystemExit, match="learner=deepspeed_zero2"):
        dist.check_data_parallel(cfg, multi=True)  # torch learner: each rank its own model
    cfg.learner.backend = "deepspeed"
    dist.check_data_parallel(cfg, multi=True)
    cfg.trainer.tasks_per_step = 1
    with pytest.raises(SystemExit, match="tasks_per_step=1 < 2"):
        dist.check_data_parallel(cfg, multi=True)
    cfg.trainer.tasks_per_step = 8
    cfg.algorithm.credit = "archer"  # rank 0 assigns credit for every rank: allowed
    dist.check_data_parallel(cfg, multi=True)


# -- two processes ------------------------------------------------------------------------------
STEPS_IN_RUN = len(AGGREGATIONS.names()) + 1 + 3  # shard: every mode + SFT; train: 2 RL + 1 SFT


def _check_training(ranks: list[dict], lora: bool = False) -> None:
    r0, r1 = ranks
    before, after = r0["before"], r0["after"]
    assert set(after) == set(before) and len(after) > 0  # no parameter lost
    assert all(s[2] for s in after.values()), "non-finite weights"
    assert all(s[1] > 0 for s in after.values()), "a weight was zeroed"
    changed = {n for n in after if after[n][:2] != before[n][:2]}
    if lora:  # merged weights move only where an adapter sits
        assert changed == {n for n in after if n.endswith("proj.weight")}  # all 7 per layer
        assert after["model.embed_tokens.weight"] == before["model.embed_tokens.weight"]
    else:
        assert changed == set(after), f"unchanged: {set(after) - changed}"
    for key in ("before", "after", "moved", "reloaded", "moved_again"):
        assert r0[key] == r1[key], f"ranks differ in {key}"
    assert r0["optimizer_steps"] == r1["optimizer_steps"]
    for m in r0["metrics"]:
        assert math.isfinite(m["grad_norm"]) and m["grad_norm"] > 0
    # save_pretrained -> load_pretrained + state_dict -> load_state_dict restore exactly
    assert r0["reloaded"] == r0["after"]
    assert r0["moved_again"] == r0["moved"] and r0["moved"] != r0["after"]
    files = set(r0["saved_files"])
    assert ("adapter_model.safetensors" if lora else "model.safetensors") in files
    # a rank with an empty shard joins the update; both report the same global metrics
    assert r0["empty_shard_metrics"] == r1["empty_shard_metrics"]
    assert r0["empty_shard_metrics"]["grad_norm"] > 0


@pytest.mark.parametrize("stage", [2, 3])
def test_two_process_zero_training(ds_run, stage):
    ranks = ds_run("shard,train", stage)
    _check_training(ranks)
    assert ranks[0]["optimizer_steps"] == STEPS_IN_RUN


def test_zero3_lora_gradient_checkpointing_trains_merged_weights_and_saves_adapter(ds_run):
    """LoRA + gradient checkpointing under ZeRO-3: every adapter learns (its merged weight moves,
    gathered from the partitions), the rest stays, the adapter saves and reloads."""
    _check_training(ds_run("train", 3, lora=True, gc=True), lora=True)


def test_zero2_and_zero3_train_like_single_process_torch(ds_run, tiny_model_dir):
    """The same sequence of updates with TorchLearner on the full batch in one process ends at
    the same weights as 2-rank ZeRO-2 and ZeRO-3 (per-tensor sums, fp32)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    learner = TorchLearner(model, LearnerConfig(lr=1e-2, grad_clip=0.0, micro_batch_size=2,
                                                autocast="fp32"))
    full = list(range(len(ROWS)))
    learner.set_lr(0.0)
    for agg in AGGREGATIONS.names():
        learner.update(make_batch(full), LossConfig(agg=agg))
    learner.sft_update(make_batch(full))
    learner.set_lr(1e-2)
    for _ in range(2):
        learner.update(make_batch(full), LossConfig())
    learner.sft_update(make_batch(full))
    ref = {n: (float(p.sum()), float((p * p).sum())) for n, p in learner.named_weights()}
    for stage in (2, 3):
        got = ds_run("shard,train", stage)[0]["after"]
        for n, (s, sq) in ref.items():
            assert got[n][0] == pytest.approx(s, rel=1e-4, abs=1e-3), (stage, n)
            assert got[n][1] == pytest.approx(sq, rel=1e-4), (stage, n)


def test_torchrun_cli_train_zero2(tiny_model_dir, tmp_path):
    """The launch path users run: torchrun with 2 ranks, rl.cli train learner=deepspeed_zero2.
    3 tasks over 2 ranks (uneven shards), a cold-start SFT of 3 demonstrations (2 + 1 rows),
    uniform groups kept so the update really runs every step."""
    import json
    import os
    import subprocess
    import sys

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "rl.cli", "train", "learner=deepspeed_zero2", f"model.name={tiny_model_dir}",
           "engine=hf", "sft.enabled=true", "sft.num_examples=3", "sft.batch_size=3",
           "eval.compare_stages=false", "trainer.steps=2", "trainer.tasks_per_step=3",
           "algorithm.group_size=2", "algorithm.drop_uniform_groups=false",
           "rollout.max_tokens_per_turn=8", "rollout.max_turns=1", f"trainer.run_dir={run_dir}",
           "trainer.wandb=disabled"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    sft = [r for r in rows if r.get("stage") == "sft"]
    rl = [r for r in rows if r.get("stage") == "rl"]
    assert len(sft) == 1 and len(rl) == 2  # rank 0 alone writes the run's log
    assert all(r["update/trained_seqs"] == 6.0 for r in rl)  # both ranks' groups: 3 tasks x 2
    assert all(math.isfinite(r["grad_norm"]) for r in rl + sft)
    ckpt = run_dir / "checkpoints" / "step_000002"
    assert (ckpt / "rank0.pt").exists() and (ckpt / "rank1.pt").exists()
    assert (ckpt / "model" / "model.safetensors").exists()
    assert res.stdout.count("[turnrl] done") == 1


def test_torchrun_archer_zero2(tiny_model_dir, tmp_path):
    """algorithm.credit=archer under torchrun with 2 DeepSpeed ranks: rank 0 trains the critic
    on every rank's turns and sends each rank its rows' advantages; after the warm-up step both
    ranks' rows are trained; the critic is in rank 0's checkpoint only."""
    import json
    import os
    import subprocess
    import sys

    import torch

    run_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "rl.cli", "train", "learner=deepspeed_zero2", "algorithm=archer", "env=guess",
           f"model.name={tiny_model_dir}", "engine=hf", "sft.enabled=false", "eval.compare_stages=false",
           "trainer.steps=2", "trainer.tasks_per_step=2", "algorithm.group_size=2",
           "algorithm.archer.warmup_iters=1", "algorithm.archer.critic_updates=2",
           "algorithm.archer.batch_size=4", "algorithm.archer.critic_max_tokens=128",
           "rollout.max_tokens_per_turn=6", "rollout.max_turns=2", "tasks.train_size=8",
           "tasks.eval_size=2", f"trainer.run_dir={run_dir}", "trainer.wandb=disabled"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false"}
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in rows if r.get("stage") == "rl"]
    assert len(rl) == 2
    assert all(r["critic/buffer"] > 0 for r in rl)  # rank 0's critic saw the turns
    assert rl[0]["update/trained_seqs"] == 0.0  # warm-up: critic only
    assert rl[1]["critic/actor_ready"] == 1.0
    ckpt = run_dir / "checkpoints" / "step_000002"
    r0 = torch.load(ckpt / "rank0.pt", weights_only=False)
    r1 = torch.load(ckpt / "rank1.pt", weights_only=False)
    assert "credit" in r0["parts"] and "credit" not in r1["parts"]
    assert r0["parts"]["credit"]["iterations"] == 2
