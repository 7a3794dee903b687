"""Prefix-shared learner update vs the plain one, side by side (issue 16).

    .venv/bin/python bench/bench_prefix.py [--tasks 8] [--group 4] [--rounds 3] [--threads 1]

Trajectories like ``make train``'s: the default config (env=math, SmolLM2-135M-Instruct, its
tool prompt), ``--tasks`` train tasks x a group of ``--group``, each trajectory replayed through
the real env (rl.sft.replay), so prompts, tool-call syntax and observations are the real tokens.
The group's samples differ as a GRPO group does: the reference call and answer, a sentence
before the call, a wrong final answer, an answer-only guess (cycled). Advantages +-1.

Both variants run the default learner settings (``learner.*`` defaults: torch, autocast auto (bf16
only on CPUs that compute it natively), micro-batch 8, AdamW) from the same weights and a fresh
optimizer state before every update, in one process, after a warm-up update on two rows:
``--rounds`` rounds alternating plain / shared (order flipped each round); the median update time
is reported. Tokens: ``real`` = attention-mask tokens of the batch, ``computed`` = what the forward
runs on (plain: the padded micro-batches, rows x width; shared: the packed sequences, padded per
micro-batch).
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
import zlib

import torch


def make_trajectories(n_tasks: int, group: int):
    """``n_tasks x group`` replayed math-env trajectories and the tokenizer's pad id."""
    from rl.build import build_env_factory
    from rl.config import load_config, to_dataclass
    from rl.models import load_tokenizer
    from rl.sft import replay
    from rl.tasks import build_tasks

    cfg = to_dataclass(load_config([]))
    tok = load_tokenizer(cfg.model.name)
    factory, native = build_env_factory(cfg)
    tasks = build_tasks(cfg, "train", n_tasks)
    trajs = []
    for gi, task in enumerate(tasks):
        env = factory()
        demo = env.demonstration(task)  # type: ignore[attr-defined]
        fmt = env.format  # type: ignore[attr-defined]
        wrong = fmt.format_answer(str(zlib.crc32(task.id.encode()) % 97))  # deterministic
        variants = [demo, ["I will use the tool for this. " + demo[0]] + demo[1:],
                    demo[:-1] + [wrong], [wrong]]
        for k in range(group):
            t = replay(tok, factory, task, variants[k % len(variants)], native_tools=native)
            t.group_id = gi
            trajs.append(t)
    return trajs, tok.pad_token_id if tok.pad_token_id is not None else 0, cfg


def computed(batch, learner) -> tuple[int, int]:
    """(token slots, attention scores per head and layer) the update's forward computes."""
    from rl.learner import prefix

    L = batch.input_ids.shape[1]
    mbs = learner.cfg.micro_batch_size
    if not learner.cfg.prefix_sharing:
        return sum(len(mb) * L for mb in batch.split(mbs)), len(batch) * L * L
    slots = area = 0
    for _, mb in prefix.prefix_microbatches(batch, mbs):
        plan = prefix.build_plan(mb.input_ids, mb.attention_mask,
                                 max_len=prefix.packed_length_cap(mbs, L))
        G, P = plan.input_ids.shape
        slots, area = slots + G * P, area + G * P * P
    return slots, area


class _cap:
    """Temporarily replace rl.learner.prefix.packed_length_cap (None: keep it)."""

    def __init__(self, fn) -> None:
        self.fn = fn

    def __enter__(self):
        from rl.learner import prefix

        self.saved = prefix.packed_length_cap
        if self.fn is not None:
            prefix.packed_length_cap = self.fn

    def __exit__(self, *exc):
        from rl.learner import prefix

        prefix.packed_length_cap = self.saved


