"""Prefix-shared learner update vs the plain one on multi-turn tree rollouts (issue 16).

    .venv/bin/python bench/bench_prefix_tree.py [--tasks 2] [--group 1] [--depth 2] \
        [--branch 2] [--max-branches 3] [--mode fork] [--rounds 2] [--threads 1] [--out F]

The batch: ``env=compose`` (multi-turn compositional function calling, hermes-prompt tool
format) with the default model's tokenizer (SmolLM2-135M-Instruct), ``--tasks`` train tasks,
each a tree sampled by the real tree rollout code (rl/rollout/tree.py through the agent loop,
``rollout.tree.mode=--mode``) from a scripted engine instead of a model. The engine replays the
env's demonstration: the n-th sample from one exact token context is

* n = 0: the demonstration's next turn (so a root, and every branch after its fork turn,
  continues the demonstration);
* n = 1: that turn made wrong: a tool call with its first ``}`` dropped (malformed: an error
  observation, after which the demonstration goes on), or a reply without the answer;
* n = 2: the demonstration's turn after a sentence ("Let me check.") -- a different but correct
  sample; n >= 3 cycles 1, 2.

"Next turn" is found from the context alone: the demonstration split into user turns (each
closes with a reply), the current user turn is the count of user messages, and the calls of it
already made are those demonstration calls found verbatim after the last user message. So rows
share the system prompt + tools, the user turns and the turns before each fork token for token
(the tree code replays the parent through the fork and checks it). Error hints
(``rollout.tree.error_hint``) are not offered: a hint is a user message, which this lookup would
take for the next user turn.

Timing (the loop of bench/bench_prefix.py): the default learner settings (torch, autocast auto,
micro-batch 8, AdamW), SmolLM2-135M-Instruct, same weights and a fresh optimizer before every
update, a warm-up update on two rows, then ``--rounds`` rounds alternating plain / shared (order
flipped every round). Advantages +-1 per row (the timing does not depend on their values).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_prefix  # noqa: E402  (sibling script: the timing loop and token accounting)

USER = "<|im_start|>user"
PREAMBLE = "Let me check.\n"


def is_call(turn: str) -> bool:
    return "<tool_call>" in turn


def user_turns(demo: Sequence[str]) -> list[list[str]]:
    """The demonstration split per user turn: each part is its calls, then the closing reply."""
    parts: list[list[str]] = [[]]
    for turn in demo:
        parts[-1].append(turn)
        if not is_call(turn):
            parts.append([])
    if parts[-1]:
        raise ValueError(f"demonstration ends with a tool call, not a reply: {demo[-1]!r}")
    return parts[:-1]


def next_demo_turn(parts: list[list[str]], context: str, user_tag: str = USER) -> str:
    """The demonstration's next turn for a context (the chat text so far): user turn
    ``count(user_tag) - 1``, after the calls of it already found verbatim in the context."""
    u = context.count(user_tag) - 1
    if not 0 <= u < len(parts):
        raise ValueError(f"context has {u + 1} user turns; the demonstration has {len(parts)}")
    tail = context.rsplit(user_tag, 1)[-1]
    done = 0
    for turn in parts[u][:-1]:
        at = tail.find(turn)
        if at < 0:
            break
        tail, done = tail[at + len(turn):], done + 1
    return parts[u][done]


def perturb(turn: str, n: int) -> str:
    """The n-th sample of a demonstration turn (see the module docstring)."""
    if n == 0:
        return turn
    if (n - 1) % 2 == 0:  # wrong
        return turn.replace("}", "", 1) if is_call(turn) else "I could not find that."
    return PREAMBLE + turn  # different, still right


class ScriptedEngine:
    """Engine protocol stand-in: the n-th request for one exact token context gets
    ``perturb(next demonstration turn, n)`` (the demonstration found by its task prompt in the
    context), with made-up logprobs; no model."""

    def __init__(self, tokenizer, demos: dict[str, list[str]]) -> None:
        self.tok = tokenizer
        self.parts = {prompt: user_turns(d) for prompt, d in demos.items()}
        self.seen: dict[tuple[int, ...], int] = {}
        self.calls = 0

    def text(self, prompt_ids: Sequence[int]) -> str:
        context = self.tok.decode(list(prompt_ids))
        hits = [p for p in self.parts if p in context]
        if len(hits) != 1:
            raise ValueError(f"context matches {len(hits)} task prompts; need exactly one")
        key = tuple(prompt_ids)
        n = self.seen.get(key, 0)
        self.seen[key] = n + 1
        return perturb(next_demo_turn(self.parts[hits[0]], context), n)

    def generate(self, requests, sampling):
        from rl.rollout.engines.base import GenerationOutput

        outs = []
        for r in requests:
            ids = self.tok.encode(self.text(r.prompt_ids), add_special_tokens=False)
            ids.append(self.tok.eos_token_id)
            self.calls += 1
            outs.append(GenerationOutput(ids, [-0.5] * len(ids), "stop"))
        return outs

    def update_weights(self, named_tensors) -> None:
        return None


def make_tree_trajectories(n_tasks: int, group: int, mode: str = "fork", branch: int = 2,
                           depth: int = 2, max_branches: int = 4, overrides: Sequence[str] = ()):
    """Tree rollouts of ``n_tasks`` compose train tasks (``group + max_branches`` rows each),
    the tokenizer's pad id and the config."""
    from rl.build import build_env_factory
    from rl.config import TreeConfig, load_config, to_dataclass
    from rl.models import load_tokenizer
    from rl.rollout.agent_loop import AgentLoop
    from rl.tasks import build_tasks

    cfg = to_dataclass(load_config(["env=compose", *overrides]))
    tok = load_tokenizer(cfg.model.name)
    factory, native = build_env_factory(cfg)
    tasks = build_tasks(cfg, "train", n_tasks)
    demos = {t.prompt: factory().demonstration(t) for t in tasks}  # type: ignore[attr-defined]
    cfg.rollout.schedule = "rounds"
    cfg.rollout.tree = TreeConfig(mode=mode, branch=branch, depth=depth,
                                  max_branches=max_branches)
    loop = AgentLoop(ScriptedEngine(tok, demos), tok, factory, cfg.rollout, native_tools=native)
    trajs = loop.run(tasks, n_samples=group, seed=cfg.trainer.seed)
    return trajs, tok.pad_token_id if tok.pad_token_id is not None else 0, cfg


