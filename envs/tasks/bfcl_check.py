"""BFCL scoring. The single-turn rules follow BFCL's official AST checker (gorilla-llm/gorilla,
``berkeley-function-call-leaderboard/bfcl_eval/eval_checker/ast_eval/ast_checker.py``, as shipped
in ``bfcl-eval`` 2026.3.23), read and written anew, not imported: that module imports every
provider SDK. Checked once against it (2026-12-08, its SDK imports stubbed): the same verdict, per
(call, answer) pair, for the reference call of every single-turn entry and ~86k mutations of
them (arguments dropped, retyped, emptied, reordered, altered); the departures below aside.

Single turn (:func:`check_single_turn`), per category kind:

- ``simple`` / ``multiple``: exactly one call, and it matches the possible answer;
- ``parallel`` / ``parallel_multiple``: as many calls as possible answers, and the calls can be
  paired one-to-one with the answers so that every pair matches, in any order. Departure: BFCL
  pairs greedily (each answer takes the first unused call that matches), which can miss a valid
  pairing; here the pairing is a maximum bipartite matching (the Hungarian algorithm of
  :func:`envs.matching.max_weight_matching` on 0/1 weights), so an output is accepted iff a valid
  pairing exists;
- ``irrelevance``: no well-formed call; ``relevance``: at least one well-formed call.

A call matches a possible answer ``{name: {param: [options]}}`` when (BFCL's AST rules):
the function name is the answer's (departure: ``a.b`` may be written ``a_b``, which BFCL allows
only for model APIs without dots in names); every required parameter is present; every given
parameter is declared and appears in the answer; each value has the declared type and equals
one option; every answer parameter the call omits has "" (optional) among its options.

- Types: an int is accepted for a float (Python's promotion; BFCL does it for the value itself,
  not for array items); a value of the answer's own type, when that differs from the declared
  one, is a "variable" and compared with ``==``; array items are type-checked one level deep
  against each option that is a list, and an option that is not a list ("", optional) lets any
  items through: so an optional float array given as ints passes the type check.
- Values: strings after removing spaces and ``,./-_*^`` and case; lists element by element with
  the same string normalisation and ``==`` otherwise (``1 == 1.0``), where the option "" stands
  for the empty list (BFCL compares with each option's elements, and "" has none: ``[]`` is
  accepted for an optional array); dicts key by key (each value one of that key's options; a
  missing key needs "" among its options); lists of dicts dict by dict in order; anything else
  by ``==``.
- Java / JavaScript values are strings in the language's syntax, converted with the package's
  own type converters (they import cleanly) before the same checks.

Multi turn: :class:`ApiSession` is one fresh set of the package's API class instances (never
the package's module-level cache); :func:`turn_check` is BFCL's per-turn check: after a turn, the
state of every instance (public attributes) equals the state reached by the ground truth, and
the execution results of the episode so far contain (as a multiset) those of the turn's ground
truth; a turn whose ground truth is empty passes iff the model made no well-formed call in it.
"""

from __future__ import annotations

import copy
import inspect
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

from envs.matching import max_weight_matching
from envs.tasks.bfcl_data import STATELESS_CLASSES, api_class

# ---------------------------------------------------------------------------------------------
# Single-turn AST matching

_PY_TYPES: dict[str, type] = {"string": str, "integer": int, "float": float, "boolean": bool,
                              "array": list, "tuple": list, "dict": dict, "any": str}
_NESTED = ("Array", "ArrayList", "array")  # Java/JS container types with typed items
_STRIP = re.compile(r"[ ,./\-_*^]")


def standardize(s: str) -> str:
    return _STRIP.sub("", s).lower().replace("'", '"')


def _std(v: Any) -> Any:
    return standardize(v) if isinstance(v, str) else v


def _answer_type(options: Sequence[Any]) -> type | None:
    return next((type(o) for o in options if o != ""), None)


def _type_ok(value: Any, options: Sequence[Any], expected: type, nested: type | None) -> \
        tuple[bool, bool]:
    """(type acceptable, value is a "variable": of the answer's type, not the declared one)."""
    ans_type = _answer_type(options)
    variable = ans_type is not None and ans_type is not expected
    if type(value) is expected:
        if nested is None:
            return True, variable
        items = cast("list[Any]", value)
        # Items are checked against the options that are lists; an option that is not ("",
        # optional) lets any items through, as in BFCL: an optional int array given for a
        # float array passes, and its values are then compared with == (1 == 1.0).
        if any(not isinstance(opt, list) or all(_type_ok(v, opt, nested, None)[0] for v in items)
               for opt in options):
            return True, variable
        return False, False
    if ans_type is not None and type(value) is ans_type:
        return True, True
    return False, False


def _dict_ok(value: dict, options: Sequence[Any]) -> bool:
    for opt in options:
        if opt == "" or not isinstance(opt, dict):
            continue
        if all(k in opt and _std(v) in [_std(o) for o in opt[k]] for k, v in value.items()) \
                and all(k in value or "" in opts for k, opts in opt.items()):
            return True
    return False


