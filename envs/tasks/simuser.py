"""A simulated-user function-calling env in the spirit of MUA-RL.

The user wants something done (book a table, order pizza, transfer money) and states the goal
vaguely; the details (the tool's arguments, "slots") come out only when the agent asks. The user
is deterministic and rule-based:

- a question that mentions the keywords of one of the task's slots ("Which day?", "How many
  people?") is answered with that slot's value ("On Friday."). A question naming several slots
  reveals only the first one named (text order) not yet revealed: one requirement per question;
- anything else without a tool call gets "Ask me what you need to know." (no information);
- a tool call is parsed and validated against the tool's typed schema (``Tool.from_function``).
  Malformed calls, unknown tools and bad arguments become error observations and the episode
  goes on. The first call that runs ends the episode (``terminated``): the action has been taken.
  ``info["success"]`` is whether it equals the reference call (same tool, every argument equal
  after light normalisation: case and spacing of strings, 4 == 4.0; see
  :mod:`envs.matching`); calls after it in the same turn are not run;
- ``<answer>`` (ending the conversation without acting) ends the episode unsuccessfully;
- after ``max_turns`` turns (default 6) without a call: ``truncated``.

With ``user_model`` (an :class:`envs.tasks.llm_user.LLMUser`, MUA-RL style; config
``env.kwargs.user_model=<model>``) a frozen LLM plays the user instead: it opens from the hidden
goal (the domain's request and every slot value, which the agent never sees) and answers each
non-call message; a slot counts as revealed once the user model has said its value. Calls are
still checked by the env. Its text arrives as ``user`` messages (observation tokens, no loss).

Step reward (``env_progress``): ``1 / #slots the opening did not reveal`` for each newly revealed
slot, so an episode that learns everything it needs collects 1.0. Scoring of the final call is
left to ``rewards/``: ``env_success`` (exact call) and ``call_match_outcome`` / ``call_match``
(partial credit by argument overlap) read ``Task.data["reference_calls"]``.

Tasks (``make_tasks(source, split, n, seed)``): ``source`` is a domain (``"restaurant"``,
``"pizza"``, ``"transfer"``) or ``"mixed"`` (all three). A task is a domain, slot values and an
opening that reveals no slot or (30%) one slot. The split hashes the reference call, so held-out
tasks ask for argument combinations never seen in training. Demonstrations ask for each hidden
slot in order, then make the reference call.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from envs.base import StepResult, ToolEnv, register_env
from envs.matching import calls_equal
from envs.tasks.compose import mentions
from envs.tasks.draw import SPLITS, Candidate, draw_tasks
from rl.types import Message, Task

# ---------------------------------------------------------------------------------------------
# Tools: plain typed functions; the env decides success, the tools only confirm.


def book_table(restaurant: str, day: str, people: int) -> str:
    """Book a table at a restaurant.

    Args:
        restaurant: Restaurant name.
        day: Day of the week.
        people: Number of people.
    """
    return f"Booked a table at {restaurant} on {day} for {people}."


def order_pizza(size: str, topping: str, quantity: int) -> str:
    """Order pizzas for delivery.

    Args:
        size: small, medium or large.
        topping: The topping.
        quantity: Number of pizzas.
    """
    return f"Ordered {quantity} {size} {topping} pizza(s)."


def transfer_money(recipient: str, amount: int, currency: str) -> str:
    """Send money to a contact.

    Args:
        recipient: Contact name.
        amount: Amount to send.
        currency: EUR, USD or GBP.
    """
    return f"Sent {amount} {currency} to {recipient}."


# ---------------------------------------------------------------------------------------------
# Domains


@dataclass(frozen=True)
class Slot:
    name: str  # the tool argument
    question: str  # the demonstration's question
    keywords: tuple[str, ...]  # words that make a question about this slot
    values: tuple[Any, ...]
    answer: str  # the user's reply, "{v}" = the value
    opening: str  # an opening that reveals this slot, "{v}" = the value


@dataclass(frozen=True)
class Domain:
    name: str
    tool: Callable[..., str]
    openings: tuple[str, ...]  # vague goals that reveal nothing
    slots: tuple[Slot, ...]


DOMAINS: dict[str, Domain] = {
    d.name: d
    for d in (
        Domain("restaurant", book_table,
               ("I'd like to book a table.", "Can you reserve a table for me?",
                "I want to eat out. Please book something."),
               (Slot("restaurant", "Which restaurant?", ("restaurant", "where", "place"),
                     ("Luigi", "Golden Dragon", "Sakura", "El Toro", "Green Leaf", "Blue Fin"),
                     "At {v}.", "I'd like to book a table at {v}."),
                Slot("day", "Which day?", ("day", "date", "when"),
                     ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday",
                      "Sunday"), "On {v}.", "I'd like to book a table for {v}."),
                Slot("people", "How many people?", ("people", "persons", "guests", "party",
                                                    "many"),
                     (2, 3, 4, 5, 6, 7, 8), "{v} people.",
                     "I'd like to book a table for {v} people."))),
        Domain("pizza", order_pizza,
               ("I want to order pizza.", "Can you get me some pizza?", "I'm hungry, order pizza."),
               (Slot("size", "What size?", ("size", "big", "large", "small"),
                     ("small", "medium", "large"), "{v}.", "I want to order a {v} pizza."),
                Slot("topping", "Which topping?", ("topping", "toppings", "kind", "flavor",
                                                   "flavour", "type"),
                     ("cheese", "mushroom", "pepperoni", "veggie", "ham", "tuna"), "{v}.",
                     "I want to order a {v} pizza."),
                Slot("quantity", "How many pizzas?", ("many", "quantity", "number"),
                     (1, 2, 3, 4), "{v}.", "I want to order pizza, {v} of them."))),
        Domain("transfer", transfer_money,
               ("I need to send some money.", "Please make a transfer for me.",
                "Can you pay someone for me?"),
               (Slot("recipient", "Who is the recipient?", ("who", "whom", "recipient"),
                     ("Alice", "Bob", "Carol", "Dan", "Eve", "Frank", "Grace"), "To {v}.",
                     "I need to send money to {v}."),
                Slot("amount", "How much?", ("much", "amount", "sum"),
                     (20, 50, 75, 100, 150, 200, 500), "{v}.",
                     "I need to send {v}."),
                Slot("currency", "Which currency?", ("currency", "currencies"),
                     ("EUR", "USD", "GBP"), "In {v}.", "I need to send some {v}."))),
    )
}
OPENING_REVEAL_P = 0.3  # share of tasks whose opening already gives one slot
_WORD_RE = re.compile(r"[a-z]+")


def _words(text: str) -> list[str]:
    return _WORD_RE.findall(text.lower())


def mentioned_slots(domain: Domain, text: str) -> list[str]:
    """The domain's slots a question mentions, in the order they first appear in the text."""
    words = _words(text)
    first: dict[str, int] = {}
    for slot in domain.slots:
        hits = [i for i, w in enumerate(words) if w in slot.keywords]
        if hits:
            first[slot.name] = hits[0]
    return sorted(first, key=first.__getitem__)


