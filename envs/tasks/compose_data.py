"""The generator of the compose env's tasks (envs/tasks/compose.py; the world and its atomic
functions are envs/tasks/compose_lib.py's): the composition grammar (argument types, the
functions producing them, the phrasing of requests), the difficulty knobs (:class:`Knobs`) and
:func:`one_task`, which draws one task's turns, reference calls and offered tools from a seeded
``random.Random``."""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass
from typing import Any

from envs.base import ToolError
from envs.tasks.compose_lib import (
    CITIES,
    DAYS,
    FUNCTIONS,
    RATES,
    Backend,
    make_world,
)

# ---------------------------------------------------------------------------------------------
# Composition grammar: argument types, producers, phrases

ARG_TYPES: dict[str, dict[str, str]] = {
    "lookup_sku": {"product": "product"},
    "sku_price": {"sku": "sku"},
    "sku_stock": {"sku": "sku"},
    "restock_sku": {"sku": "sku", "units": "units"},
    "create_shipment": {"sku": "sku", "units": "ship_units", "member_id": "member_id"},
    "find_member": {"name": "name"},
    "member_city": {"member_id": "member_id"},
    "member_points": {"member_id": "member_id"},
    "add_points": {"member_id": "member_id", "points": "points"},
    "rain_chance": {"city": "city", "day": "day"},
    "city_timezone": {"city": "city"},
    "exchange_amount": {"amount": "amount", "currency": "currency"},
}
PRODUCER = {"sku": "lookup_sku", "member_id": "find_member", "city": "member_city",
            "amount": "sku_price"}
QUERIES = frozenset(FUNCTIONS) - {"restock_sku", "create_shipment", "add_points"}
ROOT_TEXT = {
    "lookup_sku": "What is the SKU code of {product}?",
    "sku_price": "How much does {sku} cost?",
    "sku_stock": "How many units of {sku} are in stock?",
    "restock_sku": "Restock {sku} with {units} units.",
    "create_shipment": "Ship {units} units of {sku} to {member_id}.",
    "find_member": "What is the member id of {name}?",
    "member_city": "Which city does {member_id} live in?",
    "member_points": "How many points does {member_id} have?",
    "add_points": "Give {member_id} {points} points.",
    "rain_chance": "What is the chance of rain in {city} on {day}?",
    "city_timezone": "What time zone is {city} in?",
    "exchange_amount": "What is {amount} in {currency}?",
}
OUT_OF_LIBRARY = ("Book a flight to {city} on {day}.", "Cancel shipment SH-{n}.",
                  "Delete {name}'s member account.", "Change the price of the {product} to {n} USD.",
                  "Email {name} a discount code.")
MAX_PARALLEL = 4  # calls in one message (the env's default max_calls_per_turn)
CANNOT = "Sorry, I can't do that with the tools I have."
INSTRUCTIONS = ("You are a store assistant with tools. Call the tools the user's request needs "
                "(independent calls together in one message). When done, reply in plain text "
                "with the results. If no tool can do it, say so and call nothing.")


def max_height(fn: str) -> int:
    below = [max_height(PRODUCER[t]) for t in ARG_TYPES[fn].values() if t in PRODUCER]
    return 1 + max(below, default=0)


@dataclass(frozen=True)
class Knobs:
    """Difficulty of generated tasks (``tasks.kwargs``)."""

    depth: int = 2  # chain height: each chain's is drawn from 1..depth (1-3)
    width: int = 2  # independent chains per user turn: drawn from 1..width (1-3)
    turns: int = 2  # user turns per task (1-4)
    distractors: int = 2  # unneeded library functions offered with the needed ones (0-9)
    unanswerable: float = 0.1  # probability that a user turn cannot be done with the tools

    def __post_init__(self) -> None:
        bad = [f"{k}={v!r} (want {lo}..{hi})" for k, v, lo, hi in (
            ("depth", self.depth, 1, 3), ("width", self.width, 1, 3),
            ("turns", self.turns, 1, 4), ("distractors", self.distractors, 0, 9),
            ("unanswerable", self.unanswerable, 0.0, 1.0)) if not lo <= v <= hi]
        if bad:
            raise ValueError(f"compose task knobs out of range: {', '.join(bad)}")


