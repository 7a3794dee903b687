"""Cold-start SFT data on the RL tokenization path.

Demonstrations are *replayed* through the same agent loop that RL uses: a scripted engine emits
the reference assistant turns (tokenized once, plus the turn's terminator unless the turn already
ends where sampling stops: a turn end of the model, or a stop token of the env's format such as
harmony's ``<|call|>``) and the real env produces the tool results. The terminator is the token
the chat template closes an assistant turn with when the model stops there (Gemma's
``<end_of_turn>``, not its ``<eos>``), else the tokenizer's EOS
(:meth:`~rl.rollout.agent_loop.ChatRenderer.turn_terminator`). So SFT sequences obey the
token-in/token-out contract and the loss mask covers exactly the assistant tokens, with no second
tokenization code path.

A user's JSONL of chat trajectories (``{"messages": [...], "tools": [...]}`` per line) goes the
same way: a conversation env replays its non-assistant messages as observations.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

from envs.base import Env, StepResult
from rl.config import SFTConfig
from rl.rollout.agent_loop import AgentLoop, ChatRenderer, RolloutConfig
from rl.sampling import GenerationOutput, GenerationRequest, SamplingParams
from rl.types import Message, Task, Trajectory


class ReplayEngine:
    """An Engine that 'samples' scripted assistant turns, in order (one trajectory at a time).

    A turn ends as a sampler would end it: with the terminator appended
    (:meth:`~rl.rollout.agent_loop.ChatRenderer.turn_terminator`), unless its last token is
    already one sampling stops at (a turn end of the model: the tokenizer's EOS or its
    ``generation_config.eos_token_id``; or ``sampling.stop_token_ids``: the agent loop passes
    the format's stop tokens, e.g. harmony's ``<|call|>`` and ``<|return|>``). Appending EOS after
    ``<|call|>`` would teach a token the model never samples there. ``generation_config``: the
    model's (as the engines read it), so replay and sampling agree on where turns end.
    """

    def __init__(self, tokenizer, actions: Sequence[str], generation_config: Any = None) -> None:
        self.tokenizer = tokenizer
        self.actions = list(actions)
        self.turn = 0
        self.generation_config = generation_config  # the agent loop reads the turn ends from it
        chat = ChatRenderer(tokenizer, native_tools=False, generation_config=generation_config)
        self.eos_ids, self.eos_id = chat.eos_ids, chat.turn_terminator()

    def generate(
        self, requests: Sequence[GenerationRequest], sampling: SamplingParams
    ) -> list[GenerationOutput]:
        if len(requests) != 1:
            raise ValueError("ReplayEngine replays one trajectory at a time")
        if self.turn >= len(self.actions):
            raise ValueError("the env asked for more turns than the demonstration has")
        ids = self.tokenizer.encode(self.actions[self.turn], add_special_tokens=False)
        if not ids or ids[-1] not in self.eos_ids | set(sampling.stop_token_ids):
            ids.append(self.eos_id)
        self.turn += 1
        return [GenerationOutput(ids, [0.0] * len(ids), "stop")]

    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        return None


def replay(
    tokenizer, env_factory, task: Task, actions: Sequence[str], *, native_tools: bool = False,
    max_total_tokens: int = 4096, generation_config: Any = None,
) -> Trajectory:
    """Run ``actions`` through a fresh env as if the model had sampled them;
    ``generation_config``: the model's (where its turns end, :class:`ReplayEngine`)."""
    cfg = RolloutConfig(
        max_turns=len(actions), max_total_tokens=max_total_tokens, max_tokens_per_turn=10**6,
    )
    loop = AgentLoop(ReplayEngine(tokenizer, actions, generation_config), tokenizer, env_factory,
                     cfg, native_tools=native_tools)
    (traj,) = loop.run([task])
    return traj


class ConversationEnv:
    """Replays a recorded conversation: reset gives the messages before the first assistant
    turn; each step returns the messages up to the next assistant turn.

    ``format``: the run's tool-call format, which the turns are written in (the agent loop reads
    where its turns end and how the chat template takes them); None for plain chat."""

    def __init__(self, messages: list[Message], tools: list[dict] | None = None,
                 format: Any = None) -> None:
        self.tools = list(tools or [])
        self.format = format
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


ROLES = ("system", "user", "assistant", "tool")


class SFTDataError(ValueError):
    """A row of ``sft.data_path`` that cannot be trained on; the message names file and line."""