def make_tasks(
    source: str = "mixed", split: str = "train", n: int = 100, seed: int = 0, *,
    max_turns: int = 6,
) -> list[Task]:
    """Simulated-user tasks (see the module docstring); ``data`` holds ``domain``, ``slots``
    (values), ``revealed`` (slots the opening gives), ``reference_calls`` and ``max_turns``."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    if source != "mixed" and source not in DOMAINS:
        raise KeyError(f"unknown simuser task source {source!r}; valid names: "
                       f"{', '.join(repr(s) for s in ['mixed', *DOMAINS])}")
    names = sorted(DOMAINS) if source == "mixed" else [source]

    def candidate(k: int) -> Candidate:
        rng = random.Random(f"simuser/{source}/{seed}/{k}")
        d = DOMAINS[rng.choice(names)]
        values = {s.name: rng.choice(s.values) for s in d.slots}
        ref = {"name": d.tool.__name__, "arguments": values}
        if rng.random() < OPENING_REVEAL_P:
            slot = rng.choice(d.slots)
            opening, revealed = slot.opening.format(v=values[slot.name]), [slot.name]
        else:
            opening, revealed = rng.choice(d.openings), []
        key = json.dumps(ref, sort_keys=True)
        return f"{key}|{opening}", f"simuser/{key}", lambda: Task(
            id=f"simuser-{source}-{split}-{seed}-{k}", prompt=opening, answer=None,
            data={"domain": d.name, "slots": values, "revealed": revealed,
                  "reference_calls": [ref], "max_turns": max_turns},
        )

    tasks = draw_tasks(candidate, split, n, tries=50 * n + 1000)
    if len(tasks) < n:
        raise ValueError(f"simuser: only {len(tasks)} unique {split} tasks for source {source!r}")
    return tasks


# ---------------------------------------------------------------------------------------------
# The env

INSTRUCTIONS = ("You are an assistant that acts for the user with tools. Ask the user one short "
                "question at a time for each missing detail, then call the right tool.")


@register_env("simuser")
class SimUserEnv:
    """A deterministic simulated user with a vague goal (see the module docstring)."""

    def __init__(
        self, tool_format: str = "hermes-prompt", *, tool_timeout_s: float = 10.0,
        tools: Sequence[Callable[..., str]] = (book_table, order_pizza, transfer_money),
        user_model: Any = None,
    ) -> None:
        if user_model is not None and not callable(getattr(user_model, "reply", None)):
            raise TypeError(f"user_model must have an async reply(goal, conversation) method, "
                            f"got {type(user_model).__name__}")
        self.user_model = user_model
        self.history: list[Message] = []
        self.tool_env = ToolEnv(list(tools), tool_format, timeout_s=tool_timeout_s)
        self.tools = self.tool_env.tools
        self.format = self.tool_env.format
        self.system_prompt = self.tool_env.system_prompt(INSTRUCTIONS)
        self.task: Task | None = None
        self.domain: Domain | None = None
        self.revealed: set[str] = set()
        self.to_reveal = 1
        self.turn, self.max_turns, self.done = 0, 6, False

    async def reset(self, task: Task, *, seed: int | None = None) -> tuple[list[Message], dict]:
        try:
            self.domain = DOMAINS[task.data["domain"]]
            slots, refs = task.data["slots"], task.data["reference_calls"]
        except KeyError as e:
            raise ValueError(f"task {task.id} is not a simuser task: missing {e}") from None
        if set(slots) != {s.name for s in self.domain.slots} or len(refs) != 1:
            raise ValueError(f"task {task.id}: slots {sorted(slots)} do not fit {self.domain.name}")
        self.task, self.done, self.turn = task, False, 0
        self.revealed = set(task.data.get("revealed", []))
        self.to_reveal = max(len(self.domain.slots) - len(self.revealed), 1)
        self.max_turns = int(task.data.get("max_turns", 6))
        opening = task.prompt
        if self.user_model is not None:
            opening = await self._llm_reply([]) or task.prompt
            self.revealed = set(self._said(opening))
            self.to_reveal = max(len(self.domain.slots) - len(self.revealed), 1)
        self.history = [{"role": "user", "content": opening}]
        messages: list[Message] = [{"role": "system", "content": self.system_prompt},
                                   {"role": "user", "content": opening}]
        return messages, {"task_id": task.id, "domain": self.domain.name}

    def goal(self) -> str:
        """The hidden goal the user model is conditioned on (never shown to the agent)."""
        assert self.task is not None and self.domain is not None
        details = ", ".join(f"{k} = {v}" for k, v in self.task.data["slots"].items())
        return (f"{self.domain.openings[0]} Details: {details}. Start vague; give a detail only "
                "when the assistant asks for it, one at a time.")

    async def _llm_reply(self, conversation: list[Message]) -> str:
        return str(await self.user_model.reply(self.goal(), conversation)).strip()

    def _said(self, text: str) -> list[str]:
        """Slots whose value ``text`` states (the LLM user's replies)."""
        assert self.task is not None
        return [k for k, v in self.task.data["slots"].items() if mentions(text, v)]

    def _user(self, text: str) -> Message:
        return {"role": "user", "content": text}

    async def step(self, action_text: str) -> StepResult:
        if self.task is None or self.domain is None or self.done:
            raise RuntimeError("step() before reset() or after the episode ended")
        self.turn += 1
        self.history.append({"role": "assistant", "content": action_text})
        parsed = self.format.parse(action_text)
        info: dict[str, Any] = {"tool_calls": parsed.tool_calls, "final_answer": parsed.answer,
                                "turn": self.turn}
        if parsed.answer is not None:  # ended the conversation without acting
            for c in parsed.tool_calls:
                c.error = c.error or "not run: the turn also gave a final answer"
            info.update(tool_errors=len(parsed.tool_calls), success=False)
            self.done = True
            return StepResult([], 0.0, terminated=True, info=info)
        if parsed.tool_calls:
            return await self._calls(parsed.tool_calls, info)
        reward, reply = 0.0, "Ask me what you need to know."
        asked = mentioned_slots(self.domain, action_text)
        if self.user_model is not None:
            reply = await self._llm_reply(self.history) or reply
            new = [s for s in self._said(reply) if s not in self.revealed]
            self.revealed |= set(new)
            reward = len(new) / self.to_reveal
        elif asked:
            new = [s for s in asked if s not in self.revealed]
            name = new[0] if new else asked[0]
            slot = next(s for s in self.domain.slots if s.name == name)
            reply = slot.answer.format(v=self.task.data["slots"][name])
            if new:
                self.revealed.add(name)
                reward = 1.0 / self.to_reveal
        info.update(tool_errors=0, asked=asked)
        self.history.append(self._user(reply))
        return self._maybe_truncate(StepResult([self._user(reply)], reward, info=info))

    async def _calls(self, calls: list, info: dict[str, Any]) -> StepResult:
        assert self.task is not None
        messages: list[Message] = []
        executed = None
        for c in calls:
            if executed is not None:
                c.error = c.error or "not run: an earlier call in this turn already acted"
                continue
            out = await self.tool_env.run_call(c)
            messages.append(self.format.tool_result_message(c.name or "unknown", out))
            if c.error is None:
                executed = c
        info["tool_errors"] = sum(c.error is not None for c in calls)
        if executed is None:
            return self._maybe_truncate(StepResult(messages, 0.0, info=info))
        self.done = True
        info["success"] = calls_equal(executed, self.task.data["reference_calls"][0])
        return StepResult(messages, 0.0, terminated=True, info=info)

    def _maybe_truncate(self, res: StepResult) -> StepResult:
        if self.turn >= self.max_turns:
            self.done, res.truncated = True, True
            res.info["success"] = False
        return res

    async def close(self) -> None:
        self.task = None

    def example_tasks(self, n: int, *, seed: int = 0) -> list[Task]:
        return make_tasks("mixed", "train", n, seed)

    def demonstration(self, task: Task) -> list[str]:
        """Ask for each slot the opening did not reveal (in slot order), then the reference
        call."""
        domain = DOMAINS[task.data["domain"]]
        revealed = set(task.data.get("revealed", []))
        ref = task.data["reference_calls"][0]
        asks = [s.question for s in domain.slots if s.name not in revealed]
        return [*asks, self.format.format_call(ref["name"], dict(ref["arguments"]))]