class _Gen:
    """Builds one task from one rng: literals from the world, chains executed on a backend."""

    def __init__(self, rng: random.Random, knobs: Knobs) -> None:
        self.rng, self.k = rng, knobs
        self.world = make_world(rng)
        self.backend = Backend(self.world)

    def literal(self, typ: str, fn: str) -> tuple[Any, str]:
        """(argument value, how the user says it)."""
        r, w = self.rng, self.world
        if typ == "product":
            p = r.choice(sorted(w["products"]))
            return p, f"the {p}"
        if typ == "sku":
            s = w["products"][r.choice(sorted(w["products"]))]["sku"]
            return s, f"product {s}"
        if typ == "name":
            n = r.choice(sorted(w["members"]))
            return n, n
        if typ == "member_id":
            m = w["members"][r.choice(sorted(w["members"]))]["id"]
            return m, f"member {m}"
        if typ == "city":
            c = r.choice(CITIES)
            return c, c
        if typ == "day":
            d = r.choice(DAYS)
            return d, d
        if typ == "currency":
            c = r.choice(sorted(RATES))
            return c, c
        if typ == "amount":
            a = r.randint(10, 300)
            return a, f"{a} USD"
        n = {"units": (5, 30), "ship_units": (1, 3), "points": (1, 20)}[typ]
        v = r.randint(*n) * (10 if typ == "points" else 1)
        return v, str(v)

    def node(self, fn: str, height: int) -> dict[str, Any]:
        """A call tree of exactly ``height`` (leaves: 1) rooted at ``fn``."""
        producible = [a for a, t in ARG_TYPES[fn].items()
                      if t in PRODUCER and max_height(PRODUCER[t]) >= height - 1]
        forced = self.rng.choice(producible) if height > 1 else None
        args: dict[str, Any] = {}
        for a, t in ARG_TYPES[fn].items():
            if a == forced:
                args[a] = self.node(PRODUCER[t], height - 1)
            elif height > 1 and t in PRODUCER and self.rng.random() < 0.5:
                h = self.rng.randint(1, min(height - 1, max_height(PRODUCER[t])))
                args[a] = self.node(PRODUCER[t], h)
            else:
                v, say = self.literal(t, fn)
                args[a] = {"value": v, "say": say}
        out: dict[str, Any] = {"fn": fn, "args": args}
        if fn == "create_shipment" and self.rng.random() < 0.25:
            out["express"] = True  # an optional argument the user asks for
        return out

    def chain(self, height: int) -> dict[str, Any]:
        fns = sorted(f for f in FUNCTIONS if max_height(f) >= height)
        return self.node(self.rng.choice(fns), height)

    def turn(self, used: set[str]) -> dict[str, Any] | None:
        """One answerable turn: chains executed on the backend (None if a call fails)."""
        width = self.rng.randint(1, self.k.width)
        steps: dict[int, list[dict[str, Any]]] = {}
        texts: list[str] = []
        required: list[str] = []
        roots: list[tuple[dict[str, Any], Any]] = []  # (root call, its output) of each question
        touched: set[str] = set()
        trial = self.backend.clone()
        for _ in range(width):
            tree = self.chain(self.rng.randint(1, self.k.depth))
            calls: list[tuple[int, dict[str, Any]]] = []
            keys: set[str] = set()
            try:
                value, _, _ = _run(tree, trial, calls, keys, required)
            except ToolError:
                return None
            if keys & touched:  # parallel chains must be independent: no shared entity
                return None
            touched |= keys
            for level, call in calls:
                steps.setdefault(level, []).append(call)
                used.add(call["name"])
            texts.append(_say_root(tree))
            if tree["fn"] in QUERIES:
                roots.append((calls[-1][1], value))  # post-order: the root comes last
        ordered = [steps[k] for k in sorted(steps)]
        if any(len(step) > MAX_PARALLEL for step in ordered):
            return None
        self.backend = trial
        where = [[i, j] for i, step in enumerate(ordered) for j, c in enumerate(step)
                 if any(c is r for r, _ in roots)]
        value_of = [next(v for r, v in roots if r is ordered[i][j]) for i, j in where]
        return {"text": " ".join(texts), "steps": ordered, "answers": value_of,
                "answer_calls": where, "required": sorted(set(required))}

    def unanswerable(self, offered: set[str]) -> dict[str, Any]:
        missing = sorted(set(FUNCTIONS) - offered)
        if missing and self.rng.random() < 0.5:
            fn = self.rng.choice(missing)
            tree = self.node(fn, 1)
            required: list[str] = []
            _collect_required(tree, required)
            text = _say_root(tree)
            return {"text": text, "steps": [], "answers": [], "answer_calls": [],
                    "required": required, "missing": fn}
        r = self.rng
        vals = {"city": r.choice(CITIES), "day": r.choice(DAYS), "n": r.randint(10, 99),
                "name": r.choice(sorted(self.world["members"])),
                "product": r.choice(sorted(self.world["products"]))}
        tmpl = r.choice(OUT_OF_LIBRARY)
        req = [str(v) for k, v in vals.items() if "{" + k + "}" in tmpl]
        return {"text": tmpl.format(**vals), "steps": [], "answers": [], "answer_calls": [],
                "required": req, "missing": None}