def _list_options(options: Sequence[Any]) -> list[list[Any]]:
    """The options of a list parameter as lists: "" (optional) is the empty list, as in BFCL,
    which compares a list with each option element by element and "" has no elements."""
    return [opt if isinstance(opt, list) else [] for opt in options
            if isinstance(opt, list) or opt == ""]


def _list_of_dicts_ok(value: list, options: Sequence[Any]) -> bool:
    return any(len(opt) == len(value)
               and all(isinstance(v, dict) and _dict_ok(v, [o]) for v, o in zip(value, opt))
               for opt in _list_options(options))


def _convert(value: Any, spec: dict[str, Any], language: str) -> tuple[Any, type, type | None]:
    """Java/JS: the string value converted by the package's converter; Python: unchanged.
    Returns (value, expected Python type, expected item type or None)."""
    t = spec.get("type", "any")
    if language == "python":
        nested = _PY_TYPES.get(spec.get("items", {}).get("type", "any")) \
            if t in ("array", "tuple") else None
        if t == "float" and type(value) is int:
            value = float(value)  # Python's int -> float promotion, as BFCL allows
        return value, _PY_TYPES.get(t, str), nested
    from bfcl_eval.constants.type_mappings import JAVA_TYPE_CONVERSION, JS_TYPE_CONVERSION

    if language == "java":
        from bfcl_eval.eval_checker.ast_eval.type_convertor.java_type_converter import (
            java_type_converter as conv,
        )
        table = JAVA_TYPE_CONVERSION
    else:
        from bfcl_eval.eval_checker.ast_eval.type_convertor.js_type_converter import (
            js_type_converter as conv,
        )
        table = JS_TYPE_CONVERSION
    if t not in table:
        return value, _PY_TYPES.get(t, str), None
    if not isinstance(value, str):
        raise TypeError(f"a {language} value must be a string, got {type(value).__name__}")
    if t in _NESTED:
        item = spec.get("items", {}).get("type", "String")
        return conv(value, t, item), table[t], table.get(item)
    return conv(value, t), table[t], None


def check_call(call: dict[str, Any], doc: dict[str, Any], answer: dict[str, Any],
               language: str = "python") -> str | None:
    """None when ``call`` ({"name", "arguments"}) matches one possible ``answer``
    (``{name: {param: [options]}}``) of function ``doc`` (BFCL's doc); else why not."""
    (name, expected_params), = answer.items()
    if call["name"] != name:
        return f"wrong function {call['name']!r}, expected {name!r}"
    params = doc.get("parameters") or {}
    props: dict[str, Any] = params.get("properties") or {}
    args: dict[str, Any] = call["arguments"]
    missing = [p for p in params.get("required", []) if p not in args]
    if missing:
        return f"missing required parameter {missing[0]!r}"
    for p, value in args.items():
        if p not in props or p not in expected_params:
            return f"unexpected parameter {p!r}"
        options = expected_params[p]
        try:
            value, expected, nested = _convert(value, props[p], language)
        except Exception as e:  # a converter refusing the string: the value is wrong
            return f"parameter {p!r}: {type(e).__name__}: {e}"
        ok, variable = _type_ok(value, options, expected, nested)
        if not ok:
            return f"parameter {p!r}: wrong type {type(value).__name__}"
        if not variable:
            if expected is dict:
                good = isinstance(value, dict) and _dict_ok(value, options)
            elif expected is list and nested is dict:
                good = _list_of_dicts_ok(value, options)
            elif expected is str:
                good = standardize(value) in [standardize(o) for o in options
                                              if isinstance(o, str)]
            elif expected is list:
                good = [_std(v) for v in value] in \
                    [[_std(o) for o in opt] for opt in _list_options(options)]
            else:
                good = value in options
        else:
            good = value in options
        if not good:
            return f"parameter {p!r}: value {value!r} is not one of {options!r}"
    for p, options in expected_params.items():
        if p not in args and "" not in options:
            return f"missing parameter {p!r}"
    return None


def canonical_name(name: str, functions: Sequence[dict[str, Any]]) -> str:
    """A model's function name mapped to the doc's: ``a_b`` stands for ``a.b`` when only the
    dotted name exists (APIs that forbid dots in names)."""
    names = {f["name"] for f in functions}
    if name in names:
        return name
    alias = {f["name"].replace(".", "_"): f["name"] for f in functions}
    return alias.get(name, name)


@dataclass
class SingleTurnResult:
    success: bool
    reason: str  # "" when success
    matched: int = 0  # calls paired with a matching answer


