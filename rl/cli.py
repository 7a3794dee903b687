"""``turnrl`` command line: train | sft | eval | export.

Overrides are Hydra syntax on top of ``configs/config.yaml``:
``turnrl train trainer.steps=4 algorithm=drgrpo learner=lora``.

Exit codes: 0 done; 2 a config, data or checkpoint error (one ``turnrl: error:`` line each,
reported before any model loads where it can be); 1 a failed checkpoint write (disk full) or a
crash; 130 interrupted (Ctrl-C): the message names the last complete checkpoint to resume from.
"""

from __future__ import annotations

import argparse
import difflib
import logging
import os
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

_RUN_DIR: Path | None = None
"""The current run's directory once it exists (named in the Ctrl-C message)."""


class CLIError(SystemExit):
    """Ends the command with ``turnrl: error: ...`` on stderr and an exit status (2 by default);
    ``str()`` is the message, so in-process callers (tests) can read it."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


_NOISE = ("full_key:", "reference_type", "object_type", "Config search path", "provider=",
          "See https://hydra.cc")


def _one_line(text: str) -> list[str]:
    """Hydra/OmegaConf's multi-line message as segments (its debug lines dropped, an indented
    list after a ``...:`` line joined with commas)."""
    segs: list[str] = []
    listing = False
    for raw in str(text).splitlines():
        line = raw.strip()
        if not line or line.startswith(_NOISE):
            continue
        if raw[:1] in ("\t", " ") and segs and (listing or segs[-1].endswith(":")):
            segs[-1] += (", " if listing else " ") + line
            listing = True
        else:
            segs.append(line.rstrip("."))
            listing = False
    return segs


def config_error_line(e: BaseException, overrides: Sequence[str] = ()) -> str:
    """One line for a config composition error: Hydra's message with OmegaConf's reason (the
    ``__cause__`` Hydra hides, e.g. why ``trainer.steps=abc`` does not merge), for a misspelt
    key the closest valid names, for a syntax error the override it is in."""
    segs = _one_line(str(e)) or [type(e).__name__]
    if type(e).__name__ == "OverrideParseException":
        segs[0] = f"cannot parse {_unparsable(overrides) or 'an override'}: {segs[0]}"
    cause = e.__cause__
    if cause is not None:
        why = "; ".join(_one_line(str(cause)))
        key, obj = getattr(cause, "full_key", None), getattr(cause, "object_type", None)
        if key and obj is not None and hasattr(obj, "__dataclass_fields__") \
                and type(cause).__name__ == "ConfigAttributeError":
            name = str(key).rsplit(".", 1)[-1]
            close = difflib.get_close_matches(name, list(obj.__dataclass_fields__), n=3)
            prefix = str(key)[: -len(name)]
            if close:
                why += f" (did you mean {' or '.join(prefix + c for c in close)}?)"
        if why and why not in segs[0]:
            segs[0] = f"{segs[0]}: {why}"
    return "bad config: " + "; ".join(segs)


def _unparsable(overrides: Sequence[str]) -> str | None:
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    for o in overrides:
        try:
            parser.parse_override(o)
        except Exception:
            return repr(o)
    return None


def _config(overrides: list[str]):
    from omegaconf import OmegaConf

    from rl.checks import validate
    from rl.config import load_config, to_dataclass

    try:
        raw = load_config(overrides)
        cfg = to_dataclass(raw)
    except Exception as e:  # Hydra/OmegaConf errors: say what is wrong, not a stack trace
        raise CLIError(config_error_line(e, overrides)) from None
    try:  # unknown names, bad values: before any model
        validate(cfg)
    except ValueError as e:  # rl.config.ConfigError: one line per problem
        raise CLIError("\n".join(f"bad config: {line}" for line in str(e).splitlines()
                                  if line.strip())) from None
    return cfg, OmegaConf.to_yaml(raw)


def _preflight(cfg) -> None:
    """Data and checkpoint errors that would otherwise appear only after the model loads."""
    from rl import checkpoint as ckpt

    if cfg.sft.enabled and cfg.sft.data_path:
        from rl.sft import load_jsonl_conversations

        load_jsonl_conversations(cfg.sft.data_path)  # SFTDataError names file:line
    spec = ckpt.config_resume(cfg)
    if spec not in (None, "latest"):  # an explicit path: sizes now, sha256 at the resume
        p = Path(spec)
        if not p.exists():
            raise ckpt.CheckpointError(f"resume: {p} does not exist")
        if (p / ckpt.MANIFEST).exists() or not (p / "checkpoints").is_dir():
            problem = ckpt.verify(p)
            if problem is not None:
                raise ckpt.CheckpointError(f"cannot resume from {p}: {problem}")


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

    global _RUN_DIR
    cfg, yaml_text = _config(overrides)
    _preflight(cfg)
    dist.init_from_env()  # under torchrun: one run dir, rank 0's (timestamps differ per rank)
    run_dir = Path(dist.broadcast_object(str(_run_dir(cfg))))
    _RUN_DIR = run_dir
    created = not run_dir.exists()
    if dist.is_main():
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml_text)
        print(f"[turnrl] run dir: {run_dir}", flush=True)
    dist.barrier()
    try:
        if cfg.launcher.kind == "ray":  # same loop, phases in Ray actors (rl/distributed)
            from rl.distributed.controller import RayController

            RayController(cfg, run_dir, yaml_text).fit()
        else:
            Trainer(cfg, run_dir, yaml_text).fit()
    except BaseException:
        if created and dist.is_main():
            _remove_if_nothing_ran(run_dir)
        raise
    if dist.is_main():
        print(f"[turnrl] done: {run_dir}/metrics.jsonl, {run_dir}/progress.png, "
              f"{run_dir}/samples.txt, {run_dir}/checkpoints/", flush=True)


def _remove_if_nothing_ran(run_dir: Path) -> None:
    """Delete a run dir this command created when the run failed (or was interrupted) before
    it logged a step or saved a checkpoint: it holds only the config (and wandb's folder)."""
    import shutil

    metrics = run_dir / "metrics.jsonl"
    if (metrics.exists() and metrics.stat().st_size > 0) or any(
            (run_dir / "checkpoints").glob("step_*")):
        return
    shutil.rmtree(run_dir, ignore_errors=True)


def cmd_sft(overrides: list[str]) -> None:
    # rollout=hf: an SFT-only run samples nothing, and the HF engine (the policy module itself)
    # costs nothing to build, where engine=auto could start vLLM for no rollout (the group, not
    # engine=hf, so that a later rollout=... or engine=... still overrides it)
    cmd_train(["trainer.steps=0", "sft.enabled=true", "eval.compare_stages=false", "rollout=hf",
               *overrides])


def cmd_eval(args) -> None:
    """The eval harness (rl/evaluate.py): a table with 95% intervals and an eval folder."""
    import torch

    from rl.build import run_eval

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
    if args.checkpoint:  # sha256 of every file, like resume; a run dir: its newest checkpoint
        from rl.checkpoint import checked_model_path

        args.checkpoint = str(checked_model_path(args.checkpoint))
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
        raise CLIError(f"export: {e}") from None
    if args.push_to_hub:
        try:
            url = push_to_hub(out, args.push_to_hub, private=args.private)
        except HubPushError as e:
            raise CLIError(f"export: {e}", code=1) from None
        print(f"[turnrl] pushed {out} to {url}", flush=True)


def main(argv: list[str] | None = None) -> None:
    global _RUN_DIR
    _RUN_DIR = None
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
    e.add_argument("--engine", choices=["auto", "hf", "vllm"], default=None,
                   help="rollout engine (default: the config's engine=auto: vllm where it is "
                        "installed and usable, else hf)")
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
    try:
        _dispatch(args)
    except CLIError as e:
        if os.environ.get("RANK", "0") == "0":  # under torchrun: once, not once per rank
            for line in str(e).splitlines():
                print(f"turnrl: error: {line}", file=sys.stderr, flush=True)
        raise
    except KeyboardInterrupt:
        raise _interrupted(command_line=argv is None) from None
    except Exception as e:
        code = _known_error_code(e)
        if code is None:
            raise  # a bug: keep the traceback
        if os.environ.get("RANK", "0") == "0":
            print(f"turnrl: error: {e}", file=sys.stderr, flush=True)
        raise CLIError(str(e), code) from None


def _dispatch(args) -> None:
    if args.cmd == "export":
        cmd_export(args)
    elif args.cmd == "train":
        cmd_train(args.overrides)
    elif args.cmd == "sft":
        cmd_sft(args.overrides)
    else:
        cmd_eval(args)


def _known_error_code(e: Exception) -> int | None:
    """Exit status of an error the user can fix (one line, no traceback), else None."""
    import rl.config
    from rl.checkpoint import CheckpointError, CheckpointWriteError
    from rl.sft import SFTDataError

    if isinstance(e, CheckpointWriteError):  # disk full: the environment, not the command
        return 1
    config_error = getattr(rl.config, "ConfigError", SFTDataError)  # raised by later checks
    if isinstance(e, (CheckpointError, SFTDataError, config_error)):
        return 2
    return None


def _interrupted(*, command_line: bool) -> CLIError:
    """Ctrl-C: one message naming the last complete checkpoint; exit 130. From the command
    line, a second Ctrl-C while Python shuts down (atexit: sandbox workers, wandb) exits at once
    (in-process callers keep their own SIGINT handler)."""
    if command_line:
        signal.signal(signal.SIGINT, lambda *_: os._exit(130))
    from rl.learner import dist

    msg = "interrupted"
    if _RUN_DIR is not None and not _RUN_DIR.exists():
        msg += f" before the first step (nothing to keep: {_RUN_DIR} was removed)"
    elif _RUN_DIR is not None:
        from rl import checkpoint as ckpt

        last = ckpt.latest_checkpoint(_RUN_DIR / "checkpoints", log=lambda m: None)
        msg += (f"; the last complete checkpoint is {last} (continue with "
                f"trainer.resume={_RUN_DIR} and the same overrides)" if last is not None else
                f"; no checkpoint of {_RUN_DIR} was written")
    if dist.is_main():
        lead = "\n" if sys.stderr.isatty() else ""  # off a progress bar's line
        print(f"{lead}turnrl: {msg}", file=sys.stderr, flush=True)
    return CLIError(msg, 130)


if __name__ == "__main__":
    sys.exit(main())
