"""Multi-turn rollout with token-in / token-out bookkeeping.

Each trajectory keeps ONE token list. The model's sampled tokens are appended as they came from
the engine (never re-tokenized) with loss mask 1 and their sampler logprobs; everything else
(the template's turn closing, tool results, user turns, the next generation prompt) is appended
as the chat-template *delta*, mask 0: the conversation is rendered with a sentinel in place of
the content of the assistant turn just sampled, and the delta is the text after the sentinel
(:meth:`ChatRenderer.observation_text`). Taking the closing at the sentinel's known offset, not by
searching for the turn's text, keeps it right for turns such as ``"end"``, ``"im"`` or ``""``
that also occur inside the template's own closing ``<|im_end|>``.

The env's tool-call format (``env.format``, where it has one) can change two things. Its
``stop_tokens`` (harmony: ``<|call|>``, ``<|return|>``) become stop tokens of the engine besides
EOS. And a format with ``assistant_message`` (harmony) gets its turns into the conversation as
that structured message when the template does not render the raw turn verbatim (gpt-oss's
template wants ``thinking`` / ``tool_calls`` fields: :meth:`ChatRenderer.structured`); there is
no content to hold a sentinel then, so the delta is the render with the new messages minus the
render without them, cut at the turn's end (:meth:`ChatRenderer.observation_after`), after the
format's closing of a turn the model did not end itself. The sampled tokens stay verbatim either
way; only what the template renders after them comes from the structured message.

Templates that rewrite history (Qwen3 drops the ``<think>`` block of earlier assistant turns once
a new user message follows) are handled by keeping exactly what the model saw: the trajectory
is never re-rendered. Each turn's prompt is the previous prompt + the model's own sampled tokens
+ the delta above, and that token list is what the engine is asked to continue and what the
learner trains on, so the two always agree token for token (the engine is fed
``Trajectory.token_ids`` itself). The price: contexts keep earlier reasoning that the template
would drop (longer contexts than the template's rendering: prefill and learner tokens grow with
the reasoning of earlier turns), and they differ from what the same model sees at deployment
with its own template. Each turn sampled on a context that differs from the template's rendering
of the same conversation is counted in ``Trajectory.info["history_rewrites"]`` (metric
``episode/history_rewrites``; one more template render per turn, 0.27 ms for an 18-message
1.8k-token conversation on a loaded 2-core machine), so a run shows when it happens. The alternative — splitting an
episode into per-turn samples at every rewrite — matches deployment contexts but needs per-piece
advantages, turn rewards and credit in every consumer of a trajectory; it is not done here.

Two schedules (``RolloutConfig.schedule``):

- ``rounds``: all live trajectories of a round are sampled in one batched engine call; env steps
  of a round run concurrently (asyncio), so slow tools overlap. Every trajectory waits for the
  slowest one of its round. This suits engines that batch a call at a time (the HF engine).
- ``per_trajectory``: each episode is its own coroutine that awaits ``engine.agenerate`` for one
  request at a time; an engine with continuous batching (vLLM) runs them all in one batch, and a
  trajectory submits its next turn as soon as its own env step returns, without waiting for
  the others. ``auto`` picks it when the engine has ``agenerate``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from envs.base import Env, StepResult
from rl.config import RolloutConfig
from rl.rollout.engines.base import Engine, GenerationRequest, SamplingParams, turn_end_ids
from rl.types import Message, Task, Trajectory, Turn

ACTION_SENTINEL = "@@turnrl:sampled-turn@@"  # stands for the sampled turn's content in a render
_WARNED: set[str] = set()  # one-line warnings already printed by this process


class ChatRenderer:
    """Renders conversations with the tokenizer's chat template, tool-aware.

    ``native_tools``: pass the tool schemas to the template (templates with tool support);
    otherwise the env has already put them in the system prompt. ``generation_config``: the
    model's (``engine.generation_config``), whose ``eos_token_id`` says where its turns end
    besides the tokenizer's EOS (:func:`~rl.rollout.engines.base.turn_end_ids`).
    """

    def __init__(self, tokenizer, native_tools: bool, generation_config: Any = None) -> None:
        self.tokenizer = tokenizer
        self.native_tools = native_tools
        self.generation_config = generation_config
        self.eos_ids = set(turn_end_ids(tokenizer, generation_config))  # where turns end
        self._structured: dict[str, bool] = {}  # format name -> its turns go in as fields
        self._bos_checked = False
        self._gen_prompt: str | None = None

    def render(self, messages: list[Message], tools: list[dict] | None, gen_prompt: bool) -> str:
        return self.tokenizer.apply_chat_template(
            messages,
            tools=tools if (self.native_tools and tools) else None,
            tokenize=False,
            add_generation_prompt=gen_prompt,
        )

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def action_text(self, ids: list[int]) -> str:
        """The assistant message content for sampled ids (a trailing turn end is not content)."""
        if ids and ids[-1] in self.eos_ids:
            ids = ids[:-1]
        return self.tokenizer.decode(ids, skip_special_tokens=False)

    def missing_bos(self, ids: list[int]) -> str | None:
        """Why the rendered prompt ``ids`` should start with BOS and does not, or None.

        BOS is expected when there is one (the tokenizer's ``bos_token_id``, else the model's
        ``generation_config.bos_token_id``) and the chat template writes ``bos_token`` or the
        tokenizer says ``add_bos_token``. A tokenizer converted from GGUF can lose its BOS
        (transformers drops ``add_bos_token`` for Gemma 3), and prompts are encoded without
        special tokens (the template's own text is the prompt): the model then sees no BOS,
        which models trained with one (Gemma) answer badly. Not detected: a tokenizer that lost
        every trace of BOS (no bos token, no add_bos_token, a template without it).
        """
        tok = self.tokenizer
        bos = tok.bos_token_id
        if bos is None:
            bos = getattr(self.generation_config, "bos_token_id", None)
        if bos is None or (ids and ids[0] == bos):
            return None
        template = getattr(tok, "chat_template", None)
        templates = template.values() if isinstance(template, dict) else [template]
        why = [w for w, said in (
            ("the chat template writes bos_token",
             any(isinstance(t, str) and "bos_token" in t for t in templates)),
            ("tokenizer.add_bos_token is set", getattr(tok, "add_bos_token", None) is True),
        ) if said]
        if not why:
            return None
        name = tok.bos_token or tok.convert_ids_to_tokens(bos)
        return (f"prompts do not start with BOS ({name!r}, id {bos}) although {' and '.join(why)}"
                f"{'' if tok.bos_token else ', and the tokenizer has no bos_token'}: a tokenizer "
                "converted from GGUF can lose it; set bos_token (and add_bos_token) in the model "
                "folder's tokenizer_config.json, or use the model's original tokenizer")

    def check_bos(self, ids: list[int]) -> None:
        """Print :meth:`missing_bos` as a one-line warning, once per process (the first prompt
        of each renderer is checked: every prompt starts the same way)."""
        if self._bos_checked:
            return
        self._bos_checked = True
        problem = self.missing_bos(ids)
        if problem is not None and problem not in _WARNED:
            _WARNED.add(problem)
            print(f"[turnrl] WARNING: {problem}", flush=True)

    def stop_ids(self, fmt: Any) -> list[int]:
        """Token ids of the format's ``stop_tokens`` (where its turns end besides EOS) that are
        single tokens of this tokenizer; stop strings stay the config's (``rollout.stop``)."""
        encoded = [self.encode(t) for t in getattr(fmt, "stop_tokens", ())]
        return [ids[0] for ids in encoded if len(ids) == 1]

    def structured(self, fmt: Any) -> bool:
        """Whether turns of ``fmt`` go to the template as the format's structured message
        (``fmt.assistant_message``) rather than raw content: only for formats that have one, and
        only when the template does not render a raw turn of the format verbatim (gpt-oss's
        template raises on harmony markers in ``content``). Probed once per format."""
        if not callable(getattr(fmt, "assistant_message", None)):
            return False
        if fmt.name not in self._structured:
            from jinja2.exceptions import TemplateError

            turn = fmt.format_answer(ACTION_SENTINEL)
            probe = [{"role": "user", "content": "?"}, {"role": "assistant", "content": turn},
                     {"role": "user", "content": "?"}]
            try:
                raw = turn in self.render(probe, None, gen_prompt=True)
            except TemplateError:
                raw = False
            self._structured[fmt.name] = not raw
        return self._structured[fmt.name]

    def generation_prompt(self) -> str:
        """The text ``add_generation_prompt=True`` appends after a user message."""
        if self._gen_prompt is None:
            msgs = [{"role": "user", "content": "?"}]
            for _ in range(2):  # twice: gpt-oss's template renders today's date (midnight)
                without, with_ = self.render(msgs, None, False), self.render(msgs, None, True)
                if with_.startswith(without) and with_ != without:
                    self._gen_prompt = with_[len(without):]
                    return self._gen_prompt
            raise ValueError("the chat template's generation prompt is not a suffix of the "
                             "rendered conversation, so the turn's end cannot be found")
        return self._gen_prompt

    def observation_after(
        self, messages: list[Message], new_messages: list[Message], tools: list[dict] | None
    ) -> str:
        """Template text after the assistant turn that ends ``messages`` (a structured message,
        so no content sentinel): the render with ``new_messages`` minus the render without them
        (each with the generation prompt, so the turn renders as history in both; the first
        one's generation prompt is cut off). Starts after the template's own closing of the
        turn, which the model's stop token stands for."""
        gen = self.generation_prompt()
        for _ in range(2):  # twice: the date in gpt-oss's template may change between renders
            before = self.render(messages, tools, gen_prompt=True)
            after = self.render(messages + new_messages, tools, gen_prompt=True)
            head = before[: len(before) - len(gen)]
            if before.endswith(gen) and after.startswith(head):
                return after[len(head):]
        raise ValueError(
            "the chat template renders the conversation up to the sampled turn differently once "
            "new messages follow, so the tokens after the model's turn cannot be found"
        )

    def observation_text(
        self,
        messages: list[Message],
        new_messages: list[Message],
        tools: list[dict] | None,
        turn_end: int | None,
    ) -> str:
        """Template text between the model's last sampled token and the next generation.

        ``messages`` ends with the assistant message just sampled. Rendered with a sentinel as
        that message's content, so the closing starts at a known offset whatever the turn's text
        is, and whatever the template does to earlier turns (they are before the sentinel).
        ``turn_end``: the turn-end token the model ended its turn with (None: cut by a limit);
        when the template's closing starts with that token's text, the model already sampled it.
        """
        stand_in = [*messages[:-1], {**messages[-1], "content": ACTION_SENTINEL}]
        after = self.render(stand_in + new_messages, tools, gen_prompt=True)
        if after.count(ACTION_SENTINEL) != 1:
            raise ValueError(
                "the chat template did not render the assistant turn's content verbatim once, "
                "so the tokens after the model's turn cannot be found"
            )
        delta = after[after.index(ACTION_SENTINEL) + len(ACTION_SENTINEL) :]
        end_text = self.tokenizer.decode([turn_end]) if turn_end is not None else ""
        if end_text and delta.startswith(end_text):
            delta = delta[len(end_text) :]  # the model already sampled it
        return delta

    def turn_terminator(self) -> int:
        """The token that ends a scripted assistant turn (SFT replay): the one the chat template
        closes an assistant turn with, when the model's turns end there (in :attr:`eos_ids`:
        ChatML's ``<|im_end|>``, Gemma's ``<end_of_turn>``, Llama 3's ``<|eot_id|>``), else the
        tokenizer's EOS. So SFT teaches the token the model is stopped at and the template
        writes, not an EOS the template never shows after a turn."""
        eos = next(iter(turn_end_ids(self.tokenizer)), None)
        try:
            probe = [{"role": "user", "content": "?"},
                     {"role": "assistant", "content": ACTION_SENTINEL},
                     {"role": "user", "content": "?"}]
            text = self.render(probe, None, gen_prompt=False)
            closing = self.encode(text[text.index(ACTION_SENTINEL) + len(ACTION_SENTINEL):])
        except Exception:  # a template that cannot render the probe: the tokenizer's EOS
            closing = []
        if closing and closing[0] in self.eos_ids:
            return closing[0]
        if eos is None:
            raise ValueError("the tokenizer has no EOS and the chat template closes an assistant "
                             "turn with no token the model stops at: cannot end a scripted turn")
        return eos


@dataclass
class _Live:
    traj: Trajectory
    env: Env
    tools: list[dict]
    text: str = ""  # the text of token_ids: what the model saw (compared with the template's)
    done: bool = False
    fmt: Any = None  # the env's tool-call format, if it has one (``env.format``)
    stop_ids: tuple[int, ...] = ()  # the format's stop tokens (ChatRenderer.stop_ids)
    structured: bool = False  # turns go to the template as fields (ChatRenderer.structured)


class AgentLoop:
    """Runs episodes of ``env`` with ``engine``; returns :class:`Trajectory` records."""

    def __init__(
        self,
        engine: Engine,
        tokenizer,
        env_factory: Callable[[], Env],
        cfg: RolloutConfig,
        *,
        native_tools: bool = False,
    ) -> None:
        self.engine = engine
        self.env_factory = env_factory
        self.cfg = cfg
        self.chat = ChatRenderer(tokenizer, native_tools,
                                 getattr(engine, "generation_config", None))

    def sampling(self, seed: int | None = None, stop_ids: Sequence[int] = ()) -> SamplingParams:
        """``stop_ids``: the format's stop tokens (a harmony turn ends at ``<|call|>``)."""
        c = self.cfg
        return SamplingParams(
            max_new_tokens=c.max_tokens_per_turn, temperature=c.temperature, top_p=c.top_p,
            top_k=c.top_k, stop=list(c.stop), stop_token_ids=sorted(set(stop_ids)), seed=seed,
        )

    def per_trajectory(self) -> bool:
        mode = self.cfg.schedule
        if mode not in ("auto", "rounds", "per_trajectory"):
            raise ValueError(
                f"rollout.schedule must be auto, rounds or per_trajectory, got {mode!r}"
            )
        has_async = callable(getattr(self.engine, "agenerate", None))
        if mode == "per_trajectory" and not has_async:
            raise ValueError(
                f"rollout.schedule=per_trajectory needs an engine with agenerate "
                f"({type(self.engine).__name__} has none)"
            )
        return has_async and mode != "rounds"

    def run(
        self, tasks: Sequence[Task], n_samples: int = 1, seed: int = 0, group_offset: int = 0
    ) -> list[Trajectory]:
        """Sync wrapper around :meth:`arun` (the trainer is synchronous)."""
        return asyncio.run(self.arun(tasks, n_samples, seed, group_offset))

    async def arun(
        self, tasks: Sequence[Task], n_samples: int = 1, seed: int = 0, group_offset: int = 0
    ) -> list[Trajectory]:
        live: list[_Live] = []
        for gi, task in enumerate(tasks):
            for _ in range(n_samples):
                live.append(await self._start(task, seed=seed + gi, group=group_offset + gi))
        try:
            await self._drive(live, seed)
            if self.cfg.tree.mode != "off":  # branches of each group (rl/rollout/tree.py)
                from rl.rollout.tree import grow_tree

                await grow_tree(self, live, tasks, seed, group_offset)  # appends to live
            for x in live:
                if not x.done:
                    x.traj.truncated = True
                    x.done = True
        finally:
            await asyncio.gather(*(x.env.close() for x in live))
        for x in live:
            x.traj.validate()
        return [x.traj for x in live]

    async def _drive(self, live: list[_Live], seed: int) -> None:
        """Sample every trajectory of ``live`` to its end from the turn it is at (0 for a fresh
        episode; a tree branch starts after its fork turn). Sampling seeds: ``seed * 1009 + j``
        for turn ``j`` (per_trajectory), for round ``j`` of this call (rounds)."""
        if self.per_trajectory():
            await asyncio.gather(*(self._episode(x, seed) for x in live))
            return
        for turn in range(self.cfg.max_turns):
            active = [x for x in live if not x.done]
            if not active:
                break
            await self._round(active, seed=seed * 1009 + turn)

    async def _start(self, task: Task, seed: int, group: int) -> _Live:
        env = self.env_factory()
        messages, info = await env.reset(task, seed=seed)
        tools = list(getattr(env, "tools", []) or [])
        prompt = self.chat.render(messages, tools, gen_prompt=True)
        ids = self.chat.encode(prompt)
        self.chat.check_bos(ids)
        traj = Trajectory(
            task=task, token_ids=ids, loss_mask=[0] * len(ids), logprobs=[0.0] * len(ids),
            prompt_len=len(ids), messages=list(messages), group_id=group,
            info={"reset_info": info, "final_answer": None, "tool_errors": 0,
                  "history_rewrites": 0},
        )
        fmt = getattr(env, "format", None)
        return _Live(traj, env, tools, text=prompt, fmt=fmt,
                     stop_ids=tuple(self.chat.stop_ids(fmt)),
                     structured=self.chat.structured(fmt))

    def _request(self, x: _Live) -> GenerationRequest | None:
        """The next turn's request, or None (and truncated) when no token budget is left."""
        budget = self.cfg.max_total_tokens - len(x.traj.token_ids)
        if budget <= 0:
            x.traj.truncated, x.done = True, True
            return None
        return GenerationRequest(x.traj.token_ids, budget)

    async def _round(self, active: list[_Live], seed: int) -> None:
        reqs = {id(x): self._request(x) for x in active}
        active = [x for x in active if not x.done]
        if not active:
            return
        stops = {i for x in active for i in x.stop_ids}  # one env factory: one format
        outs = self.engine.generate([reqs[id(x)] for x in active], self.sampling(seed, stops))
        texts = [self._append(x, o) for x, o in zip(active, outs)]
        results: list[StepResult] = await asyncio.gather(
            *(x.env.step(text) for x, text in zip(active, texts))
        )
        for x, o, res in zip(active, outs, results):
            self._absorb(x, o.token_ids, res, last=len(x.traj.turns) >= self.cfg.max_turns)

    async def _episode(self, x: _Live, seed: int) -> None:
        """One trajectory, turn after turn, awaiting the engine for its own request only."""
        for turn in range(len(x.traj.turns), self.cfg.max_turns):
            req = self._request(x)
            if req is None:
                return
            sampling = self.sampling(seed * 1009 + turn, x.stop_ids)
            o = await self.engine.agenerate(req, sampling)  # type: ignore[attr-defined]
            res = await x.env.step(self._append(x, o))
            self._absorb(x, o.token_ids, res, last=turn == self.cfg.max_turns - 1)
            if x.done:
                return

    def _append(self, x: _Live, o) -> str:
        """Append the engine's sampled tokens (loss 1, their logprobs) as a new model turn."""
        t = x.traj
        start = len(t.token_ids)
        t.token_ids.extend(o.token_ids)
        t.loss_mask.extend([1] * len(o.token_ids))
        t.logprobs.extend(o.logprobs)
        text = self.chat.action_text(o.token_ids)
        x.text += self.chat.tokenizer.decode(o.token_ids, skip_special_tokens=False)
        t.turns.append(Turn(start, len(t.token_ids), text, o.finish_reason))
        t.messages.append(x.fmt.assistant_message(text) if x.structured
                          else {"role": "assistant", "content": text})
        return text

    def _absorb(self, x: _Live, sampled: list[int], res: StepResult, last: bool) -> None:
        t, turn = x.traj, x.traj.turns[-1]
        turn.reward = float(res.reward)
        turn.info = dict(res.info)
        turn.tool_calls = list(res.tool_calls)  # the typed step contract (envs/base.py)
        t.info["tool_errors"] += res.tool_errors
        if res.final_answer is not None:
            t.info["final_answer"] = res.final_answer
        if res.success is not None:
            t.info["success"] = res.success
        if res.score is not None:
            t.info["score"] = res.score
        if res.terminated or res.truncated:
            # A turn cut by a token limit (rollout.max_tokens_per_turn, or the trajectory budget)
            # that the env then ended the episode on makes it truncated too: what the env judged
            # was cut off (a base model copying the prompt until the cap ends every episode so,
            # and counted 0 truncated). Earlier cut turns are counted per turn (turn_truncated).
            cut = turn.finish_reason == "length"
            t.terminated, t.truncated, x.done = res.terminated, res.truncated or cut, True
            return
        if last:  # turn limit: no observation tokens that no model turn would follow
            t.truncated, x.done = True, True
            return
        new = list(res.messages)
        if x.structured:  # the format closes a turn the model did not end (cut by the limit)
            closing = x.fmt.turn_closing(self.chat.tokenizer.decode(
                sampled, skip_special_tokens=False))
            delta = closing + self.chat.observation_after(t.messages, new, x.tools)
        else:
            end = sampled[-1] if sampled and sampled[-1] in self.chat.eos_ids else None
            delta = self.chat.observation_text(t.messages, new, x.tools, end)
        obs = self.chat.encode(delta)
        if len(t.token_ids) + len(obs) >= self.cfg.max_total_tokens:
            # no room for the observation plus one model token: cut here, never over budget
            t.truncated, x.done = True, True
            return
        x.text += delta
        if x.text != self.chat.render(t.messages + new, x.tools, gen_prompt=True):
            t.info["history_rewrites"] += 1  # the template would show the model other text
        t.messages.extend(res.messages)
        t.token_ids.extend(obs)
        t.loss_mask.extend([0] * len(obs))
        t.logprobs.extend([0.0] * len(obs))


def trajectory_stats(trajs: Sequence[Trajectory]) -> dict[str, Any]:
    """Episode-level means for logging (the drivers prefix ``episode/``).

    Besides counts: ``truncated`` (episodes a limit ended: the turn limit, the token budget, or
    the env ending it on a turn a token limit cut), ``turn_truncated`` (per episode, the share of
    its model turns a token limit cut, ``finish_reason == "length"``: usually
    ``rollout.max_tokens_per_turn``; any cut turn counts, not only the last),
    ``lenient_calls`` (calls only the format's ``lenient`` option found),
    ``parse_errors`` and ``parse_errors/<kind>`` (calls the format could not read, by
    :func:`envs.formats.error_kind`), ``call_errors/<kind>`` (well-formed calls that failed),
    ``history_rewrites`` (turns sampled on a context the chat template would render otherwise).
    """
    from envs.formats import PARSE_ERROR_KINDS, error_kind

    n = max(len(trajs), 1)
    out: dict[str, Any] = {
        "turns": sum(len(t.turns) for t in trajs) / n,
        "tool_calls": sum(t.num_tool_calls for t in trajs) / n,
        "tool_errors": sum(t.info.get("tool_errors", 0) for t in trajs) / n,
        "model_tokens": sum(t.num_model_tokens for t in trajs) / n,
        "truncated": sum(t.truncated for t in trajs) / n,
        "turn_truncated": sum(turns_cut(t) for t in trajs) / n,
        "lenient_calls": sum(c.lenient for t in trajs for u in t.turns for c in u.tool_calls) / n,
        "history_rewrites": sum(t.info.get("history_rewrites", 0) for t in trajs) / n,
        "parse_errors": 0.0,
    }
    for c in (c for t in trajs for u in t.turns for c in u.tool_calls if c.error is not None):
        kind = error_kind(c.error or "")
        group = "parse_errors" if kind in PARSE_ERROR_KINDS else "call_errors"
        out[f"{group}/{kind}"] = out.get(f"{group}/{kind}", 0.0) + 1 / n
        if group == "parse_errors":
            out["parse_errors"] += 1 / n
    return out


def turns_cut(traj: Trajectory) -> float:
    """Share of the episode's model turns that a token limit cut (``finish_reason == "length"``:
    ``rollout.max_tokens_per_turn`` or the trajectory budget); 0.0 without turns."""
    return sum(u.finish_reason == "length" for u in traj.turns) / max(len(traj.turns), 1)
