"""launcher=ray on this machine: one Ray instance (2 CPUs) for the module, the tiny model, the HF
engine. Sync and async runs train, a killed rollout worker is replaced without losing the step,
and the staleness bound holds with a slow learner."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ray = pytest.importorskip("ray")

from rewards.compose import register_reward, registered_rewards  # noqa: E402
from rl.config import load_config, to_dataclass  # noqa: E402

if "test_last_token" not in registered_rewards():
    # Scored on the driver: a reward that varies across a random model's samples, so groups
    # are not uniform and every step has a gradient.
    @register_reward("test_last_token")
    def _last_token(traj) -> float:
        return (traj.token_ids[-1] % 7) / 7.0


@pytest.fixture(scope="module")
def pool(tiny_model_dir, tmp_path_factory):
    """One Ray instance and one set of actors for the module (actor start-up dominates): a
    learner, a rollout worker and an env worker hosting the envs; each test runs its own
    controller on them."""
    from rl.distributed.pool import WorkerPool

    # The machine is shared: Ray's memory monitor would kill our actors when *other* processes
    # fill the RAM (it acts at 95% node usage); the kernel's OOM killer still guards the box.
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    run_dir = tmp_path_factory.mktemp("learner")
    pool = WorkerPool(_cfg(tiny_model_dir, run_dir), str(run_dir))
    yield pool
    pool.shutdown()
    ray.shutdown()


def _cfg(model_dir: Path, run_dir: Path, *extra: str):
    overrides = [
        "launcher=ray", f"model.name={model_dir}", "engine=hf", f"trainer.run_dir={run_dir}",
        "sft.enabled=false", "eval.compare_stages=false", "trainer.wandb=disabled",
        "trainer.tasks_per_step=2", "algorithm.group_size=2", "tasks.train_size=16",
        "tasks.eval_size=2", "rollout.max_turns=2", "rollout.max_tokens_per_turn=6",
        "learner.lr=1e-3", "learner.autocast=fp32",
        "++algorithm.reward_weights={test_last_token: 1.0}",
        "launcher.num_rollout_workers=1", "launcher.num_env_workers=1",
        "launcher.cpus_per_rollout_worker=0.5", "launcher.cpus_per_learner=0.5", *extra,
    ]
    return to_dataclass(load_config(overrides))


def _fit(pool, cfg, run_dir, **kw):
    """Run a controller on the shared actors; True if the learner's weights changed."""
    from rl.distributed.controller import RayController

    before = ray.get(pool.learners[0].weights.remote())
    ctl = RayController(cfg, run_dir, pool=pool, **kw)
    ctl.fit()
    after = ray.get(pool.learners[0].weights.remote())
    return ctl, any(not torch.equal(before[k], after[k]) for k in before)


def _check_batches(ctl, steps: int) -> None:
    rows = ctl.history
    assert [r["dist/policy_version"] for r in rows] == [float(s + 1) for s in range(steps)]
    for r in rows:  # every step trained on all of its groups x samples
        assert r["dist/trajectories"] == 4.0 and r["update/trained_seqs"] > 0
        assert 0.0 < r["dist/rollout_busy_frac"] <= 1.0
        assert 0.0 < r["dist/learner_busy_frac"] <= 1.0
    for t in ctl.last_trajectories:
        t.validate()
        assert t.num_model_tokens > 0 and "policy_version" in t.info


def test_local_and_ray_sync_give_identical_trajectories_and_metrics(pool, tiny_model_dir,
                                                                    tmp_path):
    """One step core, two drivers: the same config (sync, one rollout worker, same TIS cap,
    one thread) gives the same trajectories, token for token, and the same metrics rows for 2
    steps. Runs first in the module, while the shared learner still holds the initial weights."""
    from rl.trainer import Trainer

    common = ["trainer.steps=2", "launcher.mode=sync", "algorithm.loss.tis_cap=2.0",
              "trainer.num_threads=1", "trainer.samples_to_log=0"]
    ray_ctl, _ = _fit(pool, _cfg(tiny_model_dir, tmp_path / "ray", *common), tmp_path / "ray")
    ray_rows, ray_trajs = ray_ctl.history, ray_ctl.last_trajectories
    local_cfg = _cfg(tiny_model_dir, tmp_path / "local", *common, "launcher=local",
                     "algorithm.loss.tis_cap=2.0", "launcher.num_env_workers=0")
    t = Trainer(local_cfg, tmp_path / "local")
    rows = []
    for step in range(2):
        trajs, metrics, timer = t.train_step(step)
        rows.append(t.core.metrics_row(trajs, torch.tensor([x.outcome_reward for x in trajs]),
                                       metrics, timer.times))
    assert [x.token_ids for x in trajs] == [x.token_ids for x in ray_trajs]
    assert [x.loss_mask for x in trajs] == [x.loss_mask for x in ray_trajs]
    for local_row, ray_row in zip(rows, ray_rows):
        keys = [k for k in local_row if k.split("/")[0] in ("reward", "episode", "actor", "update")
                and k in ray_row]
        assert len(keys) > 10
        for k in keys:
            assert local_row[k] == pytest.approx(ray_row[k], rel=1e-4, abs=1e-5), k


