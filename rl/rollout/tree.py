"""Tree rollouts (``rollout.tree``): PORTool forks at tool-call steps, Fission-GRPO error branches.

A group is sampled as today (``algorithm.group_size`` root episodes of one task). Then fork
points are picked on its episodes and each gets ``branch`` new episodes that share the
episode's exact token prefix through the fork turn's observation and continue on-policy:

* ``fork`` (PORTool, arXiv 2510.26020): after a model turn that made a tool call. Level 1 forks
  an episode's first such turn; level ``l`` an episode's ``l``-th, or a level ``l - 1`` branch's
  first such turn after its own fork turn (breadth first, up to ``depth`` levels).
* ``error`` (Fission-GRPO): after a turn whose observation was a tool error (a call that could
  not be parsed, validated or run), so recovery continuations are resampled on-policy from the
  errors the model actually makes; with ``error_hint`` a message describing the error follows the
  observation (observation tokens, loss mask 0; the branch then differs from its parent from the
  hint on).
* ``both``: fork after tool-call turns; the hint (if on) only where the observation was an error.

How a branch is made: **replay-to-fork**. A fresh env is reset on the same task with the same
seed, the parent's recorded model turns through the fork turn are stepped through it (their
sampled token ids and sampler logprobs are copied, never re-tokenized), and the re-produced
prompt, messages and observation tokens must equal the recorded ones; an env that answers
differently (not deterministic given its seed and the actions) has the branch skipped and
counted (``tree/skipped_nondeterministic``). The branch then continues with the agent loop's own
sampling (a different seed per level), so every branch is an ordinary trajectory under the
token-in/token-out contract, and two episodes of a tree share exactly their common prefix ids:
the engine's prefix cache serves it, ``learner.prefix_sharing`` computes it once and
``algorithm.credit=tree`` (rl/algos/tree.py, which derives tree nodes from the token ids) sees the
fork. Replay re-runs the env's tool calls before the fork (cheap for the deterministic tool envs
here; a snapshot of env state would avoid it, but the Env protocol has none).

Budget: every group gets exactly ``group_size + max_branches`` episodes. Fork points take
``branch`` slots each, breadth first, until ``max_branches`` is spent; slots that no fork point
fills (no qualifying turn, a skipped branch) are sampled as extra root episodes (``kind:
"fill"``), so runs with and without trees can be compared at equal sample budget.

Metadata: ``Trajectory.info["tree"]`` = ``{"id", "parent", "kind": root|branch|fill, "level",
"fork_turn", "hint", "hints", "skipped", "skipped_nondeterministic"}`` (skips are counted on the
parent; ``hints`` lists the ``[turn, text]`` of every hint on the path, which a replay of the
trajectory puts back before comparing).
:func:`tree_stats` turns it into step metrics, with the error-recovery rate (success of episodes
that saw an error observation) for every run.

Departures: PORTool samples a full tree by step; here the budget caps it and forks are taken
in group order. Fission-GRPO (arXiv 2601.15625) makes each failed trajectory, with diagnostic
feedback from a fine-tuned error simulator, a new training instance whose recovery rollouts
form their own group, triggered from a buffer; here the hint is a fixed template around the
env's own error message, any episode's error turn forks (not only failed episodes'), in the
same step, and the recoveries join their parent's group: with ``algorithm.credit=tree`` the
fork-relative term compares them with each other at the error turn (their own group's
baseline), the trajectory term with the whole group. Both written from the papers'
descriptions; no code reused. Levels are sampled one after
another (a level's branches in one batch): a tree rollout takes about ``1 + depth`` (+1 for
fill) times the wall time of a flat one with the same number of turns.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, Protocol, TypeVar

from envs.base import Env, StepResult
from rl.config import RolloutConfig
from rl.rollout.engines.base import GenerationOutput
from rl.types import Task, Trajectory, Turn


class Episode(Protocol):
    """What a tree reads of a live episode (rl.rollout.agent_loop's ``_Live``)."""

    traj: Trajectory
    env: Env
    done: bool


E = TypeVar("E", bound=Episode)


class TreeLoop(Protocol[E]):
    """The agent loop's steps a tree uses (rl.rollout.agent_loop.AgentLoop, which calls
    :func:`grow_tree`): start an episode, sample live episodes to their end, and the replay's
    step — turn a recorded model output into the env's action, then absorb the env's answer."""

    cfg: RolloutConfig

    async def _start(self, task: Task, seed: int, group: int) -> E: ...

    async def _drive(self, live: list[E], seed: int) -> None: ...

    def _append(self, x: E, o: GenerationOutput) -> str: ...

    def _absorb(self, x: E, sampled: list[int], res: StepResult, last: bool) -> None: ...


SEED_STRIDE = 100_003  # level l samples with the rollout seed + l * SEED_STRIDE


def is_error_turn(turn: Turn) -> bool:
    """The turn's observation reported a failed tool call (parse, validation or execution)."""
    return int(turn.info.get("tool_errors", 0) or 0) > 0 or any(
        c.error is not None for c in turn.tool_calls)


def is_tool_turn(turn: Turn) -> bool:
    """The model's turn made a tool call (well-formed or not)."""
    return bool(turn.tool_calls) or is_error_turn(turn)


def error_message(turn: Turn) -> str:
    """The turn's first tool-call error, for the hint."""
    msg = next((c.error for c in turn.tool_calls if c.error), None)
    return str(msg or turn.info.get("error") or "the tool returned an error")


def next_fork(traj: Trajectory, mode: str, after: int) -> int | None:
    """The first turn index ``> after`` a branch may fork after, or None. A fork turn must have
    been continued in ``traj`` (its observation is recorded, a later turn exists)."""
    qualifies = is_error_turn if mode == "error" else is_tool_turn
    for k in range(after + 1, len(traj.turns) - 1):
        if qualifies(traj.turns[k]):
            return k
    return None


def saw_error(traj: Trajectory) -> bool:
    """The model acted after an error observation (an error turn that is not the last)."""
    return any(is_error_turn(u) for u in traj.turns[:-1])


@dataclass
class _Node(Generic[E]):
    """A trajectory of a tree and where its fork search stands."""

    live: E
    cursor: int  # the next fork point is searched after this turn
    level: int  # forks on the path to this trajectory's last fork point


def _meta(id_: str, kind: str, parent: str | None = None, level: int = 0,
          fork_turn: int | None = None, hints: Sequence[tuple[int, str]] = (),
          hint: bool = False) -> dict[str, Any]:
    """``hints``: ``(turn, text)`` of every hint on the path (replays of a branch of this
    trajectory put them back); ``hint``: whether this branch's own fork added one."""
    return {"id": id_, "parent": parent, "kind": kind, "level": level, "fork_turn": fork_turn,
            "hint": hint, "hints": [list(h) for h in hints], "skipped": 0,
            "skipped_nondeterministic": 0}


async def grow_tree(loop: TreeLoop[E], live: list[E], tasks: Sequence[Task], seed: int,
                    group_offset: int) -> None:
    """Add the branch and fill episodes of every group to ``live`` (sampled to their end).

    ``live``: the groups' finished root episodes, group ``group_offset + i`` of ``tasks[i]``,
    reset with seed ``seed + i`` (as :meth:`AgentLoop.arun` samples them).
    """
    cfg = loop.cfg.tree
    groups: dict[int, list[_Node[E]]] = {}
    for x in list(live):
        nodes = groups.setdefault(x.traj.group_id, [])
        x.traj.info["tree"] = _meta(f"{x.traj.group_id}.{len(nodes)}", "root")
        nodes.append(_Node(x, cursor=-1, level=0))
    spent = dict.fromkeys(groups, 0)  # branch slots taken by fork points
    made = dict.fromkeys(groups, 0)  # branches sampled
    forked: dict[int, set[tuple[int, ...]]] = {g: set() for g in groups}

    def where(g: int) -> tuple[Task, int]:
        return tasks[g - group_offset], seed + g - group_offset

    for level in range(1, cfg.depth + 1):
        jobs: list[tuple[int, _Node[E], int, int]] = []  # (group, parent, fork turn, sibling)
        for g, nodes in groups.items():
            for node in list(nodes):
                if spent[g] >= cfg.max_branches:
                    break
                if node.level != level - 1:
                    continue
                t = node.live.traj
                k = next_fork(t, cfg.mode, node.cursor)
                if k is None:
                    continue
                node.cursor, node.level = k, level
                key = tuple(t.token_ids[: t.turns[k].end])
                if key in forked[g]:  # the same step reached twice (identical samples)
                    continue
                forked[g].add(key)
                n = min(cfg.branch, cfg.max_branches - spent[g])
                spent[g] += n
                jobs += [(g, node, k, j) for j in range(n)]
        if not jobs:
            break
        made_now = await asyncio.gather(*(
            _replay(loop, node, k, f"{node.live.traj.info['tree']['id']}-{k}.{j}", level,
                    *where(g)) for g, node, k, j in jobs))
        branches: list[E] = []
        for (g, _, k, _), b in zip(jobs, made_now):
            if b is not None:
                live.append(b)
                branches.append(b)
                groups[g].append(_Node(b, cursor=k, level=level))
                made[g] += 1
        await loop._drive(branches, seed + SEED_STRIDE * level)

    slots = [(g, j) for g in groups for j in range(cfg.max_branches - made[g])]
    starts = []
    for g, _ in slots:
        task, reset_seed = where(g)
        starts.append(loop._start(task, seed=reset_seed, group=g))
    fill = list(await asyncio.gather(*starts))
    for (g, j), x in zip(slots, fill):
        live.append(x)
        x.traj.info["tree"] = _meta(f"{g}.fill{j}", "fill")
    await loop._drive(fill, seed + SEED_STRIDE * (cfg.depth + 1))


async def _replay(loop: TreeLoop[E], node: _Node[E], k: int, id_: str, level: int, task: Task,
                  reset_seed: int) -> E | None:
    """A branch of ``node``'s trajectory after its turn ``k``: a fresh env replays the recorded
    turns ``0..k``; None (counted on the parent) when the env re-produces other messages or
    tokens, or the hint leaves no room in the token budget."""
    cfg = loop.cfg.tree
    parent = node.live.traj
    meta = parent.info["tree"]
    hint = None
    if cfg.error_hint and cfg.mode in ("error", "both") and is_error_turn(parent.turns[k]):
        hint = cfg.hint_text.format(error=error_message(parent.turns[k]))
    hints = {int(j): str(text) for j, text in meta["hints"]}  # earlier forks' hints: put back
    if hint is not None:
        hints[k] = hint
    x = await loop._start(task, seed=reset_seed, group=parent.group_id)
    keep = False
    try:
        for j in range(k + 1):
            turn = parent.turns[j]
            ids = parent.token_ids[turn.start: turn.end]
            out = GenerationOutput(ids, parent.logprobs[turn.start: turn.end], turn.finish_reason)
            res = await x.env.step(loop._append(x, out))
            if j in hints and not (res.terminated or res.truncated):
                res = replace(res, messages=[*res.messages,
                                             {"role": cfg.hint_role, "content": hints[j]}])
            loop._absorb(x, ids, res, last=False)  # the parent continued after turn k
            if x.done:
                break
        if not _same_prefix(x.traj, parent, k, hinted=hint is not None):
            meta["skipped"] += 1
            meta["skipped_nondeterministic"] += 1
            return None
        if x.done:  # the hint did not fit in rollout.max_total_tokens
            meta["skipped"] += 1
            return None
        x.traj.info["tree"] = _meta(id_, "branch", meta["id"], level, k,
                                    sorted(hints.items()), hint is not None)
        x.traj.info["tree"]["replayed_model_tokens"] = sum(x.traj.loss_mask)  # copied, not sampled
        keep = True
        return x
    finally:
        if not keep:
            await x.env.close()


def _same_prefix(t: Trajectory, parent: Trajectory, k: int, hinted: bool) -> bool:
    """``t`` (a replay through turn ``k``) re-produced ``parent``'s messages and tokens: all of
    them through turn ``k``'s observation, or through turn ``k`` and its env messages when a
    hint follows them."""
    msgs = t.messages[:-1] if hinted else t.messages
    if msgs != parent.messages[: len(msgs)]:
        return False
    if hinted:
        end = parent.turns[k].end
        return t.token_ids[:end] == parent.token_ids[:end]
    return t.token_ids == parent.token_ids[: parent.turns[k + 1].start]


def tree_stats(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Step metrics: ``episode/error_seen`` (share of episodes that acted after an error
    observation) and ``episode/error_recovery`` (their success rate), in every run; with tree
    rollouts also per-step counts ``tree/branches``, ``tree/hinted``, ``tree/fill``,
    ``tree/skipped``, ``tree/skipped_nondeterministic``, ``tree/episodes_per_group``,
    ``tree/replayed_model_tokens`` (model tokens branches copied from their parents: trained on,
    not sampled) and ``tree/error_branch_success`` (success of branches forked at an error
    turn)."""
    from rewards.outcome import success

    out: dict[str, float] = {}
    saw = [t for t in trajs if saw_error(t)]
    out["episode/error_seen"] = len(saw) / max(len(trajs), 1)
    if saw:
        out["episode/error_recovery"] = sum(success(t) for t in saw) / len(saw)
    metas = [t.info["tree"] for t in trajs if "tree" in t.info]
    if not metas:
        return out
    kinds = [m["kind"] for m in metas]
    out.update({
        "tree/branches": float(kinds.count("branch")),
        "tree/hinted": float(sum(bool(m["hint"]) for m in metas)),
        "tree/fill": float(kinds.count("fill")),
        "tree/skipped": float(sum(m["skipped"] for m in metas)),
        "tree/skipped_nondeterministic": float(sum(m["skipped_nondeterministic"] for m in metas)),
        "tree/episodes_per_group": len(trajs) / max(len({t.group_id for t in trajs}), 1),
        "tree/replayed_model_tokens": float(sum(m.get("replayed_model_tokens", 0)
                                                for m in metas)),
    })
    err = [t for t in trajs if t.info.get("tree", {}).get("kind") == "branch"
           and is_error_turn(t.turns[t.info["tree"]["fork_turn"]])]
    if err:
        out["tree/error_branch_success"] = sum(success(t) for t in err) / len(err)
    return out