def time_variants(model, cfg, batch, rounds: int, autocast: str, variants) -> dict[str, dict]:
    """Update seconds of each ``(name, prefix_sharing, packed_length_cap or None)`` variant on
    ``batch``: one TorchLearner each over ``model`` (``cfg.learner`` with ``prefix_sharing`` and
    ``autocast`` overridden), a warm-up update on two rows, then ``rounds`` rounds alternating
    (order flipped each round), each update from the same weights and a fresh optimizer.
    Returns per variant: update seconds, their median, token slots, attention scores, real
    tokens/s and the last update's grad norm."""
    from rl.config import LearnerConfig, LossConfig
    from rl.learner.prefix import select_rows
    from rl.learner.torch import TorchLearner
    from rl.types import Batch

    state = copy.deepcopy(model.state_dict())
    learners, caps = {}, {}
    for name, share, cap in variants:
        lc = copy.deepcopy(cfg.learner)
        over = {"prefix_sharing": share, **({"autocast": autocast} if autocast else {})}
        learners[name] = TorchLearner(model, LearnerConfig(**{**vars(lc), **over}))
        caps[name] = cap
    loss_cfg = LossConfig()
    times: dict[str, list[float]] = {k: [] for k in learners}
    metrics: dict[str, dict] = {}
    for name, learner in learners.items():  # warm-up on two rows (allocator, kernels)
        with _cap(caps[name]):
            learner.update(select_rows(batch, [0, 1]), loss_cfg)
        learner.reset_optimizer()
    for r in range(rounds):  # alternating, the order flipped every round
        names = list(learners) if r % 2 == 0 else list(reversed(learners))
        for name in names:
            learner = learners[name]
            model.load_state_dict(state)
            learner.reset_optimizer()
            b = Batch(**{k: (v.clone() if isinstance(v, torch.Tensor) else v)
                         for k, v in vars(batch).items()})
            with _cap(caps[name]):
                t0 = time.perf_counter()
                m = learner.update(b, loss_cfg)
                dt = time.perf_counter() - t0
            learner.reset_optimizer()  # one AdamW state alive at a time (1 GB each)
            times[name].append(dt)
            metrics[name] = m
            print(f"round {r} {name}: {dt:.2f} s  grad_norm {m['grad_norm']:.4f}", flush=True)
    model.load_state_dict(state)
    real = int(batch.attention_mask.sum())
    rows = {}
    for name, learner in learners.items():
        med = statistics.median(times[name])
        with _cap(caps[name]):
            slots, area = computed(batch, learner)
        rows[name] = {"update_s": times[name], "median_s": med,
                      "computed_tokens": slots, "attention_scores": area,
                      "real_tokens_per_s": real / med, "grad_norm": metrics[name]["grad_norm"]}
    return rows


def print_table(rows: dict[str, dict]) -> None:
    """The markdown table of :func:`time_variants`' rows (speed relative to ``plain``)."""
    base = rows["plain"]
    print("| learner pass | token slots | attention scores | update s: median (each) | "
          "real tokens/s | vs plain | grad norm |")
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        print(f"| {name} | {row['computed_tokens']} | {row['attention_scores']} | "
              f"{row['median_s']:.1f} ({', '.join(f'{x:.1f}' for x in row['update_s'])}) | "
              f"{row['real_tokens_per_s']:.0f} | {base['median_s'] / row['median_s']:.2f}x | "
              f"{row['grad_norm']:.4f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--autocast", default="", help="override learner.autocast (auto | bf16 | fp32)")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from rl.learner.prefix import build_plan
    from rl.models import load_model
    from rl.types import Batch

    trajs, pad, cfg = make_trajectories(args.tasks, args.group)
    lengths = sorted(len(t.token_ids) for t in trajs)
    first_model = sorted(t.loss_mask.index(1) for t in trajs)
    adv = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(len(trajs))])
    batch = Batch.from_trajectories(trajs, adv, pad_id=pad)
    whole = build_plan(batch.input_ids, batch.attention_mask)
    print(f"{len(trajs)} trajectories; length median {statistics.median(lengths)} "
          f"(min {lengths[0]}, max {lengths[-1]}); tokens before the first model token median "
          f"{statistics.median(first_model)}; batch tokens {int(batch.attention_mask.sum())}, "
          f"whole-batch trie {whole.packed_tokens}", flush=True)

    model = load_model(cfg.model.name)
    rows = time_variants(model, cfg, batch, args.rounds, args.autocast, (
        ("plain", False, None), ("shared", True, None),
        ("shared, sequences up to m*L", True, lambda m, L: m * L)))
    speedup = rows["plain"]["median_s"] / rows["shared"]["median_s"]
    real = int(batch.attention_mask.sum())
    print_table(rows)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows, "speedup": speedup,
                       "real_tokens": real, "lengths": lengths}, f, indent=1)


if __name__ == "__main__":
    main()
