"""The rollout engine's sampling seed follows ``trainer.seed`` under both drivers.

Defect it guards: the local driver built its vLLM engine with ``vllm.seed`` alone, so on CPU
(where the per-trajectory schedule samples from the stream vLLM seeds at start-up) runs with
``trainer.seed`` 0, 1 and 2 sampled identical rollouts; the Ray workers already added it."""

from __future__ import annotations

import rl.rollout.engines.vllm as vllm_engine


class _Recorder:
    seeds: list[int] = []

    def __init__(self, model_path, tokenizer, cfg, **kwargs) -> None:
        _Recorder.seeds.append(cfg.seed)


def _cfg(tiny_model_dir, *over: str):
    from rl.config import load_config, to_dataclass

    return to_dataclass(load_config([f"model.name={tiny_model_dir}", "engine=vllm",
                                     "tasks.train_size=4", "tasks.eval_size=2", *over]))


def test_local_and_ray_vllm_engines_take_the_trainer_seed(tiny_model_dir, monkeypatch):
    from rl.build import build_parts
    from rl.distributed.workers import build_rollout_engine

    monkeypatch.setattr(vllm_engine, "VLLMEngine", _Recorder)
    _Recorder.seeds = []
    for seed in (0, 1, 2):
        cfg = _cfg(tiny_model_dir, f"trainer.seed={seed}", "vllm.seed=10")
        parts = build_parts(cfg)
        parts.make_engine(parts.model)  # the local driver's engine
        build_rollout_engine(cfg, parts.tokenizer, None, seed=cfg.trainer.seed)  # Ray worker 0
    assert _Recorder.seeds == [10, 10, 11, 11, 12, 12]
