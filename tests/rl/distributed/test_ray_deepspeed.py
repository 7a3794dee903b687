"""launcher=ray with two DeepSpeed learner ranks (ZeRO-2 and ZeRO-3) on the tiny model: 2 sync
steps with a checkpoint after the first, the run killed there, a resume on fresh actors — the
final parameters equal those of an uninterrupted run. Resident memory per rank is printed (the
OOM this guards against: rank 0's weights call alone under a collective, 15-20 GB)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("deepspeed")

from rewards.compose import register_reward, registered_rewards  # noqa: E402
from rl.config import load_config, to_dataclass  # noqa: E402

if "test_last_token" not in registered_rewards():
    @register_reward("test_last_token")
    def _last_token(traj) -> float:
        return (traj.token_ids[-1] % 7) / 7.0


class _Killed(Exception):
    pass


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray.init(num_cpus=4, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2,
             runtime_env={"env_vars": {"DS_ACCELERATOR": "cpu"}})
    yield
    ray.shutdown()


def _cfg(model_dir: Path, run_dir: Path, stage: int, *extra: str):
    return to_dataclass(load_config([
        "launcher=ray", f"learner=deepspeed_zero{stage}", "launcher.learner_ranks=2",
        "launcher.mode=sync", f"model.name={model_dir}", "engine=hf",
        f"trainer.run_dir={run_dir}", "sft.enabled=false", "eval.compare_stages=false",
        "trainer.wandb=disabled", "trainer.tasks_per_step=2", "algorithm.group_size=2",
        "tasks.train_size=16", "tasks.eval_size=2", "rollout.max_turns=2",
        "rollout.max_tokens_per_turn=6", "learner.lr=1e-3", "learner.autocast=fp32",
        "learner.deepspeed.bf16=off", "++algorithm.reward_weights={test_last_token: 1.0}",
        "launcher.num_rollout_workers=1", "launcher.cpus_per_rollout_worker=1",
        "launcher.cpus_per_learner=1", "trainer.steps=2", "trainer.save_every=1", *extra]))


def _run(cfg, run_dir: Path, kill_at: int | None = None):
    from rl.distributed.controller import RayController
    from rl.distributed.pool import WorkerPool

    def hook(ctl, step: int) -> None:
        if step == kill_at:
            raise _Killed

    pool = WorkerPool(cfg, str(run_dir))  # fresh actors: a killed run's are gone
    ctl = RayController(cfg, run_dir, pool=pool,
                        fault_hook=hook if kill_at is not None else None)
    try:
        ctl.fit()
        return ctl.parameter_digest(), ctl.memory_mb(), ctl.history
    except _Killed:
        return None, ctl.memory_mb(), ctl.history
    finally:
        pool.shutdown()


@pytest.mark.parametrize("stage", [2, 3])
def test_two_learner_ranks_checkpoint_kill_resume_equals_uninterrupted(stage, tiny_model_dir,
                                                                      tmp_path):
    whole, mem, rows = _run(_cfg(tiny_model_dir, tmp_path / "whole", stage), tmp_path / "whole")
    print(f"\n[zero-{stage}] peak resident MiB per learner rank: {[round(m) for m in mem]}")
    assert len(rows) == 2 and all(r["update/trained_seqs"] > 0 for r in rows)
    assert max(mem) < 4096, f"a learner rank peaked at {max(mem):.0f} MiB"
    killed_dir = tmp_path / "killed"
    digest, _, rows = _run(_cfg(tiny_model_dir, killed_dir, stage), killed_dir, kill_at=1)
    assert digest is None and len(rows) == 1
    assert (killed_dir / "checkpoints" / "step_000001").is_dir()
    resumed, _, rows = _run(_cfg(tiny_model_dir, killed_dir, stage, "trainer.resume=latest"),
                            killed_dir)
    assert len(rows) == 1  # only step 1 ran again
    assert resumed == pytest.approx(whole, rel=1e-6)
