"""Tool-use statistics of episodes: the kind of each failed call (:func:`call_error_kind`), a
batch's tool-use metrics (:func:`tool_use_stats`, ``tools/...``), their progress-bar fields and
the monitor that warns when an env that needs tools sees none (:class:`ToolUseMonitor`). Read by
the step core, the eval harness, the HTML report and the drivers."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rl.types import Trajectory

# Parse failures are errors the format set before any tool ran; call failures are set when the env
# ran (or refused to run) a well-formed call. A format may tag a call with ``kind`` / ``lenient``
# attributes (envs/formats); otherwise the kind comes from the error text of envs/formats/base.py
# and envs/base.py:ToolEnv.
PARSE_KINDS = ("json", "schema", "tags", "other_parse")
_KIND_PATTERNS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("schema", ('has no "name"', "must be a json object", "must be an object")),
    ("json", ("invalid json", "invalid xml", "malformed")),
    ("tags", ("unclosed", "without <", "without [")),
    ("not_run", ("not run",)),
    ("unknown_tool", ("unknown tool",)),
    ("timeout", ("timed out",)),
)


def call_error_kind(call: Any) -> str | None:
    """None for a successful call; else one word: json | tags | schema | other_parse (the format
    could not read it) or unknown_tool | not_run | timeout | tool_error (it could not run)."""
    if getattr(call, "error", None) is None:
        return None
    kind = getattr(call, "kind", None) or getattr(call, "error_kind", None)
    if isinstance(kind, str) and kind:
        return kind
    err = str(call.error).lower()
    for k, needles in _KIND_PATTERNS:
        if any(n in err for n in needles):
            return k
    return "tool_error" if getattr(call, "name", "") else "other_parse"


def _is_lenient(call: Any) -> bool:
    return bool(getattr(call, "lenient", False))


def tool_use_stats(trajs: Sequence[Trajectory]) -> dict[str, float]:
    """Tool-use health of a batch of episodes, as step metrics (``tools/...``).

    ``tools/call_rate``: fraction of episodes with at least one successful call;
    ``tools/calls``, ``tools/ok_calls``: calls (successful calls) per episode;
    ``tools/parse_errors``: calls per episode the format could not read, and
    ``tools/parse_error/<kind>`` by kind; ``tools/call_errors`` and ``tools/call_error/<kind>``:
    well-formed calls that failed; ``tools/lenient_calls``: calls per episode accepted only by
    lenient parsing (the format's ``lenient`` option).
    """
    n = max(len(trajs), 1)
    out: dict[str, float] = {"tools/call_rate": 0.0, "tools/calls": 0.0, "tools/ok_calls": 0.0,
                             "tools/parse_errors": 0.0, "tools/call_errors": 0.0,
                             "tools/lenient_calls": 0.0}
    for t in trajs:
        ok = 0
        for turn in t.turns:
            for c in turn.tool_calls:
                out["tools/calls"] += 1
                out["tools/lenient_calls"] += _is_lenient(c)
                kind = call_error_kind(c)
                if kind is None:
                    ok += 1
                elif kind in PARSE_KINDS:
                    out["tools/parse_errors"] += 1
                    out[f"tools/parse_error/{kind}"] = out.get(f"tools/parse_error/{kind}", 0) + 1
                else:
                    out["tools/call_errors"] += 1
                    out[f"tools/call_error/{kind}"] = out.get(f"tools/call_error/{kind}", 0) + 1
            out["tools/lenient_calls"] += int(turn.info.get("lenient_calls", 0) or 0)
        out["tools/ok_calls"] += ok
        out["tools/call_rate"] += ok > 0
    return {k: v / n for k, v in out.items()}


def tool_postfix(stats: dict[str, float]) -> dict[str, str]:
    """Short progress-bar fields: episodes with a successful call, parse errors and lenient
    calls per episode."""
    return {"call": f"{stats.get('tools/call_rate', 0.0):.2f}",
            "perr": f"{stats.get('tools/parse_errors', 0.0):.2f}",
            "lenient": f"{stats.get('tools/lenient_calls', 0.0):.2f}"}


def env_needs_tools(env_factory) -> bool:
    """Whether an env's tasks need tools: its ``needs_tools`` attribute when it declares one,
    else whether it offers any tool."""
    env = env_factory()
    flag = getattr(env, "needs_tools", None)
    return bool(flag) if flag is not None else bool(getattr(env, "tools", None))


class ToolUseMonitor:
    """Warns when an env whose tasks need tools sees no successful tool call.

    ``observe(step, trajs)`` after each RL step returns warnings (empty when healthy): one when
    ``patience`` consecutive steps had no successful call (repeated every ``patience`` steps
    while it lasts), and one when parse failures are most of the calls. ``after_sft(trajs)``
    checks the episodes sampled after the cold start. The trainer prints them and logs
    ``tools/no_call_steps``.
    """

    def __init__(self, needs_tools: bool, patience: int = 3, parse_error_share: float = 0.5):
        if patience < 1:
            raise ValueError(f"ToolUseMonitor patience must be >= 1, got {patience}")
        self.needs_tools, self.patience = needs_tools, patience
        self.parse_error_share = parse_error_share
        self.no_call_steps = 0  # consecutive steps without one successful call

    def observe(self, step: int, trajs: Sequence[Trajectory]) -> list[str]:
        if not self.needs_tools or not trajs:
            return []
        s = tool_use_stats(trajs)
        warnings: list[str] = []
        self.no_call_steps = 0 if s["tools/ok_calls"] > 0 else self.no_call_steps + 1
        if self.no_call_steps and self.no_call_steps % self.patience == 0:
            warnings.append(
                f"[turnrl] WARNING: step {step}: no successful tool call for "
                f"{self.no_call_steps} steps ({len(trajs)} episodes in the last) in an env whose "
                f"tasks need tools: {self._why(s)}")
        calls = s["tools/calls"]
        if calls > 0 and s["tools/parse_errors"] / calls > self.parse_error_share:
            kinds = ", ".join(f"{k.rsplit('/', 1)[1]}={v * len(trajs):.0f}" for k, v in
                              sorted(s.items()) if k.startswith("tools/parse_error/"))
            warnings.append(
                f"[turnrl] WARNING: step {step}: {s['tools/parse_errors'] / calls:.0%} of tool "
                f"calls could not be parsed ({kinds}); check env.format")
        return warnings

    # a checkpoint part: a resumed run warns (and logs no_call_steps) as if never stopped
    def state_dict(self) -> dict[str, int]:
        return {"no_call_steps": self.no_call_steps}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.no_call_steps = int(state["no_call_steps"])

    def after_sft(self, trajs: Sequence[Trajectory]) -> list[str]:
        if not self.needs_tools or not trajs:
            return []
        s = tool_use_stats(trajs)
        if s["tools/ok_calls"] > 0:
            return []
        return [f"[turnrl] WARNING: after SFT, 0 of {len(trajs)} episodes made a successful tool "
                f"call: {self._why(s)}; RL from here would learn to answer without tools "
                "(raise sft.lr / sft.num_examples, or see learner.lora.train_token_rows)"]

    @staticmethod
    def _why(s: dict[str, float]) -> str:
        if s["tools/calls"] == 0:
            return "the model wrote no tool call at all (wrong env.format? try env.format=auto " \
                   "or a lenient format)"
        return (f"{s['tools/parse_errors']:.2f} unparsable and {s['tools/call_errors']:.2f} "
                "failing calls per episode")
