"""Run directory bookkeeping: metrics.jsonl, sample trajectories, wandb, a PNG plot, progress."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rl.types import Trajectory


class Timer:
    """Named phase timings for one step: ``with timer("rollout"): ...``."""

    def __init__(self) -> None:
        self.times: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        return {f"time/{k}": v for k, v in self.times.items()}


def render_trajectory(traj: Trajectory, tokenizer) -> str:
    """Text of a trajectory with the loss mask visible: model tokens inside [[ ]]."""
    parts: list[str] = []
    ids, mask = traj.token_ids, traj.loss_mask
    i = 0
    while i < len(ids):
        j = i
        while j < len(ids) and mask[j] == mask[i]:
            j += 1
        text = tokenizer.decode(ids[i:j], skip_special_tokens=False)
        parts.append(f"[[{text}]]" if mask[i] else text)
        i = j
    head = (
        f"# task={traj.task.id} group={traj.group_id} reward={traj.outcome_reward:.3f} "
        f"terms={traj.reward_terms} answer={traj.task.answer!r} "
        f"final={traj.info.get('final_answer')!r} terminated={traj.terminated} "
        f"truncated={traj.truncated}\n"
    )
    return head + "".join(parts) + "\n"


class RunLogger:
    def __init__(self, run_dir: Path, config: dict[str, Any], wandb_mode: str, project: str):
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self._metrics = open(run_dir / "metrics.jsonl", "a")
        self._samples = open(run_dir / "samples.txt", "a")
        self.history: list[dict[str, Any]] = []
        self.wandb = None
        if wandb_mode != "disabled":
            try:
                import wandb

                os.environ.setdefault("WANDB_SILENT", "true")
                self.wandb = wandb.init(
                    project=project, dir=str(run_dir), mode=wandb_mode, config=config,
                    name=run_dir.name,
                )
            except Exception as e:  # wandb is optional: never kill a run for it
                print(f"[turnrl] wandb disabled: {e}")

    def log(self, step: int, metrics: dict[str, Any]) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.history.append(row)
        self._metrics.write(json.dumps(row) + "\n")
        self._metrics.flush()
        if self.wandb is not None:
            self.wandb.log(row, step=step)

    def samples(self, step: int, trajs: Sequence[Trajectory], tokenizer) -> None:
        for t in trajs:
            self._samples.write(f"=== step {step}\n" + render_trajectory(t, tokenizer))
        self._samples.flush()

    def plot(self, keys: Sequence[str] = ("reward/mean", "episode/model_tokens",
                                          "episode/tool_calls")) -> Path | None:
        rows = [r for r in self.history if "reward/mean" in r]
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3))
        for ax, k in zip(axes, keys):
            xs = [r["step"] for r in rows if k in r]
            ys = [r[k] for r in rows if k in r]
            ax.plot(xs, ys, marker="o")
            ax.set_title(k)
            ax.set_xlabel("step")
        fig.tight_layout()
        path = self.run_dir / "progress.png"
        fig.savefig(path, dpi=80)
        plt.close(fig)
        return path

    def close(self) -> None:
        self._metrics.close()
        self._samples.close()
        if self.wandb is not None:
            self.wandb.finish()


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v
