"""Package direction: ``rl.types`` / ``rl.registry`` are the core everything may import;
``envs`` depends on the core only; ``rewards`` on the core and ``envs``; the rest of ``rl`` on all.
``rl.config`` imports no implementation module (loading a config must not import torch)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CORE = {"rl.types", "rl.registry", "rl.sampling"}


def _imports(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.lineno, node.module))
    return out


def _violations(package: str, allowed) -> list[str]:
    bad = []
    for f in sorted((ROOT / package).rglob("*.py")):
        for line, mod in _imports(f):
            top = mod.split(".")[0]
            if top in ("rl", "envs", "rewards") and not allowed(mod):
                bad.append(f"{f.relative_to(ROOT)}:{line} imports {mod}")
    return bad


def _is_core(mod: str) -> bool:
    return any(mod == c or mod.startswith(c + ".") for c in CORE)


def test_envs_import_only_the_core() -> None:
    bad = _violations("envs", lambda m: m.startswith("envs") or _is_core(m))
    assert not bad, "envs/ must import only rl.types / rl.registry from rl, never rewards:\n" \
        + "\n".join(bad)


def test_rewards_import_the_core_and_envs_only() -> None:
    bad = _violations("rewards", lambda m: m.split(".")[0] in ("rewards", "envs") or _is_core(m))
    assert not bad, "rewards/ may import envs and rl.types / rl.registry only:\n" + "\n".join(bad)


def test_core_imports_nothing_of_the_project_above_it() -> None:
    bad = []
    for name in ("types", "registry"):
        f = ROOT / "rl" / f"{name}.py"
        bad += [f"rl/{name}.py:{line} imports {m}" for line, m in _imports(f)
                if m.split(".")[0] in ("envs", "rewards") or (m.startswith("rl") and not _is_core(m))]
    assert not bad, "\n".join(bad)


def test_algos_do_not_import_drivers_envs_or_rewards() -> None:
    bad = _violations("rl/algos", lambda m: m.startswith("rl.algos") or m == "rl.config"
                      or _is_core(m))
    assert not bad, "rl/algos are pure functions over the core types and config:\n" \
        + "\n".join(bad)


def test_loading_a_config_does_not_import_torch() -> None:
    code = ("import sys; from rl.config import Config; Config(); "
            "print(sorted(m for m in ('torch', 'transformers', 'vllm', 'ray') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "[]", f"importing rl.config pulled in {out}"
