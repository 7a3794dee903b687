"""The worker-side logprobs-mode switch against stand-ins shaped like vLLM's two model runners
(no vLLM needed): the V1 runner (``vllm/v1/worker/gpu_model_runner.py``, its CPU subclass; a
``Sampler`` holding a ``TopKTopPSampler``) and the newer V2 runner that the CUDA build uses by
default (``vllm/v1/worker/gpu/model_runner.py``; its ``Sampler`` has no ``topk_topp_sampler``,
and prompt logprobs come from a ``PromptLogprobsWorker`` with a mode of its own)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rl.rollout.engines.vllm import _WorkerExtension, set_runner_logprobs_mode


class _TopKTopP:  # V1: forward chosen at init; FlashInfer's has no processed logprobs
    def __init__(self) -> None:
        self.logprobs_mode = "raw_logprobs"
        self.forward = self.forward_cuda

    def forward_cuda(self) -> str:
        return "flashinfer"

    def forward_native(self) -> str:
        return "native"


def _v1_runner() -> SimpleNamespace:
    sampler = SimpleNamespace(logprobs_mode="raw_logprobs", topk_topp_sampler=_TopKTopP())
    return SimpleNamespace(model_config=SimpleNamespace(logprobs_mode="raw_logprobs"),
                           sampler=sampler)


def _v2_runner() -> SimpleNamespace:
    return SimpleNamespace(
        model_config=SimpleNamespace(logprobs_mode="raw_logprobs"),
        sampler=SimpleNamespace(logprobs_mode="raw_logprobs"),
        prompt_logprobs_worker=SimpleNamespace(logprobs_mode="raw_logprobs"),
        rejection_sampler=None,
    )


def test_v1_runner_switches_sampler_and_topk_topp_sampler() -> None:
    runner = _v1_runner()
    set_runner_logprobs_mode(runner, "processed_logprobs")
    assert runner.model_config.logprobs_mode == "processed_logprobs"
    assert runner.sampler.logprobs_mode == "processed_logprobs"
    topk = runner.sampler.topk_topp_sampler
    assert topk.logprobs_mode == "processed_logprobs"
    assert topk.forward() == "native"  # FlashInfer's path cannot return processed logprobs
    set_runner_logprobs_mode(runner, "raw_logprobs")
    assert runner.sampler.logprobs_mode == topk.logprobs_mode == "raw_logprobs"
    assert topk.forward() == "flashinfer"  # the fast path is back


def test_v2_runner_without_topk_topp_sampler() -> None:
    # the bug: the old switch reached for sampler.topk_topp_sampler -> AttributeError on CUDA
    runner = _v2_runner()
    set_runner_logprobs_mode(runner, "processed_logprobs")
    assert runner.model_config.logprobs_mode == "processed_logprobs"
    assert runner.sampler.logprobs_mode == "processed_logprobs"
    assert runner.prompt_logprobs_worker.logprobs_mode == "processed_logprobs"
    set_runner_logprobs_mode(runner, "raw_logprobs")
    assert runner.prompt_logprobs_worker.logprobs_mode == "raw_logprobs"


def test_worker_extension_uses_the_robust_switch() -> None:
    worker = SimpleNamespace(model_runner=_v2_runner())
    _WorkerExtension.turnrl_set_logprobs_mode(worker, "processed_logprobs")  # type: ignore[arg-type]
    assert worker.model_runner.sampler.logprobs_mode == "processed_logprobs"


def test_v1_rejection_sampler_flags_follow_the_mode() -> None:
    # V1's RejectionSampler caches the mode as two flags at init (speculative decoding only)
    runner = _v1_runner()
    runner.rejection_sampler = SimpleNamespace(
        is_processed_logprobs_mode=False, is_logits_logprobs_mode=False
    )
    set_runner_logprobs_mode(runner, "processed_logprobs")
    assert runner.rejection_sampler.is_processed_logprobs_mode is True
    assert runner.rejection_sampler.is_logits_logprobs_mode is False


def test_bad_mode_and_missing_sampler_are_clear_errors() -> None:
    with pytest.raises(ValueError, match="logprobs mode 'tempered'"):
        set_runner_logprobs_mode(_v2_runner(), "tempered")
    no_sampler = SimpleNamespace(model_config=SimpleNamespace(logprobs_mode="raw_logprobs"),
                                 sampler=None)
    with pytest.raises(RuntimeError, match="no sampler"):
        set_runner_logprobs_mode(no_sampler, "processed_logprobs")


@pytest.mark.slow
def test_real_vllm_sampler_classes() -> None:
    # the installed vLLM's own V1 Sampler and V2 PromptLogprobsWorker (importing vLLM is slow)
    pytest.importorskip("vllm", reason="vllm is not installed")
    import torch
    from vllm.v1.sample.sampler import Sampler
    from vllm.v1.worker.gpu.sample.prompt_logprob import PromptLogprobsWorker

    sampler = Sampler(logprobs_mode="raw_logprobs")
    runner = SimpleNamespace(
        model_config=SimpleNamespace(logprobs_mode="raw_logprobs"), sampler=sampler,
        prompt_logprobs_worker=PromptLogprobsWorker(4, torch.device("cpu")),
    )
    set_runner_logprobs_mode(runner, "processed_logprobs")
    assert sampler.logprobs_mode == sampler.topk_topp_sampler.logprobs_mode == "processed_logprobs"
    assert runner.prompt_logprobs_worker.logprobs_mode == "processed_logprobs"
