"""Outcome (episode-level) rewards.

- ``outcome``: does the final answer match the task's reference answer (below)?
- ``call_match_outcome``: the episode's executed tool calls against the reference calls
  (``task.data["reference_calls"]``), paired by maximum-weight matching
  (:mod:`envs.matching`): matched similarity / max(#executed calls, #reference calls), so
  1.0 iff exactly the reference calls ran (in any order); extra and missing calls cost credit.
- ``env_success``: the env's own terminal verdict (``info["success"]`` of the trajectory or of
  its last step), 0.0 when the env reported none.
- ``tool_use``: at least one tool call succeeded (shaping, off by default).

:func:`success` is the one success criterion of evaluation and logging: the env's verdict when
it gives one, else ``outcome >= 1``.

Answer matching:

Numeric answers are compared as numbers with relative tolerance 1e-6 (absolute 1e-9 near zero)
after a forgiving parse: thousands separators ("1,234"), currency signs ("$12"), units or words
around the number ("12 apples", "x = 12"), trailing ".0", fractions ("3/4" == 0.75, also
``\\frac{3}{4}``), the unicode minus. The answer must contain exactly ONE number: "3 + 4 = 7" or a
list of guesses does not match (no credit for hedging). Non-numeric references compare
normalised strings (case, surrounding whitespace, quotes and a final period ignored).
"""

from __future__ import annotations

import math
import re
from typing import Any

from rewards.compose import register_reward
from envs.matching import match_calls
from envs.formats import find_answers
from rl.types import Trajectory

REL_TOL = 1e-6
ABS_TOL = 1e-9

_UNSIGNED = r"(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_NUMBER_RE = re.compile(rf"[-+]?{_UNSIGNED}(?:\s*/\s*[-+]?{_UNSIGNED})?")
_THOUSANDS_RE = re.compile(r"(?<=\d),(?=\d{3}(?!\d))")
_LATEX_FRAC_RE = re.compile(r"\\[dt]?frac\{([^{}]*)\}\{([^{}]*)\}")


def parse_number(text: str) -> float | None:
    """The single number in ``text`` (see module docstring), or None if there is not exactly one."""
    text = text.replace("\u2212", "-")
    text = _LATEX_FRAC_RE.sub(r"\1/\2", text)
    text = _THOUSANDS_RE.sub("", text)
    found = _NUMBER_RE.findall(text)
    if len(found) != 1:
        return None
    token = found[0].replace(" ", "")
    try:
        if "/" in token:
            num, den = token.split("/")
            return float(num) / float(den) if float(den) != 0 else None
        value = float(token)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _normalise(text: str) -> str:
    text = " ".join(text.lower().split()).rstrip(".")
    return text.strip("\"'`").rstrip(".").strip()


def answers_match(predicted: str | None, reference: Any) -> bool:
    """Whether a predicted answer string matches a reference (number or string)."""
    if predicted is None or reference is None:
        return False
    if isinstance(reference, bool):
        reference = str(reference)
    if isinstance(reference, (int, float)):
        ref: float | None = float(reference)
    else:
        ref = parse_number(str(reference))
    if ref is None:
        return _normalise(predicted) == _normalise(str(reference))
    pred = parse_number(predicted)
    return pred is not None and math.isclose(pred, ref, rel_tol=REL_TOL, abs_tol=ABS_TOL)


def final_answer(traj: Trajectory) -> str | None:
    """The env's final answer (``traj.info["final_answer"]``); if the agent loop did not record
    one, the last ``<answer>`` in the last turn."""
    if "final_answer" in traj.info:
        answer = traj.info["final_answer"]
        return None if answer is None else str(answer)
    if traj.turns:
        found = find_answers(traj.turns[-1].text)
        return found[-1] if found else None
    return None


@register_reward("outcome")
def outcome_reward(traj: Trajectory) -> float:
    """1.0 when the final answer matches ``traj.task.answer``, else 0.0."""
    return 1.0 if answers_match(final_answer(traj), traj.task.answer) else 0.0


@register_reward("tool_use")
def tool_use_reward(traj: Trajectory) -> float:
    """1.0 when at least one tool call succeeded (small shaping; off by default)."""
    return 1.0 if any(c.error is None for t in traj.turns for c in t.tool_calls) else 0.0


def reference_calls(traj: Trajectory) -> list[dict[str, Any]]:
    """The task's reference calls (``task.data["reference_calls"]``); a clear error if absent."""
    refs = traj.task.data.get("reference_calls")
    if not isinstance(refs, list):
        raise ValueError(
            f"task {traj.task.id} has no data['reference_calls'] (a list of "
            '{"name": ..., "arguments": {...}}); call-matching rewards need one'
        )
    return refs


@register_reward("call_match_outcome")
def call_match_outcome_reward(traj: Trajectory) -> float:
    """Matched similarity of executed calls vs reference calls / max(#executed, #reference)."""
    refs = reference_calls(traj)
    ran = [c for t in traj.turns for c in t.tool_calls if c.error is None]
    denom = max(len(ran), len(refs))
    if denom == 0:
        return 1.0  # nothing was to be called and nothing was
    return sum(w for _, _, w in match_calls(ran, refs)) / denom


def env_verdict(traj: Trajectory) -> bool | None:
    """The env's success flag: ``traj.info["success"]``, else the last step info that has one."""
    if "success" in traj.info:
        return bool(traj.info["success"])
    for turn in reversed(traj.turns):
        if "success" in turn.info:
            return bool(turn.info["success"])
    return None


@register_reward("env_success")
def env_success_reward(traj: Trajectory) -> float:
    """1.0 when the env reported success at the end of the episode, else 0.0."""
    return 1.0 if env_verdict(traj) else 0.0


def success(traj: Trajectory) -> bool:
    """Whether the episode solved its task: the env's verdict if any, else ``outcome >= 1``."""
    verdict = env_verdict(traj)
    return verdict if verdict is not None else outcome_reward(traj) >= 1.0
