"""Atomic, multi-process checkpoints and exact resume.

A checkpoint folder ``step_000012/`` holds:

- ``model/``      the policy as an HF folder (full weights, or the PEFT adapter with LoRA), written
                  by the learner's collective ``save_pretrained``, plus the tokenizer;
- ``state.pt``    the run's global state (rank 0): step, stage, eval results, world size, the
                  byte offsets of the run's log files at save time;
- ``rank{r}.pt``  one per process: its RNG states (python, numpy, torch, CUDA), its learner state
                  (optimizer, scheduler, counters) and the state of every registered stateful part
                  (engine sampling generator, data stream, a critic with its optimizer...);
- ``config.yaml`` the resolved config;
- ``manifest.json`` written last: step, world size, and size + sha256 of every file.

Writes go to a hidden ``.tmp-step_...`` folder that rank 0 renames to its final name only after
every rank has written its files and the manifest is on disk, so a crash at any moment leaves
either the previous complete checkpoint or a new complete one. A folder whose manifest is
missing or does not match its files is incomplete: :func:`latest_checkpoint` reports it and
falls back to the previous good one; loading it explicitly raises :class:`CheckpointError`.

Retention keeps the newest ``keep_last`` complete checkpoints and the one ``best`` links to
(``checkpoints/best -> step_000008``: the best-checkpoint guard's, ``eval.every``;
:func:`mark_best`).

A write that fails (a full disk, Ctrl-C) deletes its temporary folder before the exception goes
on, so the previous checkpoint is all that remains; a full disk becomes a one-line
:class:`CheckpointWriteError` that says how much space a checkpoint needs.

Checkpoints are ``torch.load``-ed with ``weights_only=False`` (RNG states are numpy/python
objects): load only checkpoints you or your run wrote.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import random
import re
import shutil
import signal
import threading
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch

from rl.learner import dist

MANIFEST = "manifest.json"
STATE = "state.pt"
BEST = "best"
"""``checkpoints/best``: a link to the checkpoint the guard (``eval.every``) found best."""
LOG_FILES = ("metrics.jsonl", "samples.txt")
"""Run-dir files rewound to their size at the checkpoint on resume (no duplicate/missing rows)."""


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used: incomplete, corrupt, or from another world size."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (e.g. disk full); the partial folder was deleted and
    the previous complete checkpoint is untouched."""


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class Learner(Protocol):
    """What checkpointing needs from a learner (TorchLearner, DeepSpeedLearner)."""

    def save_pretrained(self, path: Path) -> None: ...

    def load_pretrained(self, path: Path) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# -- RNG -----------------------------------------------------------------------------------------
def rng_state() -> dict[str, Any]:
    """This process's global RNG states (python, numpy, torch CPU, and CUDA when present)."""
    import numpy as np

    state = {"python": random.getstate(), "numpy": np.random.get_state(),
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        # one state per GPU visible when saved; restore those that are visible now (a resume
        # may see fewer or more devices: set_rng_state_all would index a missing one)
        saved, n = list(state["cuda"]), torch.cuda.device_count()
        for i, s in enumerate(saved[:n]):
            torch.cuda.set_rng_state(s.cpu(), i)
        if len(saved) != n:
            print(f"[turnrl] resume: CUDA RNG states saved for {len(saved)} device(s), "
                  f"{n} visible now: restored {min(len(saved), n)}")


class GeneratorState:
    """A ``torch.Generator`` owned by something else (e.g. ``engine.generator``) as a stateful
    part; ``get`` returns None when the owner has no generator (vLLM seeds per request)."""

    def __init__(self, get: Callable[[], torch.Generator | None]) -> None:
        self.get = get

    def state_dict(self) -> dict[str, Any]:
        gen = self.get()
        return {"state": gen.get_state() if gen is not None else None}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        gen = self.get()
        if gen is not None and state.get("state") is not None:
            gen.set_state(state["state"])


# -- files -----------------------------------------------------------------------------------------
def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _HashingWriter:
    """File wrapper for ``torch.save`` that hashes what it writes (no second read)."""

    def __init__(self, f) -> None:
        self.f, self.h, self.size = f, hashlib.sha256(), 0

    def write(self, data) -> int:
        self.h.update(data)
        self.size += len(data)
        return self.f.write(data)

    def flush(self) -> None:
        self.f.flush()


def _save_hashed(obj: Any, path: Path) -> dict[str, Any]:
    """``torch.save`` + fsync; returns the manifest entry (size, sha256)."""
    with open(path, "wb") as f:
        w = _HashingWriter(f)
        torch.save(obj, w)
        f.flush()
        os.fsync(f.fileno())
    return {"size": w.size, "sha256": w.h.hexdigest()}


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())
    _fsync_dir(root)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def log_offsets(run_dir: Path) -> dict[str, int]:
    """Current sizes of the run's log files (recorded in a checkpoint)."""
    return {name: (run_dir / name).stat().st_size if (run_dir / name).exists() else 0
            for name in LOG_FILES}


