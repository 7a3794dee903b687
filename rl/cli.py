"""``turnrl`` command line: train | sft | eval | export.

Overrides are Hydra syntax on top of ``configs/config.yaml``:
``turnrl train trainer.steps=4 algorithm=drgrpo learner=lora``.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path


def _config(overrides: list[str]):
    from omegaconf import OmegaConf

    from rl.config import load_config, to_dataclass

    try:
        raw = load_config(overrides)
        cfg = to_dataclass(raw)
    except Exception as e:  # Hydra/OmegaConf errors: say what is wrong, not a stack trace
        raise SystemExit(f"turnrl: bad config: {e}") from None
    return cfg, OmegaConf.to_yaml(raw)


def _run_dir(cfg) -> Path:
    if cfg.trainer.run_dir:
        return Path(cfg.trainer.run_dir)
    from rl.checkpoint import config_resume, run_dir_of

    spec = config_resume(cfg)
    if spec == "latest":
        runs = sorted(p for p in Path("runs").glob("*") if p.is_dir())
        if runs:
            return runs[-1]
    elif spec is not None:  # a checkpoint or run dir: continue that run
        return run_dir_of(Path(spec))
    return Path("runs") / time.strftime("%Y%m%d-%H%M%S")


def cmd_train(overrides: list[str]) -> None:
    from rl.learner import dist
    from rl.trainer import Trainer

    cfg, yaml_text = _config(overrides)
    dist.init_from_env()  # under torchrun: one run dir, rank 0's (timestamps differ per rank)
    run_dir = Path(dist.broadcast_object(str(_run_dir(cfg))))
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml_text)
        print(f"[turnrl] run dir: {run_dir}", flush=True)
    dist.barrier()
    if cfg.launcher.kind == "ray":  # same loop, phases in Ray actors (rl/distributed)
        from rl.distributed.controller import RayController

        RayController(cfg, run_dir, yaml_text).fit()
    else:
        Trainer(cfg, run_dir, yaml_text).fit()
    if dist.is_main():
        print(f"[turnrl] done: {run_dir}/metrics.jsonl, {run_dir}/progress.png, "
              f"{run_dir}/samples.txt, {run_dir}/checkpoints/", flush=True)


def cmd_sft(overrides: list[str]) -> None:
    cmd_train(["trainer.steps=0", "sft.enabled=true", "eval.compare_stages=false", *overrides])


def cmd_eval(args) -> None:
    """The eval harness (rl/evaluate.py): a table with 95% intervals and an eval folder."""
    import torch

    from rl.evaluate import run_eval

    overrides = list(args.overrides)
    if args.engine:
        overrides.append(f"engine={args.engine}")
    if args.tasks is not None:
        overrides.append(f"tasks.eval_size={args.tasks}")
    if args.temperature is not None:
        overrides.append(f"eval.temperature={args.temperature}")
    cfg, _ = _config(overrides)
    if args.samples > 1 and cfg.eval.temperature == 0:
        print("[turnrl] eval: --samples > 1 at temperature 0 repeats the same greedy episode; "
              "pass --temperature for pass@k", flush=True)
    if cfg.trainer.num_threads > 0:
        torch.set_num_threads(cfg.trainer.num_threads)
    try:
        seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    except ValueError:
        raise SystemExit(f"turnrl eval: --seeds must be comma-separated integers, got "
                         f"{args.seeds!r}") from None
    if args.samples < 1 or not seeds:
        raise SystemExit("turnrl eval: need --samples >= 1 and at least one seed")
    if args.checkpoint and not Path(args.checkpoint).exists():
        raise SystemExit(f"turnrl eval: --checkpoint {args.checkpoint}: no such folder")
    out = Path(args.out) if args.out else Path("evals") / time.strftime("%Y%m%d-%H%M%S")
    res = run_eval(cfg, args.checkpoint, out, n_samples=args.samples, seeds=seeds)
    s = res.settings
    print(f"# eval: env={s['env']} model={s['model']} checkpoint={s['checkpoint']} "
          f"engine={s['engine']} tasks={s['tasks']} samples={s['n_samples']} "
          f"seeds={s['seeds']} temperature={s['temperature']} ({s['seconds']} s)")
    print(res.table())
    print(f"[turnrl] eval folder: {out} (results.json, trajectories.jsonl, report.html)",
          flush=True)


def cmd_export(args) -> None:
    from rl.export import ExportError, HubPushError, export_model, push_to_hub

    try:
        out = export_model(args.source, args.out, dtype=args.dtype, overwrite=args.overwrite)
    except ExportError as e:
        raise SystemExit(f"turnrl export: {e}") from None
    if args.push_to_hub:
        try:
            url = push_to_hub(out, args.push_to_hub, private=args.private)
        except HubPushError as e:
            raise SystemExit(f"turnrl export: {e}") from None
        print(f"[turnrl] pushed {out} to {url}", flush=True)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    p = argparse.ArgumentParser(prog="turnrl", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    for name in ("train", "sft"):
        s = sub.add_parser(name)
        s.add_argument("overrides", nargs="*")
    e = sub.add_parser("eval", help="evaluate a model on held-out tasks: table + report")
    e.add_argument("--checkpoint", default=None,
                   help="training checkpoint folder (default: model.name itself: the base "
                        "model, a hub name or an exported folder)")
    e.add_argument("--out", default=None, help="eval folder (default: evals/<timestamp>)")
    e.add_argument("--engine", choices=["hf", "vllm"], default=None, help="rollout engine")
    e.add_argument("--tasks", type=int, default=None, help="held-out tasks (tasks.eval_size)")
    e.add_argument("--samples", type=int, default=1, help="samples per task and seed (pass@k)")
    e.add_argument("--seeds", default="10007", help="comma-separated sampling seeds")
    e.add_argument("--temperature", type=float, default=None,
                   help="sampling temperature (eval.temperature; 0 = greedy)")
    e.add_argument("overrides", nargs="*")
    x = sub.add_parser("export", help="write a checkpoint as an HF model folder (merged LoRA)")
    x.add_argument("source", help="checkpoint folder, or a run dir (its newest checkpoint)")
    x.add_argument("--out", required=True, help="output folder")
    x.add_argument("--push-to-hub", metavar="REPO", default=None,
                   help="upload to this hub repo (token: HF_TOKEN or `hf auth login`)")
    x.add_argument("--private", action="store_true", help="create the hub repo as private")
    x.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                   help="weight dtype of the export (default: as trained, float32)")
    x.add_argument("--overwrite", action="store_true", help="replace a non-empty --out")
    args = p.parse_args(argv)
    if args.cmd == "export":
        return cmd_export(args)
    if args.cmd == "train":
        cmd_train(args.overrides)
    elif args.cmd == "sft":
        cmd_sft(args.overrides)
    else:
        cmd_eval(args)


if __name__ == "__main__":
    sys.exit(main())
