"""The import direction (DESIGN.md), top to bottom:

    cli -> drivers (trainer, distributed) -> wiring (build, checks) -> components (step, evaluate,
    sft, learner, rollout, ...) -> algos -> config (a pure schema) -> core (types, registry,
    sampling: the request types shared by rl/ and envs/)

``envs`` imports only the core; ``rewards`` the core and ``envs``; of ``rl``, the components and the
layers above them may import both. A module imports its own layer and the layers below, never a
layer above it, and no import circle closes anywhere in rl/, envs/ or rewards/. Every import counts:
at module level, inside a function, under ``if TYPE_CHECKING:`` (``ast.walk`` sees them all); a
reader follows each one. The two allow-lists below (empty) would name an exception by file, module
and imported names, so an exception cannot grow unnoticed, and an entry whose import is gone fails
too (delete it). ``rl.config`` imports nothing of the project, so loading and checking a config imports
no torch and no part (the names a config picks are checked by rl/checks.py, in the wiring)."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("rl", "envs", "rewards")
CORE = {"rl", "rl.types", "rl.registry", "rl.sampling"}

# Layers of rl/, bottom to top. A module belongs to the layer of its longest listed prefix; every
# module of rl/ must have one (a new module is placed here deliberately).
LAYERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("core", tuple(sorted(CORE))),
    ("config", ("rl.config",)),
    ("algos", ("rl.algos",)),
    ("components", ("rl.step", "rl.evaluate", "rl.sft", "rl.learner", "rl.rollout", "rl.models",
                    "rl.checkpoint", "rl.export", "rl.tracking", "rl.report", "rl.tooluse",
                    "rl.health", "rl.tasks",
                    # the Ray actor of the LLM user: the wiring (rl.build.build_user_model)
                    # creates it with a builder it passes in; it imports only the core (not
                    # under rl/distributed/, the drivers' folder, which the wiring may not import)
                    "rl.user_actor")),
    ("wiring", ("rl.build", "rl.checks")),
    ("drivers", ("rl.trainer", "rl.distributed")),
    ("cli", ("rl.cli",)),
)
FIRST_LAYER_WITH_ENVS = "components"  # layers below it import neither envs nor rewards

# Upward imports allowed by (file, imported module, imported names), each exactly once: none (the
# learners' weight I/O moved from rl/build.py down to rl/models.py in part 2 of issue 26).
ALLOWED_UPWARD: Counter = Counter()
# Import circles allowed when closed only by a type-only import (under ``if TYPE_CHECKING:``,
# nothing runs), by (file, imported module, imported names): none (rl/rollout/tree.py names the
# agent loop it grows trees with by a Protocol of its own, TreeLoop, since part 2 of issue 26).
ALLOWED_TYPE_ONLY: Counter = Counter()


# -- the import graph ----------------------------------------------------------------------------
def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES: dict[str, Path] = {_module_name(f): f for pkg in PACKAGES
                            for f in sorted((ROOT / pkg).rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The project module ``name`` refers to (its longest prefix that is a module), else None."""
    parts = name.split(".")
    while parts:
        if ".".join(parts) in MODULES:
            return ".".join(parts)
        parts.pop()
    return None


class Edge:
    """One import statement of a project module in ``src``: what it imports and where."""

    def __init__(self, src: str, target: str, names: tuple[str, ...], line: int,
                 type_only: bool) -> None:
        self.src, self.target, self.names, self.line = src, target, names, line
        self.type_only = type_only
        self.file = str(MODULES[src].relative_to(ROOT))

    def key(self) -> tuple[str, str, tuple[str, ...]]:
        return (self.file, self.target, self.names)

    def __str__(self) -> str:
        how = " (type-only)" if self.type_only else ""
        return f"{self.file}:{self.line} imports {self.target}{how}"


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _edges(src: str) -> list[Edge]:
    path = MODULES[src]
    tree = ast.parse(path.read_text(), filename=str(path))
    type_only = {id(n) for node in ast.walk(tree)
                 if isinstance(node, ast.If) and _is_type_checking(node.test)
                 for stmt in node.body for n in ast.walk(stmt)}
    package = src if path.name == "__init__.py" else src.rpartition(".")[0]
    out: list[Edge] = []
    for node in ast.walk(tree):
        found: dict[str, list[str]] = {}  # target -> imported names
        if isinstance(node, ast.Import):
            for a in node.names:
                target = _resolve(a.name)
                if target:
                    found.setdefault(target, []).append(a.name)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from . import x / from ..pkg import y
                up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(up + ([base] if base else []))
            for a in node.names:  # `from pkg import mod` is an import of pkg.mod
                target = _resolve(f"{base}.{a.name}") if f"{base}.{a.name}" in MODULES \
                    else _resolve(base)
                if target:
                    found.setdefault(target, []).append(a.name)
        for target, names in found.items():
            if target != src:
                out.append(Edge(src, target, tuple(sorted(names)), node.lineno,
                                id(node) in type_only))
    return out


EDGES: list[Edge] = [e for m in MODULES for e in _edges(m)]