def rewind_logs(run_dir: Path, offsets: Mapping[str, int], *, log=print) -> list[dict[str, Any]]:
    """Cut the run's log files back to their size at the checkpoint: rows written after it (by
    the run that was killed) would otherwise appear twice once the resumed run writes them
    again. Returns the metrics rows that remain (for the logger's history / plot)."""
    for name in LOG_FILES:
        p, size = run_dir / name, int(offsets.get(name, 0))
        have = p.stat().st_size if p.exists() else 0
        if have > size:
            with open(p, "r+b") as f:
                f.truncate(size)
        elif have < size:
            log(f"[turnrl] resume: {p} is shorter ({have} bytes) than at the checkpoint "
                f"({size} bytes); rows before the checkpoint are missing from it")
    return _metrics_rows(run_dir)


def _metrics_rows(run_dir: Path) -> list[dict[str, Any]]:
    metrics = run_dir / "metrics.jsonl"
    rows = []
    for line in metrics.read_text().splitlines() if metrics.exists() else []:
        try:
            rows.append(json.loads(line))
        except ValueError:  # a line cut short by a killed writer
            continue
    return rows


def run_dir_of(path: Path) -> Path:
    """The run dir a checkpoint (``<run>/checkpoints/step_N``) or run dir belongs to."""
    path = Path(path)
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return path


