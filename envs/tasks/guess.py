"""A guessing game in the spirit of ArCHer's Twenty Questions / Guess My City.

The env thinks of a hidden object from ``data/objects.json`` (109 objects, 22 yes/no
attributes such as ``is_animal``, ``bigger_than_a_person``, ``made_of_metal``). Each turn the
model writes ONE free-text question; a deterministic rule-based oracle (the simulated partner)
answers it:

- the question names exactly one object from the list ("Is it a cat?"): a guess. Right: the game
  is won (``terminated``); wrong: "No, it is not a cat." and the game goes on;
- else it mentions the keywords of exactly one attribute ("Does it live in the water?" ->
  ``found_in_water``; keywords are matched as whole words, case-insensitively; negations are not
  understood): "Yes." or "No.";
- several attributes: "Please ask about one thing at a time." (no information);
- nothing recognisable, or a tool call (the game has none; the call is recorded as failed): a
  short error message naming a valid question (no information).

A final ``<answer>name</answer>`` is the last guess: the episode ends either way (``terminated``,
``info["success"]`` says whether it was right). After ``max_turns`` turns without a win the
episode is ``truncated`` (a critic would bootstrap). ``info["final_answer"]`` is the guessed
object's canonical name (or the raw answer text when it names no object), so the ``outcome``
reward (answer match against ``Task.answer``) and ``env_success`` agree.

Step reward (the turn-level ``env_progress`` signal): the share of the task's initial
candidates that the turn eliminated, ``(|C_before| - |C_after|) / |C_0|``, where ``C`` is the set
of candidates consistent with every answer so far. It telescopes: an episode's progress sums to
``1 - |C_final| / |C_0|``, whatever the order of questions, so only the outcome says whether
the questions were good enough in time; the guess itself earns no progress (the outcome pays).

Task sources (``make_tasks(source, split, n, seed, ...)``):

- ``"listed"`` (default, Guess-My-City-like): the prompt lists ``n_candidates`` objects (default
  8), one of them hidden; ``max_turns`` (default 5) gives 4 questions and a guess. Candidate
  sets that no questioner could settle in ``max_turns - 1`` questions are skipped, so every task
  is solvable and the demonstration solves it. Tasks are
  (candidate set, hidden object) pairs: the split hashes the pair, so held-out tasks are new
  sets; the names themselves are shared with training (the model must read the list).
- ``"open"`` (classic Twenty Questions): any of the 109 objects, no list in the prompt,
  ``max_turns`` default 12 (the demonstration needs at most 11 questions). The split hashes the object name (about 20% of the objects are
  held out, never hidden in training); at most one task per object, so ``n`` is capped.

Demonstrations (cold-start SFT): a split-the-candidates questioner (:func:`best_question`: the
minimax question for small candidate sets, else the most even split) that answers
``<answer>name</answer>`` once one candidate remains (or on the last turn).
"""

from __future__ import annotations

import json
import random
import re
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from envs.base import StepResult, register_env
from envs.formats import find_answers, get_format
from envs.tasks.draw import SPLITS, Candidate, draw_tasks, split_of
from rl.types import Message, Task

DATA = Path(__file__).resolve().parent / "data" / "objects.json"
_WORD_RE = re.compile(r"[a-z]+")
_TAG_RE = re.compile(r"<[^<>]*>")  # markup such as <answer> is not part of a question


@dataclass(frozen=True)
class Attribute:
    name: str
    question: str  # the canonical question (demonstrations, the system prompt)
    keywords: tuple[str, ...]  # single words or phrases, matched as whole words


@dataclass(frozen=True, eq=False)  # hashed by identity (load_world caches one per file)
class World:
    """The shipped objects and attributes; ``truth[obj]`` is the set of true attributes."""

    attributes: tuple[Attribute, ...]
    objects: tuple[str, ...]
    truth: dict[str, frozenset[str]]
    # derived: word tuples for matching; per attribute the bitmask of objects (bit i = objects[i])
    object_words: dict[str, tuple[str, ...]] = field(default_factory=dict)
    keyword_words: dict[str, tuple[tuple[str, ...], ...]] = field(default_factory=dict)
    masks: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.object_words.update({o: tuple(_words(o)) for o in self.objects})
        self.keyword_words.update(
            {a.name: tuple(tuple(_words(k)) for k in a.keywords) for a in self.attributes})
        self.masks.update({a.name: sum(1 << i for i, o in enumerate(self.objects)
                                       if a.name in self.truth[o]) for a in self.attributes})

    def mask(self, objects: list[str]) -> int:
        return sum(1 << self.objects.index(o) for o in objects)

    def answer(self, obj: str, attribute: str) -> bool:
        return attribute in self.truth[obj]


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def _contains(words: list[str], phrase: tuple[str, ...]) -> bool:
    n = len(phrase)
    return any(tuple(words[i : i + n]) == phrase for i in range(len(words) - n + 1))


