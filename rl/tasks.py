"""The tasks a run sees, from the configured env's task maker (envs.tasks.make_tasks): the train
stream (:class:`TaskStream`, whose position a checkpoint records), the held-out split and the
best-checkpoint guard's validation set (:func:`build_guard_tasks`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rl.config import Config
from rl.types import Task


class TaskStream:
    """Deterministic batches of tasks: step ``s`` takes the next ``n`` tasks, cycling."""

    def __init__(self, tasks: Sequence[Task]) -> None:
        if not tasks:
            raise ValueError("empty task list")
        self.tasks = list(tasks)

    def batch(self, step: int, n: int) -> list[Task]:
        return [self.tasks[(step * n + i) % len(self.tasks)] for i in range(n)]

    # The position is the trainer's step (batches are a function of it); a checkpoint records
    # which task list it indexes, so a resume on a different list is reported.
    def state_dict(self) -> dict[str, Any]:
        import hashlib

        h = hashlib.sha256("\x1f".join(f"{t.id}\x1e{t.prompt}" for t in self.tasks).encode())
        return {"num_tasks": len(self.tasks), "fingerprint": h.hexdigest()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state != self.state_dict():
            print(f"[turnrl] resume: the train task list differs from the checkpoint's "
                  f"({state.get('num_tasks')} tasks then, {len(self.tasks)} now): later "
                  "batches will not be the ones the interrupted run would have seen")


def build_tasks(cfg: Config, split: str, n: int) -> list[Task]:
    """The configured env's own tasks (envs.tasks.TASK_MAKERS[cfg.env.name])."""
    from envs.tasks import make_tasks

    t = cfg.tasks
    return make_tasks(cfg.env.name, t.source, split, n, t.seed, **dict(t.kwargs))


def build_guard_tasks(cfg: Config, held_out: Sequence[Task],
                      train: Sequence[Task] = ()) -> list[Task]:
    """The validation set of the best-checkpoint guard (``eval.every``): ``eval.guard_tasks``
    tasks of the env's test split that are neither ``held_out`` (the stage table's
    ``tasks.eval_size`` tasks: choosing a checkpoint on the tasks it is then reported on would
    bias the report upwards) nor ``train``.

    They are the continuation of the held-out stream: the env's task maker is asked for
    ``eval_size + guard_tasks`` test tasks and the held-out ones are dropped. Every task maker
    in envs/tasks is prefix-stable (task ``k`` does not depend on ``n``) and unique within its
    split, and its split is a hash of the task, disjoint from train; so this is exactly the next
    ``guard_tasks`` tasks. A maker that did not guarantee it would still give a disjoint set:
    a task whose id or content (prompt, answer, data) equals a held-out or train task's is
    dropped, and a set smaller than asked for is reported. Note that a later evaluation with a
    larger ``tasks.eval_size`` (same seed) includes the guard tasks.
    """
    n = cfg.eval.guard_tasks
    try:
        pool = build_tasks(cfg, "test", len(held_out) + n)
    except ValueError as e:
        raise ValueError(f"eval.guard_tasks={n}: the env's test split cannot give "
                         f"tasks.eval_size + eval.guard_tasks = {len(held_out) + n} tasks ({e}); "
                         "lower eval.guard_tasks or tasks.eval_size") from e

    def key(t: Task) -> str:
        return repr((t.prompt, t.answer, t.data))

    ids = {t.id for t in held_out}
    seen = {key(t) for t in (*held_out, *train)}
    guard = [t for t in pool if t.id not in ids and key(t) not in seen][:n]
    if not guard:
        raise ValueError(f"eval.guard_tasks={n}: the env's test split has no tasks beyond the "
                         f"{len(held_out)} held-out ones (tasks.eval_size); lower tasks.eval_size")
    if len(guard) < n:
        print(f"[turnrl] eval.guard_tasks={n}: only {len(guard)} test tasks are disjoint from "
              "the held-out and train tasks; the guard uses those", flush=True)
    return guard