def resume_logs(run_dir: Path, path: Path, state: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Rewind ``run_dir``'s logs to the checkpoint when the checkpoint is this run's own; a
    checkpoint from another run starts this run's logs where they are."""
    if run_dir_of(path).resolve() != Path(run_dir).resolve():
        return _metrics_rows(Path(run_dir))
    return rewind_logs(Path(run_dir), state.get("logs", {}))


# -- save ------------------------------------------------------------------------------------------
def save_checkpoint(
    root: Path,
    step: int,
    *,
    learner: Learner,
    tokenizer,
    trainer_state: dict[str, Any],
    parts: Mapping[str, Stateful] | None = None,
    config_yaml: str = "",
    keep_last: int = 2,
) -> Path:
    """Collective: every rank calls it. Returns the final checkpoint folder.

    Rank 0 creates the temporary folder; the learner writes ``model/`` (collective); every rank
    writes ``rank{r}.pt``; after a barrier rank 0 writes ``state.pt``, ``config.yaml`` and, last,
    the manifest, fsyncs and renames. A second barrier keeps ranks from racing ahead (and, e.g.,
    pruning or resuming) before the rename.
    """
    root = Path(root)
    final = root / f"step_{step:06d}"
    tmp: Path | None = None
    try:
        if dist.is_main():
            root.mkdir(parents=True, exist_ok=True)
            tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir()
        tmp = Path(dist.broadcast_object(str(tmp)))
        _write(tmp, final, root, step, learner=learner, tokenizer=tokenizer,
               trainer_state=trainer_state, parts=parts, config_yaml=config_yaml,
               keep_last=keep_last)
    except BaseException as e:  # Ctrl-C, disk full, a crash: leave no partial folder behind
        written = _tree_size(tmp)
        if dist.is_main() and tmp is not None and tmp.exists():  # rank 0 owns the folder
            with _deferred_sigint():
                shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(e, Exception) and _is_disk_full(e):
            raise CheckpointWriteError(_disk_full_message(root, final, written, e)) from e
        raise
    return final


def _write(tmp: Path, final: Path, root: Path, step: int, *, learner: Learner, tokenizer,
           trainer_state: dict[str, Any], parts: Mapping[str, Stateful] | None,
           config_yaml: str, keep_last: int) -> None:
    learner.save_pretrained(tmp / "model")
    if dist.is_main():
        tokenizer.save_pretrained(tmp / "model")
    rank_state = {
        "rng": rng_state(),
        "learner": learner.state_dict(),
        "parts": {name: part.state_dict() for name, part in (parts or {}).items()},
    }
    # Each rank hashes its own file as it writes it; rank 0 hashes the shared ones.
    name = f"rank{dist.rank()}.pt"
    hashed = dist.gather_objects({name: _save_hashed(rank_state, tmp / name)})
    dist.barrier()
    if dist.is_main():
        world = dist.world_size()
        files = {k: v for d in hashed for k, v in d.items()}
        files[STATE] = _save_hashed({**trainer_state, "world_size": world}, tmp / STATE)
        (tmp / "config.yaml").write_text(config_yaml)
        for p in sorted(tmp.rglob("*")):
            rel = str(p.relative_to(tmp))
            if p.is_file() and rel not in files:
                files[rel] = {"size": p.stat().st_size, "sha256": _sha256(p)}
        files = dict(sorted(files.items()))
        man = {"step": step, "world_size": world, "files": files}
        (tmp / MANIFEST).write_text(json.dumps(man, indent=1))
        _fsync_tree(tmp)
        with _deferred_sigint():  # the swap itself is never cut in half by Ctrl-C
            old = None
            if final.exists():  # re-saving a step: move the old folder aside, then swap
                old = root / f".tmp-step_{step:06d}-old-{os.getpid()}"
                os.replace(final, old)
            os.replace(tmp, final)
            _fsync_dir(root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        _prune(root, keep_last)
    dist.barrier()


# -- failed writes ---------------------------------------------------------------------------------
_DISK_FULL = re.compile(r"No space left on device|Disk quota exceeded|StorageFull|"
                        r"\bcode: (28|122)\b|\(os error (28|122)\)|\[Errno (28|122)\]")


def _is_disk_full(e: BaseException) -> bool:
    """ENOSPC / EDQUOT, raised as OSError by Python writes, or as text inside another error by
    writers in native code (safetensors: ``SafetensorError: ... IoError(Os { code: 28, ...``)."""
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, OSError) and cur.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if _DISK_FULL.search(str(cur)):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _tree_size(path: Path | None) -> int:
    if path is None or not path.exists():
        return 0
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def checkpoint_size(path: Path) -> int:
    """Bytes of a complete checkpoint: its manifest's files and the manifest (0 if unreadable)."""
    try:
        man = Path(path) / MANIFEST
        files = json.loads(man.read_text())["files"]
        return sum(int(m["size"]) for m in files.values()) + man.stat().st_size
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def _mb(n: int) -> str:
    return f"{n / 2**20:,.0f} MiB" if n >= 2**20 else f"{n:,} bytes"


def _disk_full_message(root: Path, final: Path, written: int, e: BaseException) -> str:
    previous = next((p for p in reversed(list_checkpoints(root)) if verify(p) is None), None)
    if previous is not None and checkpoint_size(previous):
        need = f"a checkpoint needs about {_mb(checkpoint_size(previous))} (the size of " \
               f"{previous.name})"
    else:
        need = f"a checkpoint needs more than the {_mb(written)} written before the disk filled"
    try:
        free = f", {_mb(shutil.disk_usage(root).free)} free"
    except OSError:
        free = ""
    kept = (f"the last complete checkpoint {previous} is kept" if previous is not None
            else "no earlier checkpoint exists")
    return (f"disk full: cannot write checkpoint {final} ({type(e).__name__}); {need}{free} "
            f"in {root}; the partial write was deleted and {kept}; free space (or lower "
            f"trainer.keep_last) and continue with trainer.resume={run_dir_of(final)}")


@contextlib.contextmanager
def _deferred_sigint():
    """Hold a Ctrl-C that arrives inside the block until the block is done (cleanup and the
    final rename must not be cut in half). Main thread only; elsewhere a no-op."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    try:
        previous = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    except ValueError:  # not the main interpreter
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
        if got and callable(previous):
            previous(signal.SIGINT, None)
        elif got and previous == signal.SIG_DFL:
            os.kill(os.getpid(), signal.SIGINT)


# -- verify / find -------------------------------------------------------------------------------
def verify(path: Path, *, deep: bool = False) -> str | None:
    """None if the checkpoint is complete, else the reason it is not. ``deep`` also checks every
    file's sha256 (reads everything: a second per 100s of MB); otherwise sizes only."""
    path = Path(path)
    if not path.is_dir():
        return "not a directory"
    man = path / MANIFEST
    if not man.exists():
        return "no manifest.json (the write did not finish, or this is not a checkpoint)"
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError, TypeError) as e:
        return f"unreadable manifest: {e!r}"
    for rel, meta in files.items():
        p = path / rel
        if not p.is_file():
            return f"missing {rel}"
        size = p.stat().st_size
        if size != meta["size"]:
            return f"{rel} is {size} bytes, expected {meta['size']} (truncated)"
        if deep and _sha256(p) != meta["sha256"]:
            return f"{rel} does not match its sha256 (corrupt)"
    return None


