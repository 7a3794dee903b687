"""Multi-hop search QA (Search-R1 style) over a fictional encyclopedia: ``env=search``.

The model gets a question and a ``search`` tool (BM25 over the world's 1,030 pages,
:mod:`envs.tools.search`), searches as often as it likes and answers with
``<answer>...</answer>``. The world and its questions are generated
(:mod:`envs.tasks.search_world`): a question follows 1-3 relations from a named entity
("What is the currency of the country where Velar Quintash was born?": person -> city -> country
-> currency), and every fact is made up, so the answer must be found, not remembered.

Scoring (SQuAD's answer normalisation: lower case, punctuation and the articles a/an/the removed,
whitespace collapsed): **exact match** (EM) is ``info["success"]``; **token F1** is the terminal
step's reward and ``info["score"]`` (so "It is Quorvale" for "Quorvale" earns F1 0.5, EM 0). An
episode that ends without an answer scores 0. The step reward of non-terminal steps is 0.

Tasks: ``make_tasks("mixed", split, n, seed, hops=(1, 3), world_seed=0)``; ``hops`` may be an
int or a ``[min, max]`` range. Task ``k`` depends only on ``(seed, k, hops, world_seed)``; a
question is in ``"test"`` or ``"train"`` by a hash of its text (``envs.tasks.draw.split_of``).
All splits share the one world (as an encyclopedia is shared); they differ in questions.

``allow_search=False`` offers no tool (the no-search baseline: the model must answer from its own
knowledge, which holds none of these facts).
"""

from __future__ import annotations

import random
import re
import string
from collections import Counter
from collections.abc import Sequence
from typing import Any

from envs.base import StepResult, ToolEnv, register_env
from envs.formats import ToolCallFormat, get_format
from envs.tasks.draw import SPLITS, Candidate, draw_tasks
from envs.tasks.search_world import (
    QUESTION_TYPES,
    RELATIONS,
    hops,
    make_world,
    shortcut,
    starts,
    walk,
)
from envs.tools.search import BM25Index, search_tool
from rl.types import Message, Task

INSTRUCTIONS = ("Answer the question using the search tool: it searches an encyclopedia of "
                "people, companies, cities and countries. Questions may need several searches, "
                "one fact at a time. Give only the final answer, as <answer>...</answer>.")
NO_SEARCH = ("Answer the question. Give only the final answer, as <answer>...</answer>.")

_INDEXES: dict[int, BM25Index] = {}


def index_for(world_seed: int = 0) -> BM25Index:
    """The BM25 index of world ``world_seed`` (built once per process, ~1 s, then shared)."""
    if world_seed not in _INDEXES:
        _INDEXES[world_seed] = BM25Index(make_world(world_seed).docs)
    return _INDEXES[world_seed]


# ---------------------------------------------------------------------------------------------
# Scoring

_PUNCT = re.compile(f"[{re.escape(string.punctuation)}]")
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = _PUNCT.sub(" ", text.lower())
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(prediction: str | None, reference: str) -> bool:
    return prediction is not None and normalize_answer(prediction) == normalize_answer(reference)