def lcp(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def expected_shared(t, parent) -> int:
    """Tokens a branch shares with its parent by construction: through the fork turn's
    observation (through the fork turn's env messages when a hint follows)."""
    m = t.info["tree"]
    k = m["fork_turn"]
    return parent.turns[k].end if m["hint"] else parent.turns[k + 1].start


def tree_summary(trajs) -> dict:
    """Per tree (group): rows by kind, tokens, the trie's tokens (each shared prefix once),
    the prompt length, and every branch's shared prefix with its parent: ``shared`` (measured
    common prefix of the two token lists), ``expected`` (through the fork, by construction) and
    ``same_start`` (leading tokens the two turns after the fork have in common, e.g. both open
    ``<tool_call>{"name": "``); exact sharing means ``shared == expected + same_start``."""
    from rl.learner.prefix import build_plan
    from rl.types import Batch

    out = {}
    for g in sorted({t.group_id for t in trajs}):
        rows = [t for t in trajs if t.group_id == g]
        ids = {t.info["tree"]["id"]: t for t in rows}
        b = Batch.from_trajectories(rows, torch.zeros(len(rows)), pad_id=0)
        branches = []
        for t in rows:
            m = t.info["tree"]
            if m["kind"] == "branch":
                p = ids[m["parent"]]
                e = expected_shared(t, p)
                branches.append({"id": m["id"], "parent": m["parent"], "level": m["level"],
                                 "fork_turn": m["fork_turn"],
                                 "shared": lcp(t.token_ids, p.token_ids),
                                 "expected": e,
                                 "same_start": lcp(t.token_ids[e:], p.token_ids[e:])})
        out[str(g)] = {
            "rows": len(rows), "kinds": {k: sum(t.info["tree"]["kind"] == k for t in rows)
                                         for k in ("root", "branch", "fill")},
            "tokens": sum(len(t.token_ids) for t in rows),
            "trie_tokens": build_plan(b.input_ids, b.attention_mask).packed_tokens,
            "prompt_len": [t.prompt_len for t in rows],
            "turns": [len(t.turns) for t in rows],
            "branches": branches,
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=2)
    ap.add_argument("--group", type=int, default=1, help="root episodes per task")
    ap.add_argument("--mode", default="fork", choices=["fork", "error", "both"])
    ap.add_argument("--branch", type=int, default=2)
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--max-branches", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--autocast", default="", help="override learner.autocast (auto | bf16 | fp32)")
    ap.add_argument("--dry-run", action="store_true", help="build and describe the batch only")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rl.learner.prefix import build_plan
    from rl.types import Batch

    trajs, pad, cfg = make_tree_trajectories(args.tasks, args.group, args.mode, args.branch,
                                             args.depth, args.max_branches)
    trees = tree_summary(trajs)
    bad = [(g, b) for g, tr in trees.items() for b in tr["branches"]
           if b["shared"] != b["expected"] + b["same_start"]]
    if bad:
        raise SystemExit(f"branches that do not share exactly their prefix: {bad}")
    lengths = sorted(len(t.token_ids) for t in trajs)
    adv = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(len(trajs))])
    batch = Batch.from_trajectories(trajs, adv, pad_id=pad)
    whole = build_plan(batch.input_ids, batch.attention_mask).packed_tokens
    real = int(batch.attention_mask.sum())
    print(f"{len(trajs)} rows in {len(trees)} trees; length median {statistics.median(lengths)} "
          f"(min {lengths[0]}, max {lengths[-1]}); batch tokens {real}; whole-batch trie "
          f"{whole}; per tree: " + "; ".join(
              f"{g}: {tr['rows']} rows {tr['kinds']}, {tr['tokens']} tokens, trie "
              f"{tr['trie_tokens']}, prompt {tr['prompt_len'][0]}, shared with parent "
              f"{[b['shared'] for b in tr['branches']]}" for g, tr in trees.items()), flush=True)
    if args.dry_run:
        return
    from rl.models import load_model

    model = load_model(cfg.model.name)
    rows = bench_prefix.time_variants(model, cfg, batch, args.rounds, args.autocast,
                                      (("plain", False, None), ("shared", True, None)))
    bench_prefix.print_table(rows)
    g0, g1 = rows["plain"]["grad_norm"], rows["shared"]["grad_norm"]
    print(f"grad norm relative difference {abs(g1 - g0) / abs(g0):.2e}")
    if args.out:
        with open(args.out, "w") as f:
            g0, g1 = rows["plain"]["grad_norm"], rows["shared"]["grad_norm"]
            json.dump({"args": vars(args), "rows": rows,
                       "speedup": rows["plain"]["median_s"] / rows["shared"]["median_s"],
                       "grad_norm_rel_diff": abs(g1 - g0) / abs(g0),
                       "real_tokens": real, "whole_batch_trie_tokens": whole,
                       "lengths": lengths, "trees": trees}, f, indent=1)


if __name__ == "__main__":
    main()
