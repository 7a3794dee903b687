"""vLLM weight sync: the layers that receive no tensor (vLLM logs "<Layer>: Failed to load
weights" for each, e.g. Gemma3Model, RotaryEmbedding, ParallelLMHead for Gemma 3) are taken out
of the log and reported in one line, with a warning only for real gaps. No vLLM needed: a
stand-in worker logs on vLLM's logger as ``model_loader/reload/layerwise.py`` does, over a
stand-in model whose module classes carry vLLM's names."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch
from torch import nn

import rl.rollout.engines.vllm as vllm_engine
from rl.rollout.engines.vllm import _WorkerExtension, layers_without_weights, sync_report


class RotaryEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("cos_sin_cache", torch.ones(4, 2), persistent=False)


class VocabParallelEmbedding(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(8, 4))


class ParallelLMHead(nn.Module):
    def __init__(self, embed: VocabParallelEmbedding) -> None:
        super().__init__()
        self.weight = embed.weight  # tie_weights: the embedding's own parameter


class RowParallelLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(4, 4))


class Gemma3Model(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding()
        self.rotary_emb = RotaryEmbedding()
        self.o_proj = RowParallelLinear()
        self.register_buffer("normalizer", torch.tensor(2.0), persistent=False)


class Gemma3ForCausalLM(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.model = Gemma3Model()
        self.lm_head = ParallelLMHead(self.model.embed_tokens)


class Worker(_WorkerExtension):
    """Loads nothing; logs vLLM's warning for the layers ``failed`` names."""

    def __init__(self, model: nn.Module, failed: list[str]) -> None:
        self.model_runner = SimpleNamespace(get_model=lambda: model)
        self.failed = failed

    def reload_weights(self, weights_iterator) -> None:
        for _ in weights_iterator:
            pass
        log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
        for name in self.failed:
            log.warning("%s: Failed to load weights", name)
        log.warning("Reloading took 0.1 seconds")


def test_expected_layers_and_gaps_are_told_apart():
    model = Gemma3ForCausalLM()
    expected, gaps = layers_without_weights(
        model, ["Gemma3Model", "RotaryEmbedding", "ParallelLMHead", "RowParallelLinear",
                "NoSuchLayer", "RotaryEmbedding"])
    assert set(expected) == {"Gemma3Model", "RotaryEmbedding", "ParallelLMHead"}
    assert "buffers" in expected["RotaryEmbedding"] and "tied" in expected["ParallelLMHead"]
    assert gaps == ["RowParallelLinear", "NoSuchLayer"]
    untied = Gemma3ForCausalLM()
    untied.lm_head.weight = nn.Parameter(torch.randn(8, 4))  # a head of its own: a real gap
    assert layers_without_weights(untied, ["ParallelLMHead"]) == ({}, ["ParallelLMHead"])


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def test_reload_hides_vllms_failed_to_load_lines_and_reports_them(monkeypatch):
    monkeypatch.setattr(vllm_engine, "_refresh_tied_heads", lambda model: None)
    worker = Worker(Gemma3ForCausalLM(), ["Gemma3Model", "RotaryEmbedding", "ParallelLMHead"])
    weights = [("model.embed_tokens.weight", torch.zeros(8, 4)),
               ("model.o_proj.weight", torch.zeros(4, 4))]
    seen = Records()
    vllm_log = logging.getLogger("vllm.model_executor.model_loader.reload.layerwise")
    vllm_log.addHandler(seen)
    try:
        info = worker.turnrl_reload_weights(weights)
    finally:
        vllm_log.removeHandler(seen)
    assert seen.messages == ["Reloading took 0.1 seconds"]  # only vLLM's other lines
    assert info["tensors"] == 2 and info["gaps"] == []
    assert set(info["expected"]) == {"Gemma3Model", "RotaryEmbedding", "ParallelLMHead"}
    (line,) = sync_report(info)
    assert line.startswith("[turnrl] vLLM weight sync: no tensors for Gemma3Model, "
                           "RotaryEmbedding (") and "ParallelLMHead (" in line
    assert not vllm_log.filters

    gap = Worker(Gemma3ForCausalLM(), ["RowParallelLinear"]).turnrl_reload_weights(weights)
    (warning,) = sync_report(gap)
    assert warning.startswith("[turnrl] WARNING: vLLM weight sync: RowParallelLinear received no")


def test_the_engine_prints_each_note_once(capsys):
    from rl.rollout.engines.vllm import VLLMEngine

    infos = [{"tensors": 3, "expected": {"RotaryEmbedding": "buffers"}, "gaps": []}] * 2 + [
        {"tensors": 3, "expected": {"RotaryEmbedding": "buffers"}, "gaps": ["Linear"]}]
    engine = VLLMEngine.__new__(VLLMEngine)  # no vLLM: only what update_weights reads
    engine.adapter, engine.in_process, engine.sync_seconds, engine._sync_said = False, True, [], \
        set()
    engine.llm = SimpleNamespace(collective_rpc=lambda name, args: [infos.pop(0)],
                                 reset_prefix_cache=lambda: None)
    for _ in range(3):
        engine.update_weights([("w", torch.zeros(1))])
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and "RotaryEmbedding (buffers)" in out[0] and "Linear" in out[1]