def list_checkpoints(root: Path) -> list[Path]:
    """Complete-named checkpoint folders (``step_*``), oldest first; ``.tmp-*`` are never listed."""
    root = Path(root)
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_checkpoint(root: Path, *, deep: bool = False, log=print) -> Path | None:
    """Newest complete checkpoint under ``root``; incomplete ones are reported and skipped."""
    for p in reversed(list_checkpoints(root)):
        problem = verify(p, deep=deep)
        if problem is None:
            return p
        log(f"[turnrl] skipping checkpoint {p}: {problem}; trying the previous one")
    return None


def resume_spec(value: Any) -> str | None:
    """Normalise a ``resume`` setting: None/false -> None, true/"latest" -> "latest", else a path.

    Hydra hands a ``str`` field ``true`` as "True"; both spellings are accepted."""
    if value is None or value is False:
        return None
    s = str(value).strip()
    if s.lower() in ("", "false", "none", "null", "no", "0"):
        return None
    if s.lower() in ("true", "latest", "yes", "1"):
        return "latest"
    return s


def config_resume(cfg) -> str | None:
    """The run's resume spec: ``trainer.resume``, else the top-level alias ``resume``."""
    return resume_spec(cfg.trainer.resume) or resume_spec(getattr(cfg, "resume", None))


# Keys that may change between the interrupted run and its resume without changing the result.
_RESUME_FREE_KEYS = ("resume", "trainer.resume", "trainer.steps", "trainer.run_dir",
                     "trainer.save_every", "trainer.keep_last", "trainer.wandb",
                     "trainer.wandb_project", "trainer.samples_to_log", "trainer.num_threads")