def _say(node: dict[str, Any]) -> str:
    """How the user refers to a node's value when it is an argument of another call."""
    if "value" in node:
        return str(node["say"])
    fn, a = node["fn"], node["args"]
    if fn == "lookup_sku":
        return _say(a["product"])
    if fn == "find_member":
        return _say(a["name"])
    if fn == "member_city":
        return f"{_say(a['member_id'])}'s city"
    if fn == "sku_price":
        return f"the price of {_say(a['sku'])}"
    raise AssertionError(f"{fn} produces nothing another function takes")


def _say_root(tree: dict[str, Any]) -> str:
    text = ROOT_TEXT[tree["fn"]].format(**{a: _say(n) for a, n in tree["args"].items()})
    return text + (" Use express delivery." if tree.get("express") else "")


def _collect_required(node: dict[str, Any], out: list[str]) -> None:
    for n in node["args"].values():
        if "value" in n:
            out.append(str(n["value"]))
        else:
            _collect_required(n, out)


def _run(node: dict[str, Any], backend: Backend, calls: list, keys: set[str],
         required: list[str]) -> tuple[Any, int, dict[str, Any]]:
    """Execute a call tree bottom-up; append ``(level, reference call)`` and the entities it
    touches. Returns (output, level, call)."""
    args, level = {}, 1
    for a, n in node["args"].items():
        if "value" in n:
            args[a] = n["value"]
            required.append(str(n["value"]))
        else:
            args[a], lv, _ = _run(n, backend, calls, keys, required)
            level = max(level, lv + 1)
    if node.get("express"):
        args["express"] = True
    out = getattr(backend, node["fn"])(**args)
    for a, t in ARG_TYPES[node["fn"]].items():
        if t in ("sku", "member_id", "product", "name"):
            keys.add(f"{t}:{str(args[a]).casefold()}")
    if node["fn"] in ("lookup_sku", "find_member"):
        keys.add(f"out:{str(out).casefold()}")
    keys.add(json.dumps([node["fn"], args], sort_keys=True))
    call = {"name": node["fn"], "arguments": args}
    calls.append((level, call))
    return out, level, call


def one_task(rng: random.Random, k: Knobs) -> dict[str, Any] | None:
    g = _Gen(rng, k)
    kinds = [rng.random() >= k.unanswerable for _ in range(k.turns)]
    used: set[str] = set()
    turns: list[dict[str, Any] | None] = []
    for answerable in kinds:
        t = None
        if answerable:
            for _ in range(20):
                t = g.turn(used)
                if t is not None:
                    break
            if t is None:
                return None
        turns.append(t)
    pool = sorted(set(FUNCTIONS) - used)
    distractors = rng.sample(pool, min(k.distractors, len(pool)))
    offered = used | set(distractors)
    final = [t if t is not None else g.unanswerable(offered) for t in turns]
    tools = sorted(offered)
    rng.shuffle(tools)
    refs = [c for t in final for step in t["steps"] for c in step]
    return {"world": g.world, "tools": tools, "turns": final, "reference_calls": refs,
            "knobs": asdict(k)}
