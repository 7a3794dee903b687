"""envs/tasks/draw.py: the task makers draw their tasks one way (prefix-stable, unique within a
split, train and test disjoint), and the tasks each maker draws stay what they were.

The fingerprints below were taken before the makers shared ``draw_tasks`` (issue 26): a change
of one means the env's tasks changed, and with them every checkpoint's task-list fingerprint
(rl/tasks.py) and every benchmark's tasks. Update one only for a deliberate change of its
generator. reasoning-gym's sources are left out (their tasks follow that package's version)."""

from __future__ import annotations

import hashlib
import json

import pytest

from envs.tasks import make_tasks
from envs.tasks.draw import draw_tasks, split_of
from rl.types import Task

FINGERPRINTS = {  # env/source/split: n=5, seed 0
    "code/mixed/test": "b73b1e0d0341aa4e",
    "code/mixed/train": "c2d4bea67401e009",
    "compose/mixed/test": "8065be664dabc9bc",
    "compose/mixed/train": "394814e32ffd2016",
    "guess/listed/test": "cf17e8a8ac32e89e",
    "guess/listed/train": "f299ae861d80f073",
    "guess/open/test": "82097f0395296d62",
    "guess/open/train": "19a0f1bea7463726",
    "math/arith/test": "bb72a574067baae0",
    "math/arith/train": "8d5956d7e340c538",
    "math/mixed/test": "d708ec945a227e68",
    "math/mixed/train": "296be217cb080492",
    "math/word/test": "e24d420c6c457dee",
    "math/word/train": "e4e81965e75c97f8",
    "search/mixed/test": "4adbcf92e8e306de",
    "search/mixed/train": "06fbf3b0897f1269",
    "simuser/mixed/test": "70f2fdc6e107237b",
    "simuser/mixed/train": "0d1c8bcb56e856b6",
    "simuser/pizza/test": "93a743a8fea3100b",
    "simuser/pizza/train": "0db94062ef45a8bf",
    "sql/mixed/test": "6916b6b4df1c252e",
    "sql/mixed/train": "008727b822416798",
    "sql/shop/test": "cfd34de787011689",
    "sql/shop/train": "26f32352556b3c87",
}


@pytest.mark.parametrize("case", sorted(FINGERPRINTS))
def test_each_makers_tasks_are_the_ones_it_drew_before(case: str) -> None:
    env, source, split = case.split("/")
    rows = [[t.id, t.prompt, repr(t.answer), repr(t.data)]
            for t in make_tasks(env, source, split, 5, 0)]
    assert hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16] == FINGERPRINTS[case]


def _toy(keys: list[str], dropped: set[str] = frozenset()):  # type: ignore[assignment]
    def candidate(k: int):
        if k >= len(keys) or keys[k] == "none":
            return None
        key = keys[k]
        return key, key, lambda: None if key in dropped else Task(f"t{k}", key)
    return candidate


def test_draw_keeps_the_first_new_candidates_of_the_split_and_is_prefix_stable() -> None:
    keys = [f"q{i % 30}" for i in range(90)]
    keys[3] = "none"
    for split in ("train", "test"):
        want = [k for i, k in enumerate(dict.fromkeys(keys)) if k != "none"
                and split_of(k) == split]
        got = draw_tasks(_toy(keys), split, 100, tries=len(keys))
        assert [t.prompt for t in got] == want  # unique, in the split, in draw order
        assert [t.prompt for t in draw_tasks(_toy(keys), split, 3, tries=len(keys))] == want[:3]


def test_a_dropped_candidate_keeps_its_key_taken() -> None:
    keys = [f"k{i % 10}" for i in range(30)]  # each key three times
    train = [k for k in dict.fromkeys(keys) if split_of(k) == "train"]
    assert len(train) >= 2
    got = draw_tasks(_toy(keys, dropped={train[0]}), "train", 10, tries=len(keys))
    assert [t.prompt for t in got] == train[1:]  # its later copies are dropped too
    assert [t.id for t in got] == [f"t{keys.index(k)}" for k in train[1:]]  # the first copies