def _check_message(m: Any, i: int) -> str | None:
    """Why message ``i`` of a row cannot be replayed, or None."""
    if not isinstance(m, dict):
        return f"message {i} is a JSON {_kind(m)}, expected an object with 'role' and 'content'"
    role = m.get("role")
    if role not in ROLES:
        return (f"message {i} has role {role!r}, expected one of {', '.join(ROLES)}"
                if "role" in m else f"message {i} has no 'role'")
    if "content" not in m:
        return f"message {i} ({role}) has no 'content'"
    if m.get("tool_calls"):  # the agent loop replays text: calls are written in the content
        return (f"message {i} ({role}) has structured 'tool_calls', which are not replayed: "
                f"write each call in 'content' in the env's tool-call format (e.g. "
                f"<tool_call>{{\"name\": ..., \"arguments\": {{...}}}}</tool_call>)")
    if not isinstance(m["content"], str):
        return f"message {i} ({role}) has {_kind(m['content'])} content, expected a string"
    return None


def _kind(v: Any) -> str:
    return {dict: "object", list: "array", str: "string", bool: "boolean",
            type(None): "null"}.get(type(v), "number")


def load_jsonl_conversations(path: str | Path) -> list[dict[str, Any]]:
    """Every row of a JSONL file of conversations, validated before any model loads.

    A row is ``{"messages": [{"role": ..., "content": "..."}, ...], "tools": [...]}`` (``tools``
    optional); roles are system | user | assistant | tool, contents are strings (tool calls
    written in the content, in the env's format), and at least one turn is the assistant's.
    Blank lines are skipped. Raises :class:`SFTDataError` naming ``path:line`` and what to fix.
    """
    p = Path(path)
    if not p.is_file():
        raise SFTDataError(f"sft.data_path: {p} " + (
            "is not a file" if p.exists() else "does not exist"))
    rows = []
    try:
        with open(p, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                rows.append(_check_row(line, f"{p}:{n}"))
    except UnicodeDecodeError as e:
        raise SFTDataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    if not rows:
        raise SFTDataError(f"{p}: no conversations (the file is empty); write one JSON object "
                           f"per line with a 'messages' list")
    return rows


def _check_row(line: str, where: str) -> dict[str, Any]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise SFTDataError(f"{where}: not valid JSON ({e})") from None
    if not isinstance(row, dict):
        raise SFTDataError(f"{where}: the row is a JSON {_kind(row)}, expected an object "
                           f"with a 'messages' list")
    msgs = row.get("messages")
    if not isinstance(msgs, list) or not msgs:
        got = "missing" if "messages" not in row else f"a JSON {_kind(msgs)}" if not \
            isinstance(msgs, list) else "empty"
        raise SFTDataError(f"{where}: needs a non-empty 'messages' list ({got})")
    for i, m in enumerate(msgs):
        problem = _check_message(m, i)
        if problem is not None:
            raise SFTDataError(f"{where}: {problem}")
    if not any(m["role"] == "assistant" for m in msgs):
        raise SFTDataError(f"{where}: no assistant turn (nothing to train on); 'messages' "
                           f"needs at least one message with role 'assistant'")
    tools = row.get("tools")
    if tools is not None and not (isinstance(tools, list)
                                  and all(isinstance(t, dict) for t in tools)):
        raise SFTDataError(f"{where}: 'tools' must be a list of JSON schema objects")
    return row


def conversation_trajectory(tokenizer, row: dict[str, Any], *, native_tools: bool,
                            tool_format: Any = None, generation_config: Any = None) -> Trajectory:
    """One JSONL row replayed; ``tool_format``: the run's format (ConversationEnv);
    ``generation_config``: the model's (:func:`replay`)."""
    msgs = row["messages"]
    actions = [m["content"] for m in msgs if m["role"] == "assistant"]
    return replay(
        tokenizer, lambda: ConversationEnv(msgs, row.get("tools"), tool_format),
        Task(id=str(row.get("id", "conversation")), prompt=""), actions,
        native_tools=native_tools, generation_config=generation_config,
    )


def sft_trajectories(c: SFTConfig, tokenizer, env_factory: Callable[[], Env], *,
                     native_tools: bool, train_tasks: Sequence[Task],
                     generation_config: Any = None) -> list[Trajectory]:
    """The cold start's demonstrations, on the RL token path: the first ``c.num_examples`` rows
    of ``c.data_path`` (a user's JSONL, replayed in the env's format), else the env's own
    demonstrations of the last ``c.num_examples`` of ``train_tasks`` (RL batches come from the
    start of the stream). ``generation_config``: the model's (where its turns end, :func:`replay`).
    """
    if c.data_path:
        rows = load_jsonl_conversations(c.data_path)[: c.num_examples]
        fmt = getattr(env_factory(), "format", None)  # the format RL will sample in
        return [conversation_trajectory(tokenizer, r, native_tools=native_tools, tool_format=fmt,
                                        generation_config=generation_config) for r in rows]
    out = []
    for task in list(train_tasks)[-c.num_examples:]:
        actions = env_factory().demonstration(task)  # type: ignore[attr-defined]
        out.append(replay(tokenizer, env_factory, task, actions, native_tools=native_tools,
                          generation_config=generation_config))
    return out
