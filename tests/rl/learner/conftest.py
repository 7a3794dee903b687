"""Multi-process DeepSpeed runs shared by test_deepspeed.py and test_shard_invariance.py: each
distinct run (scenarios, ZeRO stage, world size, LoRA) is launched once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ds_run(tmp_path_factory, tiny_model_dir):
    from ds_worker import launch

    cache: dict[tuple, list[dict]] = {}

    def run(scenarios: str, stage: int, world: int = 2, lora: bool = False,
            gc: bool = False) -> list[dict]:
        key = (scenarios, stage, world, lora, gc)
        if key not in cache:
            out = tmp_path_factory.mktemp(f"ds-z{stage}-w{world}{'-lora' if lora else ''}")
            cache[key] = launch(scenarios, tiny_model_dir, out, stage, world=world, lora=lora,
                                gc=gc)
        return cache[key]

    return run
