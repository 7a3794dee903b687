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
tests). Its requests and sampling parameters are the core's ``rl.sampling.GenerationRequest`` /
``SamplingParams``, the ones every engine takes. The config path ``env.kwargs.user_model=<model name>`` is resolved by the run
builder (``rl.build``), which loads the model into such an engine once and shares it between
episodes.

Engines are not thread-safe: calls are serialised with a lock and run in a worker thread so the
event loop (other episodes' tools) keeps going. With ``max_batch > 1`` (what the Ray actor uses),
replies requested within ``batch_wait_s`` of each other that share sampling parameters go to the
engine as one ``generate`` call: greedy replies batch; above temperature 0 each prompt has its own
seed, so those still go one by one. The default (1) is the unbatched path.

Under ``launcher=ray`` the engine is not loaded in every worker: one
:class:`rl.user_actor.UserModelActor` holds this class and its engine, and the envs
of every rollout and env worker get a :class:`rl.user_actor.RemoteUser` with the same
``reply(goal, conversation)``.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
from collections.abc import Sequence
from typing import Any

from rl.sampling import GenerationRequest, SamplingParams
from rl.types import Message

PERSONA = ("You are a customer talking to an assistant. Speak only as the customer, in one or two "
           "short sentences. Never say that you are an AI.")
OPENING_CUE = "(The assistant is waiting for your message.)"


class LLMUser:
    """The user side of a conversation, played by a frozen LLM (module docstring).

    ``temperature`` 0 (the default) is greedy; above 0 the sampling seed is a hash of the prompt
    and ``seed``, so a conversation replays identically.
    """

    def __init__(self, engine: Any, tokenizer: Any, *, max_new_tokens: int = 64,
                 temperature: float = 0.0, seed: int = 0, persona: str = PERSONA,
                 max_batch: int = 1, batch_wait_s: float = 0.005) -> None:
        if not callable(getattr(engine, "generate", None)):
            raise TypeError(f"the user engine needs a generate(requests, sampling) method, "
                            f"got {type(engine).__name__}")
        if max_new_tokens < 1 or temperature < 0 or max_batch < 1 or batch_wait_s < 0:
            raise ValueError(f"LLMUser: need max_new_tokens >= 1, temperature >= 0, "
                             f"max_batch >= 1, batch_wait_s >= 0; got {max_new_tokens}, "
                             f"{temperature}, {max_batch}, {batch_wait_s}")
        self.engine, self.tokenizer = engine, tokenizer
        self.max_new_tokens, self.temperature, self.seed = max_new_tokens, temperature, seed
        self.persona = persona
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self.calls = 0  # replies generated (for logging)
        self.engine_calls = 0  # generate() calls (fewer than replies when batched)
        self._lock = threading.Lock()
        self._queue: list[tuple[list[int], asyncio.Future[str]]] = []
        self._flusher: asyncio.Future[None] | None = None

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
        if self.max_batch == 1:
            return await asyncio.to_thread(self._generate, ids)
        fut: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._queue.append((ids, fut))
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.ensure_future(self._flush())
        return await fut

    async def _flush(self) -> None:
        """Send what queued up within ``batch_wait_s`` (module docstring), one engine call per
        sampling seed and at most ``max_batch`` prompts."""
        await asyncio.sleep(self.batch_wait_s)
        while self._queue:
            batch, self._queue = self._queue[: self.max_batch], self._queue[self.max_batch:]
            groups: dict[int | None, list[tuple[list[int], asyncio.Future[str]]]] = {}
            for ids, fut in batch:
                groups.setdefault(self._seed(ids), []).append((ids, fut))
            for seed, items in groups.items():
                try:
                    texts = await asyncio.to_thread(self._generate_many,
                                                    [ids for ids, _ in items], seed)
                except Exception as e:  # noqa: BLE001 - each waiting reply gets the error
                    for _, fut in items:
                        if not fut.done():
                            fut.set_exception(e)
                    continue
                for (_, fut), text in zip(items, texts, strict=True):
                    if not fut.done():  # a cancelled episode no longer waits
                        fut.set_result(text)

    def _seed(self, ids: list[int]) -> int | None:
        if self.temperature == 0:
            return None
        return int(hashlib.sha256(f"{self.seed}/{ids}".encode()).hexdigest()[:8], 16)

    def _generate(self, ids: list[int]) -> str:
        return self._generate_many([ids], self._seed(ids))[0]

    def _generate_many(self, prompts: list[list[int]], seed: int | None) -> list[str]:
        sampling = SamplingParams(max_new_tokens=self.max_new_tokens,
                                  temperature=self.temperature, seed=seed)
        with self._lock:
            outs = self.engine.generate(
                [GenerationRequest(ids, self.max_new_tokens) for ids in prompts], sampling)
            self.calls += len(prompts)
            self.engine_calls += 1
        return [str(self.tokenizer.decode(o.token_ids, skip_special_tokens=True)).strip()
                for o in outs]
