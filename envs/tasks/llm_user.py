"""A frozen LLM as the simulated user (MUA-RL), conditioned on a hidden goal.

:class:`LLMUser` writes the user's next message: it renders its own prompt (a persona plus the
hidden goal in the system message, then the conversation seen from the user's side: the agent's
messages as ``user``, the user's own earlier messages as ``assistant``; tool results and the
agent's system prompt are left out), samples it with its own engine, and returns the text. The env
appends that text as a ``user`` message, so it reaches the policy as observation tokens (loss
mask 0), and the goal itself never enters the agent's context. The user model never trains: no
one calls its engine's ``update_weights``.

Its engine is any object with the Engine protocol's ``generate(requests, sampling)`` (the HF
engine of :mod:`rl.rollout.engines.hf` with its own frozen model, vLLM, or a scripted stand-in in
tests). ``envs/`` may not import ``rl.rollout``, so the requests and sampling parameters here are
small dataclasses with the same fields as ``GenerationRequest`` / ``SamplingParams`` (a test keeps
them in step). The config path ``env.kwargs.user_model=<model name>`` is resolved by the run
builder (``rl.build``), which loads the model into such an engine once and shares it between
episodes.

Engines are not thread-safe: calls are serialised with a lock and run in a worker thread so the
event loop (other episodes' tools) keeps going.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from rl.types import Message

PERSONA = ("You are a customer talking to an assistant. Speak only as the customer, in one or two "
           "short sentences. Never say that you are an AI.")
OPENING_CUE = "(The assistant is waiting for your message.)"


@dataclass
class UserRequest:
    """Same fields as ``rl.rollout.engines.base.GenerationRequest``."""

    prompt_ids: list[int]
    max_new_tokens: int | None = None


@dataclass
class UserSampling:
    """Same fields as ``rl.rollout.engines.base.SamplingParams``."""

    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    seed: int | None = None


class LLMUser:
    """The user side of a conversation, played by a frozen LLM (module docstring).

    ``temperature`` 0 (the default) is greedy; above 0 the sampling seed is a hash of the prompt
    and ``seed``, so a conversation replays identically.
    """

    def __init__(self, engine: Any, tokenizer: Any, *, max_new_tokens: int = 64,
                 temperature: float = 0.0, seed: int = 0, persona: str = PERSONA) -> None:
        if not callable(getattr(engine, "generate", None)):
            raise TypeError(f"the user engine needs a generate(requests, sampling) method, "
                            f"got {type(engine).__name__}")
        if max_new_tokens < 1 or temperature < 0:
            raise ValueError(f"LLMUser: need max_new_tokens >= 1 and temperature >= 0, got "
                             f"{max_new_tokens}, {temperature}")
        self.engine, self.tokenizer = engine, tokenizer
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.persona = persona
        self.calls = 0  # replies generated (for logging)
        self._lock = threading.Lock()

    def prompt_messages(self, goal: str, conversation: Sequence[Message]) -> list[Message]:
        """The user model's own chat: persona + hidden goal, then the conversation with the
        roles swapped (tool messages and system prompts dropped)."""
        out: list[Message] = [{"role": "system",
                               "content": f"{self.persona}\nYour goal (the assistant does not "
                                          f"know it): {goal}"}]
        swap = {"user": "assistant", "assistant": "user"}
        for m in conversation:
            role = swap.get(str(m.get("role")))
            if role is not None:
                out.append({"role": role, "content": str(m.get("content", ""))})
        if out[-1]["role"] != "user":  # the model answers a user turn: cue the opening / next one
            out.append({"role": "user", "content": OPENING_CUE})
        return out

    def encode(self, messages: list[Message]) -> list[int]:
        ids = self.tokenizer.apply_chat_template(messages, tokenize=True,
                                                 add_generation_prompt=True)
        if not isinstance(ids, list):  # transformers 5 returns a BatchEncoding
            ids = ids["input_ids"]
        return [int(i) for i in ids]

    async def reply(self, goal: str, conversation: Sequence[Message]) -> str:
        """The user's next message given the hidden ``goal`` and the conversation so far."""
        ids = self.encode(self.prompt_messages(goal, conversation))
        return await asyncio.to_thread(self._generate, ids)

    def _generate(self, ids: list[int]) -> str:
        seed = None
        if self.temperature > 0:
            h = hashlib.sha256(f"{self.seed}/{ids}".encode()).hexdigest()
            seed = int(h[:8], 16)
        sampling = UserSampling(max_new_tokens=self.max_new_tokens,
                                temperature=self.temperature, seed=seed)
        with self._lock:
            (out,) = self.engine.generate([UserRequest(ids, self.max_new_tokens)], sampling)
            self.calls += 1
        return str(self.tokenizer.decode(out.token_ids, skip_special_tokens=True)).strip()