def check_single_turn(calls: Sequence[dict[str, Any]], malformed: int, task_data: dict[str, Any]
                      ) -> SingleTurnResult:
    """Score one single-turn response: ``calls`` are the well-formed calls
    (``{"name", "arguments"}``), ``malformed`` how many calls failed to parse."""
    kind, functions = task_data["kind"], task_data["functions"]
    if kind == "irrelevance":
        ok = not calls
        return SingleTurnResult(ok, "" if ok else "called a function on an irrelevant request")
    if kind == "relevance":
        ok = bool(calls)
        return SingleTurnResult(ok, "" if ok else "no function call")
    answers: list[dict[str, Any]] = task_data["possible_answer"] or []
    if malformed:
        return SingleTurnResult(False, f"{malformed} malformed call(s)")
    if len(calls) != len(answers):
        return SingleTurnResult(False, f"{len(calls)} call(s), expected {len(answers)}")
    docs = {f["name"]: f for f in functions}
    calls = [{"name": canonical_name(c["name"], functions), "arguments": c["arguments"]}
             for c in calls]
    reasons: dict[tuple[int, int], str | None] = {}
    for i, c in enumerate(calls):
        for j, a in enumerate(answers):
            doc = docs.get(next(iter(a)), {})
            reasons[i, j] = check_call(c, doc, a, task_data["language"])
    weights = [[1.0 if reasons[i, j] is None else 0.0 for j in range(len(answers))]
               for i in range(len(calls))]
    matched = len(max_weight_matching(weights))  # pairs of weight 1: a maximum matching
    if matched == len(answers):
        return SingleTurnResult(True, "", matched)
    if len(answers) == 1:
        return SingleTurnResult(False, str(reasons[0, 0]), matched)
    return SingleTurnResult(False, f"only {matched} of {len(answers)} calls match", matched)


# ---------------------------------------------------------------------------------------------
# Multi-turn execution

FORBIDDEN = frozenset({"kill", "exit", "quit", "remove", "unlink", "popen", "Popen", "run"})


def result_text(out: Any) -> str:
    """A method's return value as the string BFCL compares (dicts as JSON when possible)."""
    if isinstance(out, str):
        return out
    if isinstance(out, dict):
        try:
            return json.dumps(out)
        except (TypeError, ValueError):
            return str(out)
    return str(out)


@dataclass
class ApiSession:
    """One episode's instances of the involved API classes, with the scenario loaded."""

    instances: dict[str, Any]
    methods: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, involved_classes: Sequence[str], initial_config: dict[str, Any],
               long_context: bool = False) -> ApiSession:
        instances: dict[str, Any] = {}
        for name in involved_classes:
            inst = api_class(name)()
            if name not in STATELESS_CLASSES:
                inst._load_scenario(copy.deepcopy(initial_config.get(name, {})),
                                    long_context=long_context)
            instances[name] = inst
        methods = {m: getattr(inst, m) for inst in instances.values()
                   for m, _ in inspect.getmembers(inst, predicate=inspect.ismethod)
                   if not m.startswith("_")}
        return cls(instances, methods)

    def call(self, name: str, arguments: dict[str, Any]) -> tuple[str, bool]:
        """Run one call; returns (result text, ran without raising). Failures are texts
        ``"Error during execution: ..."`` (BFCL's wording), never exceptions."""
        try:
            if name in FORBIDDEN or name not in self.methods:
                raise ValueError(f"unknown function {name!r}")
            return result_text(self.methods[name](**arguments)), True
        except Exception as e:  # the API's own errors are observations for the model
            return f"Error during execution: {e}", False

    def state(self) -> dict[str, dict[str, Any]]:
        return {name: {k: v for k, v in vars(inst).items() if not k.startswith("_")}
                for name, inst in self.instances.items()}


def state_differences(model: ApiSession, truth: ApiSession) -> list[str]:
    """``Class.attribute`` names whose values differ between the two sessions."""
    diffs = []
    for name, inst in truth.instances.items():
        other = model.instances[name]
        for attr, value in vars(inst).items():
            if not attr.startswith("_") and getattr(other, attr, object()) != value:
                diffs.append(f"{name}.{attr}")
    return diffs


def missing_results(model_results: Sequence[str], truth_results: Sequence[str]) -> list[str]:
    """Ground-truth results not found in the model's (multiset containment, any order)."""
    pool = list(model_results)
    missing = []
    for r in truth_results:
        if r in pool:
            pool.remove(r)
        else:
            missing.append(r)
    return missing


def turn_check(model: ApiSession, truth: ApiSession, model_results_so_far: Sequence[str],
               truth_results: Sequence[str], truth_calls: int, model_calls_this_turn: int
               ) -> str | None:
    """BFCL's check after one turn (module docstring): None when it passes, else why not."""
    if truth_calls == 0:
        return None if model_calls_this_turn == 0 else \
            "called functions in a turn that cannot be served"
    if model_calls_this_turn == 0:
        return "no function call in this turn"
    diffs = state_differences(model, truth)
    if diffs:
        return f"state differs from the ground truth: {', '.join(diffs)}"
    missing = missing_results(model_results_so_far, truth_results)
    if missing:
        return f"missing execution results: {missing[:2]!r}"
    return None
