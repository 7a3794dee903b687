"""The local driver: this process (and its torchrun peers) runs every phase.

The run's stage machine and the step's scoring, credit, batching and metrics are the shared step
core (rl/step.py), also used by the Ray driver; what is here is where each phase runs.
``train_step`` is the RL step on one screen.
"""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rl import checkpoint as ckpt
from rl.config import Config
from rl.health import health_postfix
from rl.learner import dist, make_learner, rollout_policy
from rl.rollout.agent_loop import AgentLoop
from rl.step import (
    RunState,
    StepCore,
    build_credit,
    eval_line,
    fit,
    needs_reference,
    reseed_after_resume,
    resolved_loss,
    seed_everything,
    write_results,
)
from rl.tooluse import env_needs_tools, tool_postfix
from rl.tracking import RunLogger, Timer
from rl.types import Batch, Task, Trajectory


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, config_yaml: str = "") -> None:
        from rl.build import build_parts

        self.cfg, self.run_dir, self.config_yaml = cfg, run_dir, config_yaml
        if cfg.trainer.num_threads > 0:
            torch.set_num_threads(cfg.trainer.num_threads)
        seed_everything(cfg.trainer.seed)
        # under torchrun: join the group (NCCL when model.device is a GPU)
        dist.check_data_parallel(cfg, dist.init_from_env(device=cfg.model.device))
        self.parts = build_parts(cfg)
        self.tokenizer = self.parts.tokenizer
        self.learner = make_learner(self.parts.model, cfg.learner, device=cfg.model.device)
        self.loss_cfg = resolved_loss(cfg)  # Dr.GRPO normaliser: the generation budget
        self.engine = self.parts.make_engine(*rollout_policy(self.learner))
        self.loop = AgentLoop(self.engine, self.tokenizer, self.parts.env_factory, cfg.rollout,
                              native_tools=self.parts.native_tools)
        # Credit is assigned on rank 0 for every rank's rows (rl/algos/credit.py).
        # ArCHer's fresh actions end where the loop's turns end (harmony: at <|call|> too)
        a = cfg.algorithm
        fmt = getattr(self.parts.env_factory(), "format", None) if (
            a.credit == "archer" and a.archer.fresh_actions) else None
        credit = build_credit(cfg, self.tokenizer, self.learner.model, self.engine,
                              self.loop.sampling(stop_ids=self.loop.chat.stop_ids(fmt))
                              ) if dist.is_main() else None
        self.core = StepCore(cfg, self.parts.train_tasks, self.tokenizer.pad_token_id, credit,
                             needs_tools=env_needs_tools(self.parts.env_factory))
        # only rank 0 writes the run's logs; other ranks keep theirs under ranks/ (wandb off)
        self.logger = RunLogger(run_dir, asdict(cfg), cfg.trainer.wandb,
                                cfg.trainer.wandb_project) if dist.is_main() else RunLogger(
            run_dir / "ranks" / f"rank{dist.rank()}", {}, "disabled", "")
        self.state = RunState()
        self.guard_tasks = self.parts.guard_tasks  # eval.every's validation set (or empty)
        self._bar: Any = None  # the progress bar, once fit() runs
        # Named parts whose state a checkpoint holds besides the learner's.
        self.stateful: dict[str, ckpt.Stateful] = {
            "engine_rng": ckpt.GeneratorState(lambda: getattr(self.engine, "generator", None)),
            "data": self.parts.train_tasks,
            "tools": self.core.tools,
            "health": self.core.health,
        }
        if credit is not None:
            self.stateful["credit"] = credit

    def fit(self) -> dict[str, dict[str, float]]:
        return fit(self, self.cfg)

    def train_step(self, step: int):
        """One RL step: rollout -> reward -> credit -> update -> sync, each phase timed.
        Returns (the step's trajectories, update metrics, timer) for tests and benchmarks."""
        timer = Timer()
        with timer("rollout"):
            trajs = self.rollout(step)
        with timer("reward"):
            self.core.score(trajs)  # sets outcome_reward, reward_terms, turn_rewards
        with timer("advantage"):  # ArCHer's critic trains here too (credit_update)
            everyone, batch, credit_metrics = self.credit_and_batch(trajs)
        with timer("update"):
            metrics = {**self.update(batch), **credit_metrics}
        with timer("sync"):
            self.engine.update_weights(self.learner.named_weights())
        self.log_step(step, everyone, metrics, timer)
        return everyone, metrics, timer

    # -- phases ----------------------------------------------------------------------------------
    def rollout(self, step: int) -> list[Trajectory]:
        """This rank's share of the step's tasks (all of them in one process), whole groups."""
        tasks = self.core.task_batch(step)
        mine = dist.shard(list(range(len(tasks))))
        return self.loop.run([tasks[i] for i in mine], n_samples=self.cfg.algorithm.group_size,
                             seed=self.core.rollout_seed(step, mine[0]),
                             group_offset=self.core.group_offset(step, mine[0]))

    def credit_and_batch(self, trajs: list[Trajectory]):
        """Every rank's trajectories meet on rank 0, which assigns credit (a critic sees the
        whole step) and sends each rank its rows' advantages. Returns (all trajectories on rank
        0 / this rank's elsewhere, this rank's batch, credit metrics)."""
        per_rank = dist.gather_to_main(trajs)  # None off rank 0
        everyone = trajs
        share = None
        if per_rank is not None:
            everyone = [t for part in per_rank for t in part]
            adv, metrics = self.core.assign_credit(everyone)
            bounds = [0]
            for part in per_rank:
                bounds.append(bounds[-1] + len(part))
            share = ([adv[a:b] for a, b in zip(bounds, bounds[1:])], metrics)
        rows, metrics = dist.broadcast_object(share)
        return everyone, self.core.make_batch(trajs, rows[dist.rank()]), metrics

    def update(self, batch: Batch | None) -> dict[str, float]:
        # data parallel: a rank without signal still joins the update if any rank has some
        if not dist.any_rank(batch is not None):  # every group uniform: no signal this step
            return {"update/trained_seqs": 0.0, "update/tokens": 0.0}
        m = self.learner.update(batch, self.loss_cfg, self.cfg.rollout.temperature)
        counts = torch.tensor([0.0, 0.0] if batch is None else
                              [float(len(batch)), float(batch.attention_mask.sum())])
        seqs, tokens = dist.all_reduce_sum(counts).tolist()
        return {**m, "update/trained_seqs": seqs, "update/tokens": tokens}

    def run_sft(self) -> None:
        from rl.sft import sft_trajectories

        self.learner.set_lr(self.cfg.sft.effective_lr(self.cfg.learner.lora.enabled),
                            warmup_steps=self.cfg.sft.warmup_steps)
        p = self.parts
        assert p.train_tasks is not None  # built with train=True
        demos = sft_trajectories(self.cfg.sft, p.tokenizer, p.env_factory,
                                 native_tools=p.native_tools, train_tasks=p.train_tasks.tasks,
                                 generation_config=getattr(p.model, "generation_config", None))
        steps = 0
        for epoch, chunk in self.core.sft_batches(demos):
            mine = dist.shard(chunk)
            batch = Batch.from_trajectories(mine, torch.zeros(len(mine)),
                                            self.tokenizer.pad_token_id) if mine else None
            m = self.learner.sft_update(batch)
            steps += 1
            self.logger.log(-1, {"stage": "sft", "sft/step": steps, "sft/epoch": epoch, **m})
            if dist.is_main():
                print(f"[sft] epoch {epoch} step {steps}: nll {m['sft/nll']:.3f}", flush=True)
        self.learner.set_lr(self.cfg.learner.lr)
        self.engine.update_weights(self.learner.named_weights())

    def start_rl(self) -> None:
        # Fresh optimizer moments for RL (SFT's Adam state is tuned to a different objective)
        # and RL's own warm-up, counted from RL's first step.
        self.learner.reset_optimizer()
        self.learner.set_lr(self.cfg.learner.lr, warmup_steps=self.cfg.learner.warmup_steps)
        if needs_reference(self.cfg):
            self.learner.snapshot_reference()

    def evaluate(self, label: str, tasks: list[Task] | None = None) -> dict[str, float]:
        """Evaluation on rank 0 (the others wait) of the held-out tasks, or of ``tasks`` (the
        guard's); every rank gets the results."""
        from rl.build import evaluate

        res = None
        if dist.is_main():
            t0 = time.perf_counter()
            res = evaluate(self.cfg, self.parts, self.engine, tasks)
            res["seconds"] = time.perf_counter() - t0
            self.logger.log(self.state.step, {f"eval_{label}/{k}": v for k, v in res.items()
                                              if isinstance(v, float)})
            print(eval_line(label, res), flush=True)
        return dist.broadcast_object(res)

    # -- best-checkpoint guard (eval.every; rl/step.py) ------------------------------------------
    def log_metrics(self, row: dict[str, float]) -> None:
        if dist.is_main():
            self.logger.log(self.state.step, row)

    def mark_best(self, step: int) -> Path | None:
        link = ckpt.mark_best(self.run_dir / "checkpoints", step, self.cfg.trainer.keep_last
                              ) if dist.is_main() else None
        return dist.broadcast_object(link)  # every rank waits for the link

    def load_checkpoint_weights(self, path: Path) -> None:
        self.learner.load_pretrained(Path(path) / "model")  # collective
        self.engine.update_weights(self.learner.named_weights())

    # -- bookkeeping -----------------------------------------------------------------------------
    def progress(self, steps: range):
        from tqdm.auto import tqdm

        self._bar = tqdm(steps, desc=self.cfg.algorithm.name, dynamic_ncols=True,
                         initial=steps.start, total=steps.stop, disable=not dist.is_main())
        return self._bar

    def log_step(self, step: int, trajs: list[Trajectory], metrics: dict[str, float],
                 timer: Timer) -> None:
        if not dist.is_main():
            return
        rewards = torch.tensor([t.outcome_reward for t in trajs], dtype=torch.float32)
        row = self.core.metrics_row(trajs, rewards, metrics, timer.times)
        for warning in self.core.tools.observe(step, trajs):
            print(warning, flush=True)
        row["tools/no_call_steps"] = float(self.core.tools.no_call_steps)
        for warning in self.core.health.observe(step, row):  # once per run: collapse signs
            print(warning, flush=True)
        self.logger.log(step, row)
        self.logger.samples(step, trajs[: self.cfg.trainer.samples_to_log], self.tokenizer)
        if self._bar is not None:
            self._bar.set_postfix(**self.postfix(row, timer))
        self.logger.plot()

    @staticmethod
    def postfix(row: dict[str, Any], timer: Timer) -> dict[str, str]:
        return dict(reward=f"{row['reward/mean']:.3f}",
                    success=f"{row['reward/success']:.2f}",
                    **tool_postfix(row),  # episodes with a successful call, parse errors, lenient
                    **health_postfix(row),  # entropy proxy, KL to start, informative groups
                    tok_s=f"{row['perf/rollout_tokens_per_s']:.0f}",
                    step_s=f"{sum(timer.times.values()):.0f}")

    def run_state(self) -> dict[str, Any]:
        """The run's global state; per-process state comes from the learner and self.stateful."""
        return {**self.state.to_dict(), "tasks_per_step": self.cfg.trainer.tasks_per_step,
                "logs": ckpt.log_offsets(self.run_dir)}

    def save(self) -> Path:
        return ckpt.save_checkpoint(
            self.run_dir / "checkpoints", self.state.step, learner=self.learner,
            tokenizer=self.tokenizer, trainer_state=self.run_state(), parts=self.stateful,
            config_yaml=self.config_yaml, keep_last=self.cfg.trainer.keep_last,
        )

    def resume(self) -> None:
        """Continue from the checkpoint that ``trainer.resume`` names, as if never stopped."""
        spec = ckpt.config_resume(self.cfg)
        path = ckpt.resolve_resume(spec, self.run_dir)
        if path is None:
            if spec is not None:  # a run killed before its first checkpoint: start clean
                print("[turnrl] resume: no complete checkpoint found, starting fresh")
                if dist.is_main():
                    self.logger.history = ckpt.rewind_logs(self.run_dir, {})
            return
        state = ckpt.load_checkpoint(path, learner=self.learner, parts=self.stateful)
        changed = ckpt.check_resume_config(path, state, self.cfg, self.config_yaml)
        if "trainer.seed" in changed:  # a new seed from a shared checkpoint: its own samples
            reseed_after_resume(self.cfg.trainer.seed)
        self.state = RunState.from_dict(state)  # step, stage, results, the guard's best
        if dist.is_main():  # the run's logs are rank 0's
            self.logger.history = ckpt.resume_logs(self.run_dir, path, state)
        self.engine.update_weights(self.learner.named_weights())
        print(f"[turnrl] resumed from {path} at step {self.state.step} ({self.state.stage})")

    def finish(self) -> None:
        if self.state.results and dist.is_main():
            print(write_results(self.run_dir, self.state.results), flush=True)
        self.logger.close()
