"""The single-controller training loop: (cold-start SFT) -> RL steps -> evaluation.

``Trainer.fit`` is the whole algorithm on one screen; building parts, scoring, logging and
checkpointing live in helpers below it.
"""

from __future__ import annotations

import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from rl import checkpoint as ckpt
from rl.algos import ADVANTAGES, AdvantageConfig
from rl.algos.archer import build_credit
from rl.config import Config
from rl.learner import dist, make_learner, rollout_policy
from rl.rollout.agent_loop import AgentLoop, trajectory_stats
from rl.tracking import RunLogger, Timer
from rl.types import Batch, Trajectory


class Trainer:
    def __init__(self, cfg: Config, run_dir: Path, config_yaml: str = "") -> None:
        from rl.build import build_parts

        self.cfg, self.run_dir, self.config_yaml = cfg, run_dir, config_yaml
        if cfg.trainer.num_threads > 0:
            torch.set_num_threads(cfg.trainer.num_threads)
        seed_everything(cfg.trainer.seed)
        dist.check_data_parallel(cfg, dist.init_from_env())  # under torchrun: join the group
        self.parts = build_parts(cfg)
        self.tokenizer = self.parts.tokenizer
        self.learner = make_learner(self.parts.model, cfg.learner)
        self.engine = self.parts.make_engine(*rollout_policy(self.learner))
        self.loop = AgentLoop(self.engine, self.tokenizer, self.parts.env_factory, cfg.rollout,
                              native_tools=self.parts.native_tools)
        self.advantage = ADVANTAGES.get(cfg.algorithm.advantage)
        # only rank 0 writes the run's logs; other ranks keep theirs under ranks/ (wandb off)
        self.logger = RunLogger(run_dir, _plain_config(cfg), cfg.trainer.wandb,
                                cfg.trainer.wandb_project) if dist.is_main() else RunLogger(
            run_dir / "ranks" / f"rank{dist.rank()}", {}, "disabled", "")
        self.step, self.stage, self.results = 0, "start", {}  # restored by resume
        # Named parts whose state a checkpoint holds besides the learner's (each has
        # state_dict / load_state_dict); e.g. a critic registers itself here.
        self.stateful: dict[str, ckpt.Stateful] = {
            "engine_rng": ckpt.GeneratorState(lambda: getattr(self.engine, "generator", None)),
            "data": self.parts.train_tasks,
        }
        # Turn-level credit (ArCHer's critic, turn-level GRPO); None = outcome advantages.
        self.credit = build_credit(cfg, self.learner.model, self.tokenizer, self.engine,
                                   self.loop.sampling())
        if self.credit is not None:
            self.stateful["credit"] = self.credit

    def fit(self) -> dict[str, dict[str, float]]:
        self.maybe_resume()
        if self.stage == "start":
            if self.cfg.eval.compare_stages:
                self.results["base"] = self.evaluate("base")
            if self.cfg.sft.enabled:
                self.run_sft()
                if self.cfg.eval.compare_stages:
                    self.results["sft"] = self.evaluate("sft")
            self.stage = "rl"
        for step in self.progress(range(self.step, self.cfg.trainer.steps)):
            trajs, rewards, metrics, timer = self.train_step(step)
            self.step = step + 1
            self.log_step(step, trajs, rewards, metrics, timer)
            self.maybe_save()
        if self.cfg.eval.compare_stages:
            self.results[self.cfg.algorithm.name] = self.evaluate(self.cfg.algorithm.name)
        self.save()
        self.finish()
        return self.results

    def train_step(self, step: int):
        """One RL step: rollout -> reward -> advantage -> update -> sync, each phase timed."""
        timer = Timer()
        with timer("rollout"):
            trajs = self.rollout(step)
        with timer("reward"):
            rewards = self.score(trajs)
        with timer("critic"):  # ArCHer: replay the turns, TD-update the utterance critic
            critic_metrics = self.credit.critic_update(trajs) if self.credit else {}
        with timer("advantage"):
            batch = self.make_batch(trajs, rewards)
        with timer("update"):
            metrics = {**self.update(batch), **critic_metrics}
        with timer("sync"):
            self.engine.update_weights(self.learner.named_weights())
        return trajs, rewards, metrics, timer

    # -- phases ----------------------------------------------------------------------------------
    def rollout(self, step: int) -> list[Trajectory]:
        """This rank's share of the step's tasks (all of them in one process), whole groups."""
        n = self.cfg.trainer.tasks_per_step
        tasks = self.parts.train_tasks.batch(step, n)
        mine = dist.shard(list(range(n)))
        return self.loop.run([tasks[i] for i in mine], n_samples=self.cfg.algorithm.group_size,
                             seed=self.cfg.trainer.seed * 100_003 + step + mine[0],
                             group_offset=step * n + mine[0])

    def score(self, trajs: list[Trajectory]) -> torch.Tensor:
        return score_trajectories(trajs, self.cfg)

    def make_batch(self, trajs: list[Trajectory], rewards: torch.Tensor) -> Batch | None:
        """Advantages for every trajectory; the update batch (None when nothing to learn)."""
        return make_update_batch(trajs, rewards, self.cfg, self.advantage,
                                 self.tokenizer.pad_token_id, credit=self.credit)

    def update(self, batch: Batch | None) -> dict[str, float]:
        # data parallel: a rank without signal still joins the update if any rank has some
        if not dist.any_rank(batch is not None):  # every group uniform: no signal this step
            return {"update/trained_seqs": 0.0, "update/tokens": 0.0}
        m = self.learner.update(batch, self.cfg.algorithm.loss, self.cfg.rollout.temperature)
        counts = torch.tensor([0.0, 0.0] if batch is None else
                              [float(len(batch)), float(batch.attention_mask.sum())])
        seqs, tokens = dist.all_reduce_sum(counts).tolist()
        return {**m, "update/trained_seqs": seqs, "update/tokens": tokens}

    def run_sft(self) -> None:
        from rl.build import sft_trajectories

        trajs = sft_trajectories(self.cfg, self.parts)
        c = self.cfg.sft
        self.learner.set_lr(c.lr)
        rng = random.Random(self.cfg.trainer.seed)
        steps = 0
        for epoch in range(c.epochs):
            order = list(range(len(trajs)))
            rng.shuffle(order)
            for s in range(0, len(order), c.batch_size):
                chunk = dist.shard([trajs[i] for i in order[s : s + c.batch_size]])
                batch = Batch.from_trajectories(chunk, torch.zeros(len(chunk)),
                                                self.tokenizer.pad_token_id) if chunk else None
                m = self.learner.sft_update(batch)
                steps += 1
                self.logger.log(-1, {"stage": "sft", "sft/step": steps, "sft/epoch": epoch, **m})
                if dist.is_main():
                    print(f"[sft] epoch {epoch} step {steps}: nll {m['sft/nll']:.3f}", flush=True)
        self.learner.set_lr(self.cfg.learner.lr)
        # Fresh optimizer moments for RL: SFT's Adam state is tuned to a different objective.
        self.learner.optimizer.state.clear()
        self.engine.update_weights(self.learner.named_weights())

    def evaluate(self, label: str) -> dict[str, float]:
        """Held-out evaluation on rank 0 (the others wait); every rank gets the results."""
        from rl.build import evaluate

        res = None
        if dist.is_main():
            t0 = time.perf_counter()
            res = evaluate(self.cfg, self.parts, self.engine)
            res["seconds"] = time.perf_counter() - t0
            self.logger.log(self.step, {f"eval_{label}/{k}": v for k, v in res.items()})
            print(f"[eval:{label}] " + "  ".join(f"{k}={v:.3f}" for k, v in res.items()),
                  flush=True)
        return dist.broadcast_object(res)

    # -- bookkeeping -----------------------------------------------------------------------------
    def progress(self, steps: range):
        from tqdm.auto import tqdm

        self._bar = tqdm(steps, desc="grpo", dynamic_ncols=True, initial=steps.start,
                         total=steps.stop, disable=not dist.is_main())
        return self._bar

    def log_step(self, step, trajs, rewards, metrics, timer: Timer) -> None:
        trajs, rewards = dist.gather_rollouts(trajs, rewards)  # all ranks' episodes, on rank 0
        if not dist.is_main():
            return
        stats = trajectory_stats(trajs)
        from rewards.compose import reward_metrics
        from rewards.outcome import success as solved

        gen_tokens = sum(t.num_model_tokens for t in trajs)
        success = [solved(t) for t in trajs]
        row: dict[str, Any] = {
            **reward_metrics(trajs),  # reward/<name>: mean of each episode and turn term
            "stage": "rl", "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()),
            "reward/success": sum(success) / len(success),
            **{f"episode/{k}": v for k, v in stats.items()},
            "perf/rollout_tokens_per_s": gen_tokens / max(timer.times["rollout"], 1e-9),
            "perf/update_tokens_per_s": metrics["update/tokens"]
            / max(timer.times["update"], 1e-9),
            **metrics, **timer.metrics(),
        }
        self.logger.log(step, row)
        self.logger.samples(step, trajs[: self.cfg.trainer.samples_to_log], self.tokenizer)
        self._bar.set_postfix(reward=f"{row['reward/mean']:.3f}",
                              success=f"{row['reward/success']:.2f}",
                              tok_s=f"{row['perf/rollout_tokens_per_s']:.0f}",
                              step_s=f"{sum(timer.times.values()):.0f}")
        self.logger.plot()

    def state(self) -> dict[str, Any]:
        """The run's global state; per-process state comes from the learner and self.stateful."""
        return {"step": self.step, "stage": self.stage, "results": self.results,
                "tasks_per_step": self.cfg.trainer.tasks_per_step,
                "logs": ckpt.log_offsets(self.run_dir)}

    def save(self) -> Path:
        return ckpt.save_checkpoint(
            self.run_dir / "checkpoints", self.step, learner=self.learner,
            tokenizer=self.tokenizer, trainer_state=self.state(), parts=self.stateful,
            config_yaml=self.config_yaml, keep_last=self.cfg.trainer.keep_last,
        )

    def maybe_save(self) -> None:
        every = self.cfg.trainer.save_every
        if every > 0 and self.step % every == 0 and self.step < self.cfg.trainer.steps:
            self.save()

    def maybe_resume(self) -> None:
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
        ckpt.check_resume_config(path, state, self.cfg, self.config_yaml)
        self.step, self.stage, self.results = state["step"], state["stage"], state["results"]
        if dist.is_main():  # the run's logs are rank 0's
            self.logger.history = ckpt.resume_logs(self.run_dir, path, state)
        self.engine.update_weights(self.learner.named_weights())
        print(f"[turnrl] resumed from {path} at step {self.step} ({self.stage})")

    def finish(self) -> None:
        if self.results and dist.is_main():
            print(stage_table(self.results), flush=True)
            (self.run_dir / "results.md").write_text(stage_table(self.results) + "\n")
        self.logger.close()


