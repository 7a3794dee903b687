"""Checkpoint save / load seconds for SmolLM2-135M-Instruct (fp32 weights + AdamW state).

    .venv/bin/python bench/bench_checkpoint.py [--repeats 3] [--dir /tmp/turnrl-bench-ckpt]

Save = the trainer's atomic write (HF safetensors folder + tokenizer, rank0.pt with AdamW
moments / scheduler / RNG, sha256 manifest, fsync, rename). Load = what resume does: sha256
verification of every file, then weights, optimizer, RNG. Also times the verification alone and
``turnrl export`` of the checkpoint. Repeats alternate save and load; medians are printed.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dir", default=None, help="where to write (default: a temp dir)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from omegaconf import OmegaConf

    from rl import checkpoint as ckpt
    from rl.config import load_config
    from rl.export import export_model
    from rl.learner.torch import LearnerConfig, TorchLearner
    from rl.models import load_model, load_tokenizer
    from rl.types import Batch, Task, Trajectory

    tok = load_tokenizer("smollm2-135m-instruct")
    learner = TorchLearner(load_model("smollm2-135m-instruct"),
                           LearnerConfig(lr=1e-5, autocast="fp32"))
    traj = Trajectory(Task("0", ""), list(range(10, 42)), [0] * 8 + [1] * 24, [0.0] * 32, 8)
    learner.sft_update(Batch.from_trajectories([traj], torch.zeros(1), 0))  # fills AdamW state
    yaml = OmegaConf.to_yaml(load_config([]))
    root = Path(args.dir or tempfile.mkdtemp(prefix="turnrl-bench-ckpt-"))
    run = root / "run"
    save_s, load_s, verify_s, export_s = [], [], [], []
    path = None
    for i in range(args.repeats):
        t0 = time.perf_counter()
        path = ckpt.save_checkpoint(run / "checkpoints", i + 1, learner=learner, tokenizer=tok,
                                    trainer_state={"step": i + 1, "stage": "rl", "results": {}},
                                    config_yaml=yaml, keep_last=1)
        save_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        assert ckpt.verify(path, deep=True) is None
        verify_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        found = ckpt.resolve_resume("latest", run)  # sha256-verifies, as resume does
        ckpt.load_checkpoint(found, learner=learner)
        load_s.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        export_model(path, root / "export", overwrite=True, log=lambda m: None)
        export_s.append(time.perf_counter() - t0)
    assert path is not None
    mb = {p.name: p.stat().st_size / 2**20 for p in path.rglob("*") if p.is_file()}
    total = sum(mb.values())
    print(f"checkpoint {path.name}: {total:.0f} MB in all (model.safetensors "
          f"{mb['model.safetensors']:.0f} MB, rank0.pt {mb['rank0.pt']:.0f} MB)")
    for name, xs in (("save (write + sha256 + fsync + rename)", save_s),
                     ("load (sha256 verify + weights + optimizer + RNG)", load_s),
                     ("  of which sha256 verify", verify_s),
                     ("export (HF folder + card)", export_s)):
        print(f"{name:50s} median {statistics.median(xs):6.2f} s  min {min(xs):6.2f} s  "
              f"runs {' '.join(f'{x:.2f}' for x in xs)}   {total / statistics.median(xs):.0f} MB/s")
    if args.dir is None:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
