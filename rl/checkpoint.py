"""Atomic checkpoints: write to a temporary folder, fsync, then rename.

A checkpoint folder ``step_000012/`` holds ``model/`` (HF folder: full weights, or the PEFT
adapter), ``state.pt`` (optimizer, scheduler, RNG states, trainer counters), ``config.yaml`` and
``manifest.json`` (written last: file sizes and sha256). A folder whose manifest is missing or
does not match its files is incomplete and is skipped, with a message, for the previous good one.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

MANIFEST = "manifest.json"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync_tree(root: Path) -> None:
    for p in sorted(root.rglob("*")):
        if p.is_file():
            with open(p, "rb") as f:
                os.fsync(f.fileno())


def rng_state() -> dict[str, Any]:
    import numpy as np

    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }


def set_rng_state(state: dict[str, Any]) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


def save_checkpoint(
    root: Path,
    step: int,
    *,
    model,
    tokenizer,
    state: dict[str, Any],
    config_yaml: str,
    keep_last: int = 2,
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    model.save_pretrained(tmp / "model", safe_serialization=True)
    tokenizer.save_pretrained(tmp / "model")
    torch.save(state, tmp / "state.pt")
    (tmp / "config.yaml").write_text(config_yaml)
    files = {
        str(p.relative_to(tmp)): {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(tmp.rglob("*")) if p.is_file()
    }
    (tmp / MANIFEST).write_text(json.dumps({"step": step, "files": files}, indent=1))
    _fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    _prune(root, keep_last)
    return final


def verify(path: Path) -> str | None:
    """None if the checkpoint is complete, else the reason it is not."""
    man = path / MANIFEST
    if not man.exists():
        return "no manifest (write did not finish)"
    try:
        files = json.loads(man.read_text())["files"]
    except (ValueError, KeyError) as e:
        return f"unreadable manifest: {e}"
    for rel, meta in files.items():
        p = path / rel
        if not p.exists():
            return f"missing {rel}"
        if p.stat().st_size != meta["size"]:
            return f"{rel} is {p.stat().st_size} bytes, expected {meta['size']} (truncated)"
    return None


def list_checkpoints(root: Path) -> list[Path]:
    if not root.exists():
        return []
    return sorted(p for p in root.iterdir() if p.is_dir() and p.name.startswith("step_"))


def latest_checkpoint(root: Path, *, log=print) -> Path | None:
    """Newest complete checkpoint under ``root``; incomplete ones are reported and skipped."""
    for p in reversed(list_checkpoints(root)):
        problem = verify(p)
        if problem is None:
            return p
        log(f"[turnrl] skipping checkpoint {p}: {problem}")
    return None


def load_state(path: Path) -> dict[str, Any]:
    problem = verify(path)
    if problem is not None:
        raise ValueError(f"checkpoint {path} is incomplete: {problem}")
    return torch.load(path / "state.pt", weights_only=False)


def _prune(root: Path, keep_last: int) -> None:
    if keep_last <= 0:
        return
    complete = [p for p in list_checkpoints(root) if verify(p) is None]
    for p in complete[:-keep_last]:
        shutil.rmtree(p, ignore_errors=True)