def stage_table(results: dict[str, dict[str, float]]) -> str:
    cols = [("success", "held-out success"), ("tool_call_rate", "tool-call rate"),
            ("tool_calls", "tool calls/ep"), ("turns", "turns/ep"), ("reward", "mean reward")]
    lines = ["| stage | " + " | ".join(c[1] for c in cols) + " |",
             "|---" * (len(cols) + 1) + "|"]
    for stage, r in results.items():
        lines.append(f"| {stage} | " + " | ".join(f"{r.get(k, float('nan')):.3f}" for k, _ in cols)
                     + " |")
    return "\n".join(lines)


def score_trajectories(trajs: list[Trajectory], cfg: Config) -> torch.Tensor:
    """Compose each trajectory's rewards (sets outcome_reward / reward_terms / turn_rewards);
    ``(N,)`` outcome rewards."""
    from rewards.compose import score

    a = cfg.algorithm
    return torch.tensor([score(t, a.reward_weights, a.turn_reward_weights) for t in trajs],
                        dtype=torch.float32)


def make_update_batch(trajs: list[Trajectory], rewards: torch.Tensor, cfg: Config, advantage,
                      pad_id: int, credit=None) -> Batch | None:
    """Advantages for every trajectory; the update batch (None when nothing to learn).

    Shared by the local Trainer and the Ray controller (rl/distributed/controller.py).
    ``credit`` (rl/algos/archer.py:build_credit) gives per-token ``(B, L)`` advantages instead.
    """
    groups = torch.tensor([t.group_id for t in trajs], dtype=torch.long)
    if credit is not None:  # turn-level credit; rows without signal (e.g. critic warm-up) skip
        adv = credit.advantages(trajs, groups.tolist())
        keep = [i for i in range(len(trajs)) if bool(adv[i].any())]
    else:
        adv_cfg = AdvantageConfig(estimator=cfg.algorithm.advantage,
                                  norm_std=cfg.algorithm.norm_std)
        adv = advantage(rewards, groups, adv_cfg)
        keep = list(range(len(trajs)))
    if cfg.algorithm.drop_uniform_groups:
        keep = [i for i in keep if bool((rewards[groups == groups[i]] != rewards[i]).any())]
    if not keep:
        return None
    return Batch.from_trajectories([trajs[i] for i in keep], adv[keep], pad_id)


def seed_everything(seed: int) -> None:
    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _plain_config(cfg: Config) -> dict[str, Any]:
    return asdict(cfg)
