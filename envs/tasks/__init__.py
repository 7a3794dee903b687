"""Task envs. Importing this package registers every env in it (``make_env("math")``) and the
function that makes its tasks (``make_tasks("guess", source, split, n, seed, **kwargs)``).

Envs: ``math`` (ARTIST-style math with a calculator), ``guess`` (twenty questions against a
rule-based oracle), ``simuser`` (function calling with a simulated user who reveals details
when asked).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from envs.tasks import bfcl as bfcl  # noqa: F401  (registers "bfcl")
from envs.tasks import code as code  # noqa: F401  (registers "code")
from envs.tasks import compose as compose  # noqa: F401  (registers "compose")
from envs.tasks import guess as guess  # noqa: F401  (registers "guess")
from envs.tasks import math as math  # noqa: F401  (registers "math")
from envs.tasks import search as search  # noqa: F401  (registers "search")
from envs.tasks import simuser as simuser  # noqa: F401  (registers "simuser")
from envs.tasks import sql as sql  # noqa: F401  (registers "sql")
from rl.registry import Registry
from rl.types import Task

# env name -> make_tasks(source, split, n, seed, **kwargs): the env's train / test task split
TaskMaker = Callable[..., list[Task]]
TASK_MAKERS: Registry[TaskMaker] = Registry("task maker")
TASK_MAKERS.register("math")(math.make_tasks)
TASK_MAKERS.register("guess")(guess.make_tasks)
TASK_MAKERS.register("simuser")(simuser.make_tasks)
TASK_MAKERS.register("compose")(compose.make_tasks)
TASK_MAKERS.register("bfcl")(bfcl.make_tasks)
TASK_MAKERS.register("search")(search.make_tasks)
TASK_MAKERS.register("sql")(sql.make_tasks)
TASK_MAKERS.register("code")(code.make_tasks)


def make_tasks(
    env: str, source: str, split: str, n: int, seed: int = 0, **kwargs: Any
) -> list[Task]:
    """``n`` tasks of ``split`` ("train" | "test") for env ``env`` from its task ``source``."""
    return TASK_MAKERS.get(env)(source, split, n, seed, **kwargs)
