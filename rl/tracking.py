"""Run directory bookkeeping: metrics.jsonl, sample trajectories (samples.txt, samples.jsonl and
the HTML report report.html of rl/report.py), wandb and a PNG plot with the learning-health panels
of rl/health.py. Tool-use statistics are rl/tooluse.py, learning health rl/health.py."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rl.health import HEALTH_PANELS, metric_value
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
        self._sample_records: list[dict[str, Any]] = []  # the newest REPORT_MAX, for report.html
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

    REPORT_MAX = 200  # episodes kept in report.html (samples.jsonl keeps all)

    def samples(self, step: int, trajs: Sequence[Trajectory], tokenizer) -> None:
        """Sampled episodes of a step: samples.txt (text), samples.jsonl (one record per
        episode) and report.html (the newest REPORT_MAX episodes, rl/report.py, below a
        per-step learning-health table of the logged rows)."""
        from rl.report import trajectory_record, write_report

        records = [trajectory_record(t, tokenizer, step=step) for t in trajs]
        with open(self.run_dir / "samples.jsonl", "a") as f:
            for t, r in zip(trajs, records):
                self._samples.write(f"=== step {step}\n" + render_trajectory(t, tokenizer))
                f.write(json.dumps(r, default=str) + "\n")
        self._samples.flush()
        self._sample_records = (self._sample_records + records)[-self.REPORT_MAX:]
        write_report(self.run_dir / "report.html", self._sample_records,
                     title=f"turnrl train samples: {self.run_dir.name}", step_rows=self.history)

    def plot(self, keys: Sequence[str] = ("reward/mean", "episode/model_tokens",
                                          "episode/tool_calls")) -> Path | None:
        """progress.png: ``keys`` on the first row; below, the learning-health panels
        (``HEALTH_PANELS``) with the keys the rows have (none: no second row)."""
        rows = [r for r in self.history if "reward/mean" in r]
        if not rows:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        def series(k: str) -> tuple[list[Any], list[float]]:
            pts = [(r["step"], metric_value(r, k)) for r in rows]
            return [x for x, y in pts if y is not None], [y for _, y in pts if y is not None]

        panels = [(title, [k for k in ks if series(k)[0]], twin)
                  for title, ks, twin in HEALTH_PANELS]
        panels = [p for p in panels if p[1]]
        ncols = max(len(keys), len(panels))
        fig, axes = plt.subplots(2 if panels else 1, ncols, figsize=(4 * ncols,
                                                                     3 * (1 + bool(panels))),
                                 squeeze=False)
        for ax, k in zip(axes[0], keys):
            xs = [r["step"] for r in rows if k in r]
            ys = [r[k] for r in rows if k in r]
            ax.plot(xs, ys, marker="o")
            ax.set_title(k)
            ax.set_xlabel("step")
        for ax, (title, ks, twin) in zip(axes[1] if panels else [], panels):
            lines = []
            for i, k in enumerate(ks):  # a second key of another scale gets its own y axis
                lines += (ax.twinx() if twin and i else ax).plot(*series(k), marker="o",
                                                                 color=f"C{i}", label=k)
            ax.set_title(title, fontsize=9)
            ax.set_xlabel("step")
            if len(lines) > 1:
                ax.legend(lines, [ln.get_label() for ln in lines], fontsize=7)
        for row_axes, used in zip(axes, (len(keys), len(panels))):
            for ax in row_axes[used:]:
                ax.axis("off")
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