def test_sync_run_trains(pool, tiny_model_dir, tmp_path):
    cfg = _cfg(tiny_model_dir, tmp_path, "launcher.mode=sync", "trainer.steps=2")
    ctl, changed = _fit(pool, cfg, tmp_path)
    _check_batches(ctl, 2)
    assert changed
    assert all(r["dist/staleness_max"] == 0.0 for r in ctl.history)  # sync: on-policy
    assert ctl.history[-1]["dist/restarts"] == 0.0
    assert "actor/tis_weight_mean" in ctl.history[-1]  # launcher=ray turns TIS on
    assert (tmp_path / "metrics.jsonl").stat().st_size > 0


def test_async_staleness_bound_with_slow_learner(pool, tiny_model_dir, tmp_path):
    """The learner is slower than rollout, so rollouts run as far ahead as the bound allows:
    staleness climbs to the bound (the overlap happens) and never exceeds it."""
    bound = 2
    cfg = _cfg(tiny_model_dir, tmp_path, "launcher.mode=async", "trainer.steps=4",
               f"launcher.max_staleness={bound}")
    ctl, changed = _fit(pool, cfg, tmp_path, learner_delay_s=0.5)
    _check_batches(ctl, 4)
    assert changed
    assert [r["dist/staleness_max"] for r in ctl.history] == [0.0, 1.0, 2.0, 2.0]


def test_killed_rollout_worker_is_replaced_and_the_step_completes(pool, tiny_model_dir,
                                                                   tmp_path):
    killed = []

    def kill_mid_step(ctl, step: int) -> None:
        if step == 1:  # step 2's jobs were submitted just now (async): one is in flight
            ray.kill(ctl.pool.rollouts[0], no_restart=True)
            killed.append(step)

    cfg = _cfg(tiny_model_dir, tmp_path, "launcher.mode=async", "trainer.steps=3")
    ctl, changed = _fit(pool, cfg, tmp_path, fault_hook=kill_mid_step)
    assert killed == [1]
    _check_batches(ctl, 3)  # no step lost trajectories
    assert ctl.history[-1]["dist/restarts"] == 1.0
    assert ctl.history[-1]["dist/regenerated_jobs"] >= 1.0
    assert ray.get(pool.rollouts[0].ping.remote())[0] == 0  # the replacement answers


def test_archer_under_ray_trains_the_critic_on_the_controller(pool, tiny_model_dir, tmp_path):
    """algorithm.credit=archer with launcher=ray: the encoder critic trains in the controller on
    the whole step's turns; after the warm-up step the learner group trains on its advantages,
    and the critic's state goes into the checkpoint through learner rank 0."""
    cfg = _cfg(tiny_model_dir, tmp_path, "algorithm=archer", "launcher.mode=sync",
               "trainer.steps=2", "algorithm.archer.warmup_iters=1",
               "algorithm.archer.critic_updates=2", "algorithm.archer.batch_size=4",
               "algorithm.archer.critic_max_tokens=128",
               "++algorithm.turn_reward_weights={env_progress: 1.0}")
    ctl, changed = _fit(pool, cfg, tmp_path)
    rows = ctl.history
    assert all(r["critic/buffer"] > 0 for r in rows) and rows[1]["critic/actor_ready"] == 1.0
    assert rows[0]["update/trained_seqs"] == 0.0  # warm-up: critic only
    assert changed == (rows[1]["update/trained_seqs"] > 0)
    state = torch.load(tmp_path / "checkpoints" / "step_000002" / "rank0.pt", weights_only=False)
    assert state["parts"]["credit"]["iterations"] == 2