def check_resume_config(path: Path, state: Mapping[str, Any], cfg, config_yaml: str = "",
                        *, log=print) -> list[str]:
    """Report config keys that differ from the checkpoint's (the resumed run then does not
    continue exactly as the interrupted one would have). Returns the differing keys."""
    changed: list[str] = []
    saved_n = state.get("tasks_per_step")
    if saved_n is not None and saved_n != cfg.trainer.tasks_per_step:
        changed.append("trainer.tasks_per_step")
    saved_yaml = Path(path) / "config.yaml"
    if config_yaml and saved_yaml.exists() and saved_yaml.read_text():
        from omegaconf import OmegaConf

        def flat(text: str) -> dict[str, Any]:
            out: dict[str, Any] = {}

            def walk(node: Any, prefix: str) -> None:
                if isinstance(node, dict):
                    for k, v in node.items():
                        walk(v, f"{prefix}{k}.")
                else:
                    out[prefix[:-1]] = node

            walk(OmegaConf.to_container(OmegaConf.create(text)), "")
            return out

        old, new = flat(saved_yaml.read_text()), flat(config_yaml)
        changed += sorted(k for k in set(old) | set(new)
                          if old.get(k) != new.get(k) and k not in _RESUME_FREE_KEYS
                          and k not in changed)
    if changed:
        log(f"[turnrl] resume: config differs from the checkpoint's in {changed}; the run "
            "continues with the new values")
    return changed


def resolve_resume(spec: Any, run_dir: Path, *, log=print) -> Path | None:
    """The checkpoint to resume from, or None (start fresh). Collective when several processes
    run: rank 0 verifies (reads every file once) and tells the others, errors included.

    ``"latest"``: the newest complete checkpoint of ``run_dir`` (sha256-verified; broken ones
    are skipped with a message). A path: that checkpoint, or the newest one of a run dir; an
    explicit checkpoint that is incomplete or corrupt is an error, never silently replaced.
    """
    if dist.world_size() == 1 or not dist.is_initialized():
        return _resolve_resume(spec, Path(run_dir), log)
    answer: tuple[str, str | None] = ("ok", None)
    if dist.is_main():
        try:
            found = _resolve_resume(spec, Path(run_dir), log)
            answer = ("ok", str(found) if found is not None else None)
        except CheckpointError as e:
            answer = ("error", str(e))
    kind, value = dist.broadcast_object(answer)
    if kind == "error":
        raise CheckpointError(value)
    return Path(value) if value is not None else None


def _resolve_resume(spec: Any, run_dir: Path, log) -> Path | None:
    spec = resume_spec(spec)
    if spec is None:
        return None
    if spec == "latest":
        return latest_checkpoint(Path(run_dir) / "checkpoints", deep=True, log=log)
    p = Path(spec)
    if not p.exists():
        raise CheckpointError(f"resume: {p} does not exist")
    if not (p / MANIFEST).exists() and (p / "checkpoints").is_dir():  # a run dir
        found = latest_checkpoint(p / "checkpoints", deep=True, log=log)
        if found is None:
            raise CheckpointError(f"resume: no complete checkpoint under {p / 'checkpoints'}")
        return found
    problem = verify(p, deep=True)
    if problem is not None:
        raise CheckpointError(f"cannot resume from {p}: {problem}")
    return p


def checked_model_path(path: Path | str, *, log=print) -> Path:
    """A policy to load, verified like a resume (sha256 of every file): a checkpoint (or its
    ``model/`` subfolder), or a run dir (its newest complete checkpoint). A folder with no
    checkpoint around it (an exported HF folder) has no manifest to check and is returned as is.
    Raises :class:`CheckpointError` for a missing, incomplete or corrupt checkpoint."""
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p} does not exist")
    if not (p / MANIFEST).exists() and (p / "checkpoints").is_dir():  # a run dir
        found = latest_checkpoint(p / "checkpoints", deep=True, log=log)
        if found is None:
            raise CheckpointError(f"no complete checkpoint under {p / 'checkpoints'}")
        return found
    ckpt_dir = p.parent if p.name == "model" and (p.parent / MANIFEST).exists() else p
    if (ckpt_dir / MANIFEST).exists() or (ckpt_dir / "model").is_dir() \
            or ckpt_dir.name.startswith(("step_", ".tmp-step_")):
        problem = verify(ckpt_dir, deep=True)
        if problem is not None:
            raise CheckpointError(f"{ckpt_dir} is not a complete checkpoint: {problem}")
    return p


