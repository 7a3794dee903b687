"""Where turns end: the tokenizer's EOS, the model's ``generation_config.eos_token_id`` and the
format's stop tokens (rl.rollout.engines.base.turn_end_ids), the same for the HF engine, the
vLLM engine's sampling parameters, the agent loop and SFT replay.

The stand-in is a Gemma-like model: SmolLM2's tokenizer with ``<|endoftext|>`` as its EOS, while
the chat template closes assistant turns with ``<|im_end|>``, which the model's generation
config lists as a second eos id (Gemma: ``<eos>`` vs ``<end_of_turn>``; Llama 3: ``<|eot_id|>``).
"""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from transformers import GenerationConfig

import envs.tasks  # noqa: F401
from envs.base import make_env
from envs.tasks.math import make_tasks
from rl.rollout.agent_loop import AgentLoop, RolloutConfig
from rl.rollout.engines.base import GenerationRequest, SamplingParams, turn_end_ids
from rl.rollout.engines.hf import HFEngine
from rl.sft import conversation_trajectory, replay
from rl.types import Task

ENDOFTEXT, IM_END = 0, 2  # SmolLM2's ids


class TurnEndNotEos:
    """SmolLM2's tokenizer whose EOS is ``<|endoftext|>``; its ChatML template still closes a
    turn with ``<|im_end|>``."""

    eos_token, eos_token_id = "<|endoftext|>", ENDOFTEXT

    def __init__(self, tok):
        self.tok = tok

    def __getattr__(self, name):
        return getattr(self.tok, name)


@pytest.fixture()
def gemma_like(tokenizer):
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|im_end|>"]) == [ENDOFTEXT, IM_END]
    return TurnEndNotEos(tokenizer)


GEN = GenerationConfig(eos_token_id=[ENDOFTEXT, IM_END])


def test_turn_end_ids_is_the_union_in_order(gemma_like):
    assert turn_end_ids(gemma_like) == [ENDOFTEXT]
    assert turn_end_ids(gemma_like, GEN) == [ENDOFTEXT, IM_END]
    assert turn_end_ids(gemma_like, GenerationConfig(eos_token_id=IM_END), [7, IM_END]) == [
        ENDOFTEXT, IM_END, 7]
    assert turn_end_ids(gemma_like, GenerationConfig()) == [ENDOFTEXT]  # no eos of its own


def test_hf_engine_stops_at_the_generation_configs_turn_end(tiny_model, gemma_like):
    prompt = gemma_like.encode("Hello there, how are", add_special_tokens=False)
    seeded = SamplingParams(max_new_tokens=12, temperature=1.0, seed=3)
    free = HFEngine(tiny_model, gemma_like).generate([GenerationRequest(prompt)], seeded)[0]
    # a token the model samples a few steps in stands for its turn end (the tiny model is random)
    k = next(i for i, t in enumerate(free.token_ids) if i >= 2 and t not in free.token_ids[:i])
    turn_end = free.token_ids[k]
    tiny_model.generation_config.eos_token_id = [ENDOFTEXT, turn_end]
    engine = HFEngine(tiny_model, gemma_like)
    out = engine.generate([GenerationRequest(prompt)], seeded)[0]
    assert out.token_ids == free.token_ids[: k + 1] and out.finish_reason == "stop"
    assert engine.generation_config is tiny_model.generation_config


def test_vllm_engine_passes_the_turn_ends_as_stop_token_ids(tmp_path, tiny_model_dir, gemma_like,
                                                            monkeypatch):
    """The parameters the vLLM engine builds from its model folder's generation config (a stub
    in place of ``vllm.LLM``: no engine starts)."""
    vllm = pytest.importorskip("vllm", reason="vllm is not installed")
    from rl.rollout.engines.vllm import VLLMConfig, VLLMEngine

    folder = tmp_path / "gemma-like"
    shutil.copytree(tiny_model_dir, folder)
    (folder / "generation_config.json").write_text(
        json.dumps({"eos_token_id": [ENDOFTEXT, IM_END], "bos_token_id": 1}))

    class StubLLM:
        def __init__(self, **kwargs):
            self.kwargs = kwargs

    monkeypatch.setattr(vllm, "LLM", StubLLM)
    for var in ("VLLM_CPU_KVCACHE_SPACE", "VLLM_ENABLE_V1_MULTIPROCESSING"):
        monkeypatch.setenv(var, "")  # the engine sets them; restored after the test
    threads = torch.get_num_threads()
    engine = VLLMEngine(str(folder), gemma_like, VLLMConfig(dtype="float32"))
    assert torch.get_num_threads() == threads
    assert engine.eos_ids == {ENDOFTEXT, IM_END}
    params = engine._params(GenerationRequest([1, 2, 3]),
                            SamplingParams(max_new_tokens=5, stop_token_ids=[7]), 0)
    assert sorted(params.stop_token_ids) == [ENDOFTEXT, IM_END, 7] and params.max_tokens == 5


def test_sft_replay_ends_turns_with_the_templates_turn_end(gemma_like):
    """The demonstrated turn ends with the token the template writes and the model stops at
    (``<|im_end|>``), not with the tokenizer's EOS: the trajectory is the template's rendering."""
    factory = lambda: make_env("math")  # noqa: E731
    task = make_tasks("word", "train", 1, seed=0)[0]
    actions = factory().demonstration(task)
    traj = replay(gemma_like, factory, task, actions, generation_config=GEN)
    sampled = [i for i, m in zip(traj.token_ids, traj.loss_mask) if m]
    assert sampled == [i for a in actions for i in gemma_like.encode(a, add_special_tokens=False)
                       + [IM_END]]
    assert ENDOFTEXT not in traj.token_ids
    rendered = gemma_like.apply_chat_template(traj.messages, tokenize=False)
    full = gemma_like.encode(rendered, add_special_tokens=False)
    assert full[: len(traj.token_ids)] == traj.token_ids
    assert all("<|im_end|>" not in m["content"] for m in traj.messages)

    row = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"},
                        {"role": "user", "content": "bye"}, {"role": "assistant", "content": "ok"}]}
    conv = conversation_trajectory(gemma_like, row, native_tools=False, generation_config=GEN)
    rendered = gemma_like.apply_chat_template(row["messages"], tokenize=False)
    full = gemma_like.encode(rendered, add_special_tokens=False)
    assert full[: len(conv.token_ids)] == conv.token_ids and conv.token_ids[-1] == IM_END


def test_agent_loop_takes_the_turn_ends_from_the_engine(gemma_like):
    """A turn the model ended with the generation config's turn end: not part of the message's
    content, and the template's closing is not added a second time."""
    from test_agent_loop import EchoToolEnv, ScriptedEngine

    class Engine(ScriptedEngine):
        generation_config = GEN

    engine = Engine(gemma_like, {"a": ["call<|im_end|>", "DONE<|im_end|>"]}, eos=False)
    loop = AgentLoop(engine, gemma_like, EchoToolEnv, RolloutConfig(max_turns=3))
    (t,) = loop.run([Task(id="a", prompt="a")])
    assert [m["content"] for m in t.messages if m["role"] == "assistant"] == ["call", "DONE"]
    rendered = gemma_like.apply_chat_template(t.messages, tokenize=False)
    full = gemma_like.encode(rendered, add_special_tokens=False)
    assert full[: len(t.token_ids)] == t.token_ids
    assert t.token_ids.count(IM_END) == full[: len(t.token_ids)].count(IM_END)
