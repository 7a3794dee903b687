"""The best-checkpoint guard (``eval.every``) under ``launcher=ray``: the shared stage machine
(rl/step.py, tested with fakes in tests/rl/test_step.py and end to end locally in
tests/rl/test_trainer.py) with the controller's phases: guard evaluations on a rollout worker,
the best linked past ``keep_last`` and recorded in ``state.pt``, the best's weights loaded on the
learner ranks for its held-out row, then the last ones back.

Its own Ray instance: evaluations score in the rollout workers, so the run uses the built-in
rewards (tests/rl/distributed/test_ray_controller.py's pool scores with a test-only reward)."""

from __future__ import annotations

import os

import pytest
import torch

ray = pytest.importorskip("ray")


def test_guard_under_ray_links_and_reports_the_best(tiny_model_dir, tmp_path):
    from safetensors.torch import load_file

    from rl import checkpoint as ckpt
    from rl.config import load_config, to_dataclass
    from rl.distributed.controller import RayController

    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")  # a shared machine
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=256 * 1024**2)
    try:
        cfg = to_dataclass(load_config([
            "launcher=ray", f"model.name={tiny_model_dir}", "engine=hf",
            f"trainer.run_dir={tmp_path}", "sft.enabled=false", "trainer.wandb=disabled",
            "trainer.steps=2", "trainer.tasks_per_step=2", "algorithm.group_size=2",
            "tasks.train_size=8", "tasks.eval_size=2", "eval.every=1", "eval.guard_tasks=2",
            "trainer.keep_last=1", "rollout.max_turns=1", "rollout.max_tokens_per_turn=6",
            "learner.autocast=fp32", "launcher.mode=sync", "launcher.num_rollout_workers=1",
            "launcher.num_env_workers=1", "launcher.cpus_per_rollout_worker=0.5",
            "launcher.cpus_per_learner=0.5"]))
        ctl = RayController(cfg, tmp_path)
        assert len(ctl.guard_tasks) == 2
        assert not {t.id for t in ctl.guard_tasks} & {t.id for t in ctl.eval_tasks}
        pool = ctl.pool
        ctl._own_pool = False  # keep the actors for the checks below
        results = ctl.fit()
        # a random model solves nothing: every guard score ties, so the best is step 0
        assert ctl.state.best_step == 0
        root = tmp_path / "checkpoints"
        assert ckpt.best_target(root) == "step_000000"
        assert [p.name for p in ckpt.list_checkpoints(root)] == ["step_000000", "step_000002"]
        assert ckpt.load_state(root / "step_000002")["best_step"] == 0
        assert list(results) == ["base", "grpo", "grpo best@step0"]
        assert "grpo best@step0" in (tmp_path / "results.md").read_text()
        last = load_file(str(root / "step_000002" / "model" / "model.safetensors"))
        now = ray.get(pool.learners[0].weights.remote())
        assert all(torch.equal(now[n], v) for n, v in last.items() if n in now)
        pool.shutdown()
    finally:
        ray.shutdown()
