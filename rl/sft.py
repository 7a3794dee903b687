"""Cold-start SFT data on the RL tokenization path.

Demonstrations are *replayed* through the same agent loop that RL uses: a scripted engine emits
the reference assistant turns (tokenized once, plus EOS) and the real env produces the tool
results. So SFT sequences obey the token-in/token-out contract and the loss mask covers exactly
the assistant tokens, with no second tokenization code path.

A user's JSONL of chat trajectories (``{"messages": [...], "tools": [...]}`` per line) goes the
same way: a conversation env replays its non-assistant messages as observations.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from envs.base import StepResult
from rl.rollout.agent_loop import AgentLoop, RolloutConfig
from rl.rollout.engines.base import GenerationOutput, GenerationRequest, SamplingParams
from rl.types import Message, Task, Trajectory


class ReplayEngine:
    """An Engine that 'samples' scripted assistant turns, in order (one trajectory at a time)."""

    def __init__(self, tokenizer, actions: Sequence[str]) -> None:
        self.tokenizer = tokenizer
        self.actions = list(actions)
        self.turn = 0

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams
    ) -> list[GenerationOutput]:
        if len(requests) != 1:
            raise ValueError("ReplayEngine replays one trajectory at a time")
        if self.turn >= len(self.actions):
            raise ValueError("the env asked for more turns than the demonstration has")
        ids = self.tokenizer.encode(self.actions[self.turn], add_special_tokens=False)
        ids.append(self.tokenizer.eos_token_id)
        self.turn += 1
        return [GenerationOutput(ids, [0.0] * len(ids), "stop")]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        return None


def replay(
    tokenizer, env_factory, task: Task, actions: Sequence[str], *, native_tools: bool = False,
    max_total_tokens: int = 4096,
) -> Trajectory:
    """Run ``actions`` through a fresh env as if the model had sampled them."""
    cfg = RolloutConfig(
        max_turns=len(actions), max_total_tokens=max_total_tokens, max_tokens_per_turn=10**6,
    )
    loop = AgentLoop(ReplayEngine(tokenizer, actions), tokenizer, env_factory, cfg,
                     native_tools=native_tools)
    (traj,) = loop.run([task])
    return traj


class ConversationEnv:
    """Replays a recorded conversation: reset gives the messages before the first assistant
    turn; each step returns the messages up to the next assistant turn."""

    def __init__(self, messages: list[Message], tools: list[dict] | None = None) -> None:
        self.tools = list(tools or [])
        self._messages = messages
        self._pos = 0

    def _until_assistant(self) -> list[Message]:
        out = []
        while self._pos < len(self._messages) and self._messages[self._pos]["role"] != "assistant":
            out.append(self._messages[self._pos])
            self._pos += 1
        return out

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        self._pos = 0
        return self._until_assistant(), {}

    async def step(self, action_text: str) -> StepResult:
        self._pos += 1  # the assistant message being replayed
        obs = self._until_assistant()
        done = self._pos >= len(self._messages)
        return StepResult(messages=obs, terminated=done)

    async def close(self) -> None:
        return None


def load_jsonl_conversations(path: str | Path) -> list[dict[str, Any]]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{n}: not valid JSON ({e})") from None
            msgs = row.get("messages")
            if not isinstance(msgs, list) or not any(
                isinstance(m, dict) and m.get("role") == "assistant" for m in msgs
            ):
                raise ValueError(f"{path}:{n}: needs a 'messages' list with an assistant turn")
            for m in msgs:
                if not isinstance(m, dict) or "role" not in m or "content" not in m:
                    raise ValueError(f"{path}:{n}: every message needs 'role' and 'content'")
            rows.append(row)
    return rows


def conversation_trajectory(tokenizer, row: dict[str, Any], *, native_tools: bool) -> Trajectory:
    msgs = row["messages"]
    actions = [m["content"] for m in msgs if m["role"] == "assistant"]
    return replay(
        tokenizer, lambda: ConversationEnv(msgs, row.get("tools")),
        Task(id=str(row.get("id", "conversation")), prompt=""), actions,
        native_tools=native_tools,
    )