def _layer(module: str) -> int | None:
    best: tuple[int, int] | None = None  # (prefix length, layer index)
    for i, (_, prefixes) in enumerate(LAYERS):
        for p in prefixes:
            below = module.startswith(p + ".") and p not in PACKAGES  # "rl": the package alone
            if (module == p or below) and (best is None or len(p) > best[0]):
                best = (len(p), i)
    return None if best is None else best[1]


def _layer_name(module: str) -> str:
    i = _layer(module)
    return "?" if i is None else LAYERS[i][0]


def _unused(allowed: Counter, seen: Counter) -> list[str]:
    return [f"{k[0]} no longer imports {', '.join(k[2])} from {k[1]}: remove its allow-list entry"
            for k, n in allowed.items() if seen[k] < n]


# -- the tests -------------------------------------------------------------------------------------
def test_every_rl_module_has_a_layer() -> None:
    missing = sorted(m for m in MODULES if m.split(".")[0] == "rl" and _layer(m) is None)
    assert not missing, f"place these modules in a layer of LAYERS: {missing}"


def test_rl_imports_point_down_the_layers() -> None:
    bad, seen = [], Counter()
    envs_from = next(i for i, (name, _) in enumerate(LAYERS) if name == FIRST_LAYER_WITH_ENVS)
    for e in EDGES:
        src = _layer(e.src)
        if src is None:  # envs/ and rewards/: their own tests below
            continue
        if e.target.split(".")[0] in ("envs", "rewards"):
            if src < envs_from:
                bad.append(f"{e} from the {_layer_name(e.src)} layer (envs/rewards are imported "
                           f"from the {FIRST_LAYER_WITH_ENVS} layer up)")
            continue
        dst = _layer(e.target)
        if dst is not None and dst > src:
            if seen[e.key()] < ALLOWED_UPWARD[e.key()]:
                seen[e.key()] += 1
                continue
            bad.append(f"{e}: {_layer_name(e.target)} is above {_layer_name(e.src)}")
    bad += _unused(ALLOWED_UPWARD, seen)
    order = " -> ".join(name for name, _ in reversed(LAYERS))
    assert not bad, f"imports against the direction {order}:\n" + "\n".join(bad)


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_circle() -> None:
    graph: dict[str, set[str]] = {m: set() for m in MODULES}
    seen: Counter = Counter()
    for e in EDGES:
        if e.type_only and seen[e.key()] < ALLOWED_TYPE_ONLY[e.key()]:
            seen[e.key()] += 1
            continue
        graph[e.src].add(e.target)
    unused = _unused(ALLOWED_TYPE_ONLY, seen)
    assert not unused, "\n".join(unused)
    circles = _circles(graph)
    lines = []
    for comp in circles:
        inside = set(comp)
        lines.append(" <-> ".join(comp) + ":\n  " + "\n  ".join(
            str(e) for e in EDGES if e.src in inside and e.target in inside))
    assert not circles, "import circles (each import that closes one is listed):\n" \
        + "\n".join(lines)


def test_the_allow_lists_only_hold_what_they_must() -> None:
    """Part 2 of issue 26 emptied both allow-lists; an exception needs a reason written here."""
    assert not ALLOWED_UPWARD
    assert not ALLOWED_TYPE_ONLY


def _violations(package: str, allowed) -> list[str]:
    return [str(e) for e in EDGES if e.file.startswith(package + "/") and not allowed(e.target)]


def _is_core(mod: str) -> bool:
    return mod in CORE


def test_envs_import_only_the_core() -> None:
    bad = _violations("envs", lambda m: m.startswith("envs") or _is_core(m))
    assert not bad, "envs/ must import only the core (rl.types, rl.registry, rl.sampling) from " \
        "rl, never rewards:\n" + "\n".join(bad)


def test_rewards_import_the_core_and_envs_only() -> None:
    bad = _violations("rewards", lambda m: m.split(".")[0] in ("rewards", "envs") or _is_core(m))
    assert not bad, "rewards/ may import envs and the core only:\n" + "\n".join(bad)


def test_core_and_config_import_nothing_of_the_project_above_them() -> None:
    bad = [str(e) for e in EDGES if e.src in CORE and not _is_core(e.target)]
    bad += [str(e) for e in EDGES if e.src == "rl.config"]  # a pure schema: not even the core
    assert not bad, "\n".join(bad)


def test_algos_do_not_import_drivers_envs_or_rewards() -> None:
    bad = _violations("rl/algos", lambda m: m.startswith("rl.algos") or m == "rl.config"
                      or _is_core(m))
    assert not bad, "rl/algos are pure functions over the core types and config:\n" \
        + "\n".join(bad)


def test_loading_and_checking_a_config_imports_no_part() -> None:
    code = ("import sys; from rl.config import Config, config_problems; Config().validate(); "
            "config_problems(Config()); print(sorted(m for m in sys.modules if m.split('.')[0] "
            "in ('rl', 'envs', 'rewards', 'torch', 'transformers', 'vllm', 'ray')))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == "['rl', 'rl.config']", f"loading and validating a config imported {out}"