def f1_score(prediction: str | None, reference: str) -> float:
    """Token-level F1 between the normalised prediction and reference (0.0 for None)."""
    if prediction is None:
        return 0.0
    pred, ref = normalize_answer(prediction).split(), normalize_answer(reference).split()
    if not pred or not ref:
        return float(pred == ref)
    common = sum((Counter(pred) & Counter(ref)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(pred), common / len(ref)
    return 2 * precision * recall / (precision + recall)


# ---------------------------------------------------------------------------------------------
# Tasks


def _hop_range(hops_arg: Any) -> tuple[int, int]:
    lo, hi = (hops_arg, hops_arg) if isinstance(hops_arg, int) else tuple(hops_arg)
    if not 1 <= int(lo) <= int(hi) <= 3:
        raise ValueError(f"search tasks.kwargs.hops must be 1..3 or a range within it, "
                         f"got {hops_arg!r}")
    return int(lo), int(hi)


def make_tasks(source: str = "mixed", split: str = "train", n: int = 100, seed: int = 0,
               hops: Any = (1, 3), world_seed: int = 0) -> list[Task]:
    """``n`` questions (module docstring). ``Task.answer`` is the answer text; ``data`` holds
    ``qtype``, ``hops``, ``chain`` (the entities visited, then the answer) and ``world_seed``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    if source != "mixed":
        raise KeyError(f"unknown search task source {source!r}; valid names: 'mixed' "
                       "(tasks.kwargs: hops, world_seed)")
    lo, hi = _hop_range(hops)
    world = make_world(world_seed)
    types = [t for t in sorted(QUESTION_TYPES) if lo <= _hops(t) <= hi]

    def candidate(k: int) -> Candidate:
        rng = random.Random(f"search/{seed}/{k}/{lo}-{hi}/{world_seed}")
        want = rng.randint(lo, hi)  # hop count first, so 1-, 2- and 3-hop are equally common
        qtype = rng.choice([t for t in types if _hops(t) == want])
        path, template = QUESTION_TYPES[qtype]
        start = rng.choice(starts(world, qtype))
        question = template.format(x=start)

        def make() -> Task | None:
            chain = walk(world, start, path)
            if shortcut(world, chain):
                return None
            return Task(id=f"search-{split}-{seed}-{k}", prompt=question, answer=chain[-1],
                        data={"qtype": qtype, "hops": len(path), "chain": chain,
                              "world_seed": world_seed})

        return question, f"search/{world_seed}/{question}", make

    tasks = draw_tasks(candidate, split, n, tries=50 * n + 1000)
    if len(tasks) < n:
        raise ValueError(f"search: only {len(tasks)} unique {split} questions with hops "
                         f"{lo}..{hi}")
    return tasks


def _hops(qtype: str) -> int:
    return hops(qtype)


# ---------------------------------------------------------------------------------------------
# The env


@register_env("search")
class SearchEnv:
    """Multi-hop QA with a BM25 ``search`` tool (module docstring)."""

    def __init__(self, tool_format: str = "hermes-prompt", *, top_k: int = 3,
                 allow_search: bool = True, world_seed: int = 0, tool_timeout_s: float = 10.0,
                 max_calls_per_turn: int = 4) -> None:
        self.format: ToolCallFormat = get_format(tool_format)
        self.world_seed, self.top_k, self.allow_search = world_seed, top_k, allow_search
        self.index = index_for(world_seed)
        tools = [search_tool(self.index, k=top_k)] if allow_search else []
        self.tool_env = ToolEnv(tools, self.format, timeout_s=tool_timeout_s,
                                max_calls_per_turn=max_calls_per_turn)
        self.tools: list[dict[str, Any]] = self.tool_env.tools
        self.system_prompt = self.tool_env.system_prompt(
            INSTRUCTIONS if allow_search else NO_SEARCH)
        self.task: Task | None = None
        self.searches = 0

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        if not isinstance(task.answer, str) or "world_seed" not in task.data:
            raise ValueError(f"task {task.id} is not a search task (needs a str answer and "
                             "data['world_seed'])")
        if task.data["world_seed"] != self.world_seed:
            raise ValueError(f"task {task.id} is from world {task.data['world_seed']}, this env "
                             f"searches world {self.world_seed} (env.kwargs.world_seed)")
        self.task, self.searches = task, 0
        messages: list[Message] = [{"role": "system", "content": self.system_prompt},
                                   {"role": "user", "content": task.prompt}]
        return messages, {"task_id": task.id, "hops": task.data.get("hops")}

    async def step(self, action_text: str) -> StepResult:
        if self.task is None:
            raise RuntimeError("step() before reset()")
        res = await self.tool_env.step(action_text)
        self.searches += sum(c.error is None for c in res.info.get("tool_calls", []))
        if res.terminated:
            answer = res.info.get("final_answer")
            f1 = f1_score(answer, self.task.answer)
            res.reward = f1
            res.success, res.score = exact_match(answer, self.task.answer), f1  # typed verdict
            res.info.update(success=res.success, score=f1, searches=self.searches)
        return res

    async def close(self) -> None:
        self.task = None

    def example_tasks(self, n: int, *, seed: int = 0) -> list[Task]:
        return make_tasks("mixed", "train", n, seed, world_seed=self.world_seed)

    def demonstration(self, task: Task) -> list[str]:
        """One search per hop, each naming the entity reached so far and the relation's
        keyword (the page is then the top hit: ``tests/envs/test_search.py`` checks every
        demonstration's answer is in what its searches returned), then the answer."""
        fmt, chain = self.format, task.data["chain"]
        path = QUESTION_TYPES[task.data["qtype"]][0]
        if not self.allow_search:
            return [fmt.format_answer(task.answer)]
        actions = [fmt.format_call("search", {"query": f"{entity} {RELATIONS[rel][2]}"})
                   for entity, rel in zip(chain, path)]
        return [*actions, fmt.format_answer(task.answer)]


def majority_baseline(train: Sequence[Task], test: Sequence[Task]) -> dict[str, float]:
    """A scripted no-search guesser: for each question type, answer the most frequent answer of
    that type in ``train``. Returns its EM and mean F1 on ``test``."""
    by_type: dict[str, Counter[str]] = {}
    for t in train:
        by_type.setdefault(t.data["qtype"], Counter())[t.answer] += 1
    em = f1 = 0.0
    for t in test:
        guess = by_type.get(t.data["qtype"], Counter()).most_common(1)
        g = guess[0][0] if guess else ""
        em += exact_match(g, t.answer)
        f1 += f1_score(g, t.answer)
    return {"n": float(len(test)), "em": em / max(len(test), 1), "f1": f1 / max(len(test), 1)}