@cache
def load_world(path: str = str(DATA)) -> World:
    """Load and validate the object list: unique names, known attributes, every object told apart
    by its attributes, and no object name that contains an attribute keyword (or vice versa)."""
    try:
        raw = json.loads(Path(path).read_text())
        attrs = tuple(
            Attribute(a["name"], a["question"], tuple(a["keywords"])) for a in raw["attributes"]
        )
        objects = tuple(o["name"] for o in raw["objects"])
        truth = {o["name"]: frozenset(o["yes"]) for o in raw["objects"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"bad guessing-game data {path}: {type(e).__name__}: {e}") from e
    names = {a.name for a in attrs}
    problems = []
    if len(set(objects)) != len(objects):
        problems.append("duplicate object names")
    for obj, yes in truth.items():
        if yes - names:
            problems.append(f"{obj}: unknown attributes {sorted(yes - names)}")
    vectors: dict[frozenset[str], str] = {}
    for obj in objects:
        if truth[obj] in vectors:
            problems.append(f"{obj} and {vectors[truth[obj]]} have the same attributes")
        vectors[truth[obj]] = obj
    for a in attrs:
        for kw in a.keywords:
            for obj in objects:
                if _contains(_words(obj), tuple(_words(kw))) or _contains(
                    _words(kw), tuple(_words(obj))
                ):
                    problems.append(f"keyword {kw!r} of {a.name} overlaps object {obj!r}")
        if any(_contains(_words(a.question), tuple(_words(o))) for o in objects):
            problems.append(f"the question of {a.name} names an object")
    if problems:
        raise ValueError(f"bad guessing-game data {path}: " + "; ".join(problems))
    return World(attrs, objects, truth)


# ---------------------------------------------------------------------------------------------
# The oracle (pure functions of the world and the text)


@dataclass(frozen=True)
class Reading:
    """What the oracle made of a question: ``kind`` is "guess" | "attribute" | "several" |
    "unknown"; ``name`` the object or attribute."""

    kind: str
    name: str = ""


def read_question(world: World, text: str) -> Reading:
    words = _words(text)
    ow = world.object_words
    objs = [o for o in world.objects if _contains(words, ow[o])]
    # a name inside a longer matched name is part of it, not a second object
    objs = [o for o in objs if not any(o != p and _contains(list(ow[p]), ow[o]) for p in objs)]
    if len(objs) == 1:
        return Reading("guess", objs[0])
    attrs = [a.name for a in world.attributes
             if any(_contains(words, k) for k in world.keyword_words[a.name])]
    if len(objs) > 1 or len(attrs) > 1:
        return Reading("several")
    if len(attrs) == 1:
        return Reading("attribute", attrs[0])
    return Reading("unknown")


def canonical_object(world: World, text: str) -> str | None:
    """The object a guess text names (articles and case ignored), or None."""
    r = read_question(world, text)
    return r.name if r.kind == "guess" else None


def consistent(world: World, candidates: list[str], attribute: str, value: bool) -> list[str]:
    return [o for o in candidates if world.answer(o, attribute) == value]


EXACT_PLAN_MAX = 16  # candidate sets up to this size get the minimax question, larger greedy


def best_question(world: World, candidates: list[str]) -> Attribute | None:
    """The question the demonstration asks (None if no attribute splits ``candidates``).

    Up to ``EXACT_PLAN_MAX`` candidates: an attribute minimising the worst-case number of further
    questions (exact minimax over the decision tree); among those, or for larger sets, the most
    even yes/no split; ties go to the attribute listed first.
    """
    cands = world.mask(candidates)
    exact = len(candidates) <= EXACT_PLAN_MAX
    best, best_key = None, None
    for a in world.attributes:
        yes = cands & world.masks[a.name]
        if not yes or yes == cands:
            continue
        depth = max(_depth(world, yes), _depth(world, cands ^ yes)) if exact else 0
        key = (depth, -min(yes.bit_count(), (cands ^ yes).bit_count()))
        if best_key is None or key < best_key:
            best, best_key = a, key
    return best


@cache
def _depth(world: World, cands: int) -> int:
    """Fewest questions that single out any member of the bitmask ``cands`` in the worst case."""
    n = cands.bit_count()
    if n <= 1:
        return 0
    floor = (n - 1).bit_length()  # ceil(log2 n): no tree does better
    best = n  # an upper bound, never reached with unique attribute vectors
    for m in world.masks.values():
        yes = cands & m
        if yes and yes != cands:
            best = min(best, 1 + max(_depth(world, yes), _depth(world, cands ^ yes)))
            if best == floor:
                break
    return best


# ---------------------------------------------------------------------------------------------
# Tasks


def _listed_prompt(candidates: list[str], max_turns: int) -> str:
    return (f"I am thinking of one of these: {', '.join(candidates)}. "
            f"Find it in at most {max_turns} turns.")


def _open_prompt(max_turns: int) -> str:
    return (f"I am thinking of an object (an animal, plant, food, vehicle, tool, household "
            f"thing...). Find it in at most {max_turns} turns.")


def make_tasks(
    source: str = "listed", split: str = "train", n: int = 100, seed: int = 0, *,
    n_candidates: int = 8, max_turns: int | None = None,
) -> list[Task]:
    """Guessing-game tasks (see the module docstring). ``Task.answer`` is the hidden object;
    ``data`` holds ``candidates`` (the objects it may be), ``max_turns`` and ``source``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    world = load_world()
    if source == "open":
        turns = max_turns or 12
        objs = [o for o in world.objects if split_of(f"guess/open/{o}") == split]
        random.Random(f"guess/open/{seed}").shuffle(objs)
        return [Task(id=f"guess-open-{split}-{o.replace(' ', '_')}", prompt=_open_prompt(turns),
                     answer=o, data={"candidates": list(world.objects), "max_turns": turns,
                                     "source": source}) for o in objs[:n]]
    if source != "listed":
        raise KeyError(f"unknown guess task source {source!r}; valid names: 'listed', 'open'")
    if not 2 <= n_candidates <= len(world.objects):
        raise ValueError(f"n_candidates must be in [2, {len(world.objects)}], got {n_candidates}")
    turns = max_turns or 5

    def candidate(k: int) -> Candidate:
        rng = random.Random(f"guess/listed/{seed}/{n_candidates}/{k}")
        cands = rng.sample(world.objects, n_candidates)
        hidden = rng.choice(cands)
        key = f"{hidden}|{'|'.join(sorted(cands))}"

        def make() -> Task | None:
            if _depth(world, world.mask(cands)) > turns - 1:  # not solvable in time (~0.1%)
                return None
            return Task(id=f"guess-{split}-{seed}-{k}", prompt=_listed_prompt(cands, turns),
                        answer=hidden, data={"candidates": cands, "max_turns": turns,
                                             "source": source})

        return key, f"guess/listed/{key}", make

    tasks = draw_tasks(candidate, split, n, tries=200 * n + 1000)
    if len(tasks) < n:
        raise ValueError(f"guess: only {len(tasks)} unique {split} tasks")
    return tasks


# ---------------------------------------------------------------------------------------------
# The env


def system_prompt(world: World) -> str:
    topics = ", ".join(a.keywords[0] for a in world.attributes)
    return ("Play a guessing game. Each turn ask one yes/no question about one property, e.g. "
            f"'{world.attributes[0].question}' Properties: {topics}. "
            "When you know the object, reply <answer>name</answer>.")


@register_env("guess")
class GuessEnv:
    """Twenty-questions-style game against a rule-based oracle (see the module docstring).

    ``tool_format`` is accepted for a uniform factory signature; the game has no tools, only
    free-text questions and a final ``<answer>``.
    """

    def __init__(self, tool_format: str = "hermes-prompt", *, data_path: str = str(DATA)) -> None:
        self.world = load_world(data_path)
        self.format = get_format(tool_format)
        self.tools: list[dict[str, Any]] = []
        self.system_prompt = system_prompt(self.world)
        self.task: Task | None = None
        self.candidates: list[str] = []
        self.turn, self.max_turns, self.n0 = 0, 0, 1
        self.done = False

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        hidden = task.answer
        cands = list(task.data.get("candidates") or self.world.objects)
        if hidden not in self.world.truth or hidden not in cands:
            raise ValueError(f"task {task.id}: hidden object {hidden!r} is not among its "
                             "candidates / the object list")
        self.task, self.candidates, self.turn, self.done = task, cands, 0, False
        self.n0 = len(cands)
        self.max_turns = int(task.data.get("max_turns", 5))
        messages: list[Message] = [
            {"role": "system", "content": self.system_prompt},
            {"role": "user", "content": task.prompt},
        ]
        return messages, {"task_id": task.id, "candidates": len(cands)}

    def _progress(self, before: int) -> float:
        return (before - len(self.candidates)) / self.n0

    def _end(self, reply: str, won: bool, final: str | None) -> StepResult:
        self.done = True  # the guess itself earns no progress: the outcome pays for it
        return StepResult([{"role": "user", "content": reply}], 0.0, terminated=True,
                          info={"success": won, "final_answer": final, "turn": self.turn})

    async def step(self, action_text: str) -> StepResult:
        if self.task is None or self.done:
            raise RuntimeError("step() before reset() or after the episode ended")
        self.turn += 1
        hidden = str(self.task.answer)
        answers = find_answers(action_text)
        if answers:  # the final guess
            guess = canonical_object(self.world, answers[-1])
            won = guess == hidden
            reply = f"Yes! It is {hidden}." if won else f"No. It was {hidden}."
            return self._end(reply, won, guess if guess is not None else answers[-1])
        calls = self.format.parse(action_text).tool_calls
        for c in calls:  # recorded (the agent loop keeps them) as failed: nothing to call here
            c.error = c.error or "this game has no tools"
        before = len(self.candidates)
        r = read_question(self.world, _TAG_RE.sub(" ", action_text)) if not calls else Reading("")
        if r.kind == "guess" and r.name == hidden:
            return self._end(f"Yes! It is {hidden}.", True, hidden)
        if r.kind == "guess":
            reply = f"No, it is not {r.name}."
            self.candidates = [o for o in self.candidates if o != r.name]
        elif r.kind == "attribute":
            value = self.world.answer(hidden, r.name)
            reply = "Yes." if value else "No."
            self.candidates = consistent(self.world, self.candidates, r.name, value)
        elif r.kind == "several":
            reply = "Please ask about one thing at a time."
        else:
            reply = f"I only answer yes/no questions like '{self.world.attributes[0].question}'"
        info = {"reading": r.kind or "tool call", "candidates_left": len(self.candidates),
                "turn": self.turn, "tool_calls": calls, "tool_errors": len(calls)}
        if self.turn >= self.max_turns:
            self.done = True
            info["success"] = False
            return StepResult([{"role": "user", "content": reply}], self._progress(before),
                              truncated=True, info=info)
        return StepResult([{"role": "user", "content": reply}], self._progress(before), info=info)

    async def close(self) -> None:
        self.task = None

    def example_tasks(self, n: int, *, seed: int = 0) -> list[Task]:
        return make_tasks("listed", "train", n, seed)

    def demonstration(self, task: Task) -> list[str]:
        """Greedy-split questions, then the answer (see the module docstring)."""
        hidden = str(task.answer)
        cands = list(task.data.get("candidates") or self.world.objects)
        max_turns = int(task.data.get("max_turns", 5))
        actions: list[str] = []
        while len(cands) > 1 and len(actions) < max_turns - 1:
            attr = best_question(self.world, cands)
            if attr is None:
                break
            actions.append(attr.question)
            cands = consistent(self.world, cands, attr.name, self.world.answer(hidden, attr.name))
        return [*actions, self.format.format_answer(cands[0])]


# ---------------------------------------------------------------------------------------------
# Scripted baselines on held-out listed tasks:
# python -c "from envs.tasks.guess import print_baselines; print_baselines(500)"


def fixed_order_actions(world: World, task: Task, k: int) -> list[str]:
    """A non-adaptive player: the first ``k`` attribute questions whatever the candidates, then
    the first candidate consistent with the answers."""
    hidden, cands = str(task.answer), list(task.data["candidates"])
    actions = []
    for a in world.attributes[:k]:
        actions.append(a.question)
        cands = consistent(world, cands, a.name, world.answer(hidden, a.name))
    return [*actions, f"<answer>{cands[0]}</answer>"]


def print_baselines(n: int = 500) -> None:
    import asyncio

    from envs.base import replay_actions

    env, world = GuessEnv(), load_world()
    tasks = make_tasks("listed", "test", n)
    policies = {
        "guess at once (first listed)": lambda t: [f"<answer>{t.data['candidates'][0]}</answer>"],
        "4 fixed questions, then guess": lambda t: fixed_order_actions(world, t, 4),
        "demonstration (minimax questions)": env.demonstration,
    }
    print(f"| policy ({n} held-out listed tasks, 8 candidates, 5 turns) | success | turns |")
    print("|---|---|---|")
    for name, policy in policies.items():
        wins = turns = 0
        for t in tasks:
            _, res = asyncio.run(replay_actions(env, t, policy(t)))
            wins += bool(res[-1].info.get("success"))
            turns += len(res)
        print(f"| {name} | {wins / n:.3f} | {turns / n:.2f} |")