# -- load ------------------------------------------------------------------------------------------
def load_state(path: Path) -> dict[str, Any]:
    """The run's global state (``state.pt``) of a complete checkpoint."""
    path = Path(path)
    problem = verify(path)
    if problem is not None:
        raise CheckpointError(f"checkpoint {path} is incomplete: {problem}")
    try:
        return torch.load(path / STATE, weights_only=False, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: cannot read {STATE}: {e}") from e


def load_checkpoint(
    path: Path,
    *,
    learner: Learner,
    parts: Mapping[str, Stateful] | None = None,
    log=print,
) -> dict[str, Any]:
    """Collective: restore weights, this rank's learner state, parts and RNG states from a
    complete checkpoint (verify it first). Returns the run's global state (``state.pt``)."""
    path = Path(path)
    state = load_state(path)
    saved_world, world = int(state.get("world_size", 1)), dist.world_size()
    if saved_world != world:
        raise CheckpointError(
            f"checkpoint {path} was written by {saved_world} process(es) but this run has "
            f"{world}: resume with the same number of processes (per-rank optimizer shards and "
            f"RNG states cannot be redistributed)"
        )
    rank_file = path / f"rank{dist.rank()}.pt"
    try:
        # on the host: the learner moves optimizer state to its parameters' devices
        rank_state = torch.load(rank_file, weights_only=False, map_location="cpu")
    except Exception as e:
        raise CheckpointError(f"checkpoint {path}: cannot read {rank_file.name}: {e}") from e
    learner.load_pretrained(path / "model")
    learner.load_state_dict(rank_state["learner"])
    saved_parts = rank_state.get("parts", {})
    for name, part in (parts or {}).items():
        if name not in saved_parts and getattr(part, "optional_in_checkpoint", False):
            log(f"[turnrl] resume: checkpoint {path} has no '{name}' state (an older run); "
                "it starts fresh")
            continue
        if name not in saved_parts:
            raise CheckpointError(f"checkpoint {path} holds no state for '{name}' (saved by a run "
                                  f"without it; it has: {sorted(saved_parts)})")
        part.load_state_dict(saved_parts[name])
    extra = sorted(set(saved_parts) - set(parts or {}))
    if extra:
        log(f"[turnrl] resume: checkpoint state for {extra} is not used by this run")
    set_rng_state(rank_state["rng"])
    return state


def _prune(root: Path, keep_last: int) -> None:
    """Delete leftovers of killed writers (``.tmp-*``) and all but the newest ``keep_last``
    complete checkpoints (0 keeps all); the one ``best`` points at is never deleted."""
    for p in root.glob(".tmp-step_*"):
        shutil.rmtree(p, ignore_errors=True)
    if keep_last <= 0:
        return
    best = best_target(root)
    complete = [p for p in list_checkpoints(root) if verify(p) is None]
    for p in complete[:-keep_last]:
        if p.name != best:
            shutil.rmtree(p, ignore_errors=True)


# -- the best-checkpoint guard (eval.every, rl/step.py) ---------------------------------------------
def best_target(root: Path) -> str | None:
    """Name of the checkpoint folder ``root/best`` points at (None when there is no link)."""
    link = Path(root) / BEST
    return Path(os.readlink(link)).name if link.is_symlink() else None


def mark_best(root: Path, step: int, keep_last: int) -> Path | None:
    """Point ``root/best`` (a relative symlink) at the complete checkpoint of ``step``, then
    prune with ``keep_last``: the best is kept whatever its age, a best it replaces becomes an
    ordinary checkpoint again. The swap is atomic (a new link renamed over the old one). Returns
    the link, or None (and changes nothing) when ``step`` has no complete checkpoint under
    ``root`` (a run resumed from another run's checkpoint). Rank 0 / the controller only."""
    root = Path(root)
    target = root / f"step_{step:06d}"
    if verify(target) is not None:
        return None
    link, tmp = root / BEST, root / f".tmp-best-{os.getpid()}"
    if tmp.is_symlink() or tmp.exists():
        tmp.unlink()
    os.symlink(target.name, tmp)
    os.replace(tmp, link)
    _fsync_dir(root)
    _prune(root, keep_last)
    return link
