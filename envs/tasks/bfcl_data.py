"""BFCL data: categories, entries, tool schemas, ground-truth calls and the train/test split.

Everything is read from the data files of the ``bfcl-eval`` PyPI package (install with
``pip install --no-deps bfcl-eval``): ``bfcl_eval/data/BFCL_v4_<category>.json`` (JSON Lines,
one entry per line), answers in ``bfcl_eval/data/possible_answer/`` and the multi-turn function
docs in ``bfcl_eval/data/multi_turn_func_doc/``. The package's Python modules are not imported
here, except the multi-turn API classes (``eval_checker/multi_turn_eval/func_source_code``,
standard library + mpmath) when a multi-turn ground truth must be mapped to named arguments.

Categories (:func:`bfcl_categories`): every data file of the package that is plain JSON Lines
with per-entry function docs or a multi-turn scenario. Not supported (refused with the reason):
``format_sensitivity`` (a list of ids, not entries), ``memory`` and ``web_search`` (their
backends need extra packages and network access, and memory needs prerequisite conversations).

Split (fixed, by entry id): an entry is in ``"test"`` when
``sha256("bfcl/<entry id>") mod 100 < test_percent`` (default 50), else in ``"train"``.
``test_percent=100`` puts the whole category into ``"test"`` (the full benchmark).
BFCL is a benchmark: train on other tasks (``env=compose``) and evaluate here; the train split
exists for in-distribution experiments and is contamination when results are reported.

Reference calls (``Task.data["reference_calls"]``, the demonstrations): single turn, the first
option of every possible answer (:func:`first_choice_call`), Java / JavaScript values rendered as
the strings the package's converters read back (:func:`render_value`); multi turn, the ground
truth. Each scores 1.0 except in the entries of :data:`UNSATISFIABLE`, whose possible answers no
call satisfies under BFCL's rules (data errors of the package; the official checker fails their
reference calls too). They stay in the categories, as BFCL counts them (every model fails them).

Reused: the package's data files and API classes; nothing else (no code copied).
"""

from __future__ import annotations

import ast
import copy
import functools
import hashlib
import importlib
import inspect
import json
import random
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl.types import Task

SPLITS = ("train", "test")
DEFAULT_TEST_PERCENT = 50
UNSUPPORTED = {
    "format_sensitivity": "its file lists entry ids of other categories, not entries",
    "memory": "its backends need extra packages (overrides, sentence embeddings) and "
              "prerequisite conversations",
    "web_search": "its backend needs html2text and network access",
}
# Entry id -> why no call satisfies its possible answer under BFCL's rules (bfcl-eval 2026.3.23;
# the test that replays every reference call keeps this list exact).
UNSATISFIABLE: dict[str, str] = {
    "live_multiple_862-181-3": "the answer needs 'journey_start_time', which the function does "
                               "not declare",
    "live_multiple_964-207-0": "the answer lacks the required 'statement' and has 'question', "
                               "which the function does not declare",
    "live_simple_106-63-0": "required parameters without any option",
    "live_simple_112-68-0": "required parameters without any option",
    "simple_java_36": "ArrayList items of type any stay strings after conversion; the answer "
                      "holds 42 and true",
    "simple_java_64": "the answer's dict value 'epoch_millis' is not a list of options, so BFCL "
                      "compares with its characters: the intended call fails",
    "simple_java_65": "ArrayList items of type any stay strings after conversion; the answer "
                      "holds true",
}
SINGLE_TURN_KINDS = ("simple", "multiple", "parallel", "parallel_multiple", "irrelevance",
                     "relevance")

# Multi-turn API classes: class name -> (module under func_source_code, function-doc file).
API_CLASSES: dict[str, tuple[str, str]] = {
    "GorillaFileSystem": ("gorilla_file_system", "gorilla_file_system.json"),
    "MathAPI": ("math_api", "math_api.json"),
    "MessageAPI": ("message_api", "message_api.json"),
    "TwitterAPI": ("posting_api", "posting_api.json"),
    "TicketAPI": ("ticket_api", "ticket_api.json"),
    "TradingBot": ("trading_bot", "trading_bot.json"),
    "TravelAPI": ("travel_booking", "travel_booking.json"),
    "VehicleControlAPI": ("vehicle_control", "vehicle_control.json"),
}
STATELESS_CLASSES = ("MathAPI",)  # no scenario to load (as in the package)
_API_PACKAGE = "bfcl_eval.eval_checker.multi_turn_eval.func_source_code"


# ---------------------------------------------------------------------------------------------
# Files


@functools.lru_cache(maxsize=1)
def data_dir() -> Path:
    """``bfcl_eval/data`` of the installed package; a one-line error when it is missing."""
    import importlib.util

    spec = importlib.util.find_spec("bfcl_eval")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            "env=bfcl needs the BFCL data: pip install --no-deps bfcl-eval (see the Makefile)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{i}: not a JSON line ({e.msg})") from None
    return rows


def bfcl_categories() -> list[str]:
    """Supported categories (data files of the installed package, minus :data:`UNSUPPORTED`)."""
    names = [p.name[len("BFCL_v4_"):-len(".json")] for p in data_dir().glob("BFCL_v4_*.json")]
    return sorted(n for n in names if n not in UNSUPPORTED)


def is_multi_turn(category: str) -> bool:
    return category.startswith("multi_turn")


def language_of(category: str) -> str:
    if "javascript" in category:
        return "javascript"
    return "java" if "java" in category else "python"


def kind_of(category: str) -> str:
    """The single-turn checker a category uses (its name without ``live_``/language parts)."""
    name = category.removeprefix("live_")
    for kind in ("parallel_multiple", "irrelevance", "relevance", "parallel", "multiple"):
        if name.startswith(kind):
            return kind
    return "simple"


@functools.cache
def load_entries(category: str) -> tuple[dict[str, Any], ...]:
    """The category's entries with ``possible_answer`` (single-turn) or ``ground_truth``
    (multi-turn) attached; read once per process (treat as read-only)."""
    if category in UNSUPPORTED:
        raise ValueError(f"BFCL category {category!r} is not supported: {UNSUPPORTED[category]}")
    path = data_dir() / f"BFCL_v4_{category}.json"
    if not path.exists():
        raise KeyError(f"unknown BFCL category {category!r}; valid names: "
                       f"{', '.join(bfcl_categories())}")
    entries = _read_jsonl(path)
    answer_path = data_dir() / "possible_answer" / path.name
    answers = {a["id"]: a["ground_truth"] for a in _read_jsonl(answer_path)} \
        if answer_path.exists() else {}
    for e in entries:
        if is_multi_turn(category):
            e["ground_truth"] = answers[e["id"]]
        else:
            e["possible_answer"] = answers.get(e["id"])  # None for (ir)relevance
    return tuple(entries)


@functools.cache
def function_docs(class_name: str) -> tuple[dict[str, Any], ...]:
    """The BFCL function docs of one multi-turn API class (read-only)."""
    if class_name not in API_CLASSES:
        raise KeyError(f"unsupported BFCL API class {class_name!r}; known: {sorted(API_CLASSES)}")
    return tuple(_read_jsonl(data_dir() / "multi_turn_func_doc" / API_CLASSES[class_name][1]))


def api_class(class_name: str) -> type:
    module = importlib.import_module(f"{_API_PACKAGE}.{API_CLASSES[class_name][0]}")
    return getattr(module, class_name)


# ---------------------------------------------------------------------------------------------
# Tool schemas: BFCL's docs ("dict", "float", "tuple", "any", Java/JS type names) -> JSON schema

_JSON_TYPE = {"dict": "object", "float": "number", "tuple": "array", "string": "string",
              "integer": "integer", "boolean": "boolean", "array": "array", "object": "object",
              "number": "number", "null": "null"}
_LANGUAGE_HINT = {
    "java": " This parameter can be of any type of Java object in string representation.",
    "javascript": " This parameter can be of any type of JavaScript object in string "
                  "representation.",
}


def _property_schema(p: dict[str, Any], language: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    t = p.get("type")
    desc = str(p.get("description", ""))
    if language != "python" and t not in ("dict", None, ""):
        # Java / JavaScript values are written as strings in the language's syntax (BFCL parses
        # them with its type converters), so the model sees "string" plus a hint.
        out["type"] = "string"
        desc = desc + _LANGUAGE_HINT[language] if t != "String" else desc
    elif t in _JSON_TYPE:
        out["type"] = _JSON_TYPE[t]
    # "any" and unknown types: no "type" (any JSON value)
    if desc:
        out["description"] = desc
    for key in ("enum", "default", "format"):
        if key in p:
            out[key] = p[key]
    if isinstance(p.get("items"), dict) and out.get("type") == "array":
        out["items"] = _property_schema(p["items"], language)
    if isinstance(p.get("properties"), dict):
        out["type"] = "object"
        out["properties"] = {k: _property_schema(v, language) for k, v in p["properties"].items()}
        req = [r for r in p.get("required", []) if r in out["properties"]]
        if req:
            out["required"] = req
    return out


def tool_schema(doc: dict[str, Any], language: str = "python") -> dict[str, Any]:
    """One BFCL function doc as an OpenAI/HF tool schema (JSON types only)."""
    params = doc.get("parameters") or {}
    props = {k: _property_schema(v, language) for k, v in (params.get("properties") or {}).items()}
    parameters: dict[str, Any] = {"type": "object", "properties": props}
    req = [r for r in params.get("required", []) if r in props]
    if req:
        parameters["required"] = req
    return {"type": "function", "function": {
        "name": doc["name"], "description": str(doc.get("description", "")),
        "parameters": parameters}}


# ---------------------------------------------------------------------------------------------
# Multi-turn ground truth: "mv(source='a', destination='b')" -> {"name", "arguments"}


@functools.cache
def method_parameters(class_names: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
    """Public method name -> parameter names, over the given API classes."""
    out: dict[str, tuple[str, ...]] = {}
    for cname in class_names:
        for name, fn in inspect.getmembers(api_class(cname), predicate=inspect.isfunction):
            if not name.startswith("_"):
                out[name] = tuple(p for p in inspect.signature(fn).parameters if p != "self")
    return out


def parse_call(text: str, params: dict[str, tuple[str, ...]]) -> dict[str, Any]:
    """A Python call string with literal arguments as ``{"name", "arguments"}``; positional
    arguments get their names from ``params`` (method name -> parameter names)."""
    try:
        node = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as e:
        raise ValueError(f"ground-truth call {text!r} is not Python: {e.msg}") from None
    if not isinstance(node, ast.Call) or not isinstance(node.func, (ast.Name, ast.Attribute)):
        raise ValueError(f"ground-truth call {text!r} is not a function call")
    name = ast.unparse(node.func)
    args: dict[str, Any] = {}
    names = params.get(name, ())
    if len(node.args) > len(names):
        raise ValueError(f"ground-truth call {text!r}: too many positional arguments")
    for pname, a in zip(names, node.args):
        args[pname] = ast.literal_eval(a)
    for kw in node.keywords:
        if kw.arg is None:
            raise ValueError(f"ground-truth call {text!r}: **kwargs are not supported")
        args[kw.arg] = ast.literal_eval(kw.value)
    return {"name": name, "arguments": args}


# ---------------------------------------------------------------------------------------------
# Tasks


def split_of(entry_id: str, test_percent: int = DEFAULT_TEST_PERCENT) -> str:
    bucket = int(hashlib.sha256(f"bfcl/{entry_id}".encode()).hexdigest()[:8], 16) % 100
    return "test" if bucket < test_percent else "train"


def _concrete(option: Any) -> Any:
    """An answer option as a value: a dict option maps each key to its options (first taken,
    "" = omitted); a list of dict options becomes a list of such dicts."""
    if isinstance(option, dict):
        out = {}
        for k, opts in option.items():
            if not isinstance(opts, list):
                out[k] = opts
                continue
            chosen = next((o for o in opts if o != ""), None)
            if chosen is not None or "" not in opts:
                out[k] = _concrete(chosen)
        return out
    if isinstance(option, list) and option and all(isinstance(o, dict) for o in option):
        return [_concrete(o) for o in option]
    return option


def first_choice_call(answer: dict[str, dict[str, list[Any]]],
                      declared: dict[str, Any] | None = None,
                      required: Sequence[str] = ()) -> dict[str, Any]:
    """One possible answer ``{name: {param: [options]}}`` as a concrete call: each parameter's
    first option; parameters whose only option is "" (optional, omitted) are left out, and so
    are optional ones the function does not declare (``declared``: its properties), except a
    ``required`` one, which gets "" (the one value BFCL's string check then accepts).
    (:data:`UNSATISFIABLE` lists the entries no call satisfies.)"""
    (name, params), = answer.items()
    args = {}
    for k, options in params.items():
        if declared is not None and k not in declared and "" in options:
            continue
        chosen = next((o for o in options if o != ""), None)
        if chosen is not None or "" not in options:
            args[k] = _concrete(chosen)
        elif k in required:
            args[k] = ""
    return {"name": name, "arguments": args}


_JAVA_ELEM = {"String": "String", "integer": "int", "long": "long", "float": "float",
              "double": "double", "boolean": "boolean", "char": "char"}


def _literal(v: Any, language: str) -> str:
    """A value as a literal of the language (strings quoted)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list) and language == "javascript":
        return "[" + ", ".join(_literal(x, language) for x in v) + "]"
    if isinstance(v, dict) and language == "javascript":
        return "{" + ", ".join(f"{json.dumps(k)}: {_literal(x, language)}"
                               for k, x in v.items()) + "}"
    return str(v)


def _item_literal(v: Any, item_type: str, language: str) -> str:
    """An array item as a literal; Java ``long`` and ``float`` items carry the suffix (``101L``,
    ``2.5f``) that the package's converter needs to read them as numbers, as scalars do."""
    if language == "java" and item_type in ("long", "float") and isinstance(v, (int, float)) \
            and not isinstance(v, bool):
        return f"{v}{'L' if item_type == 'long' else 'f'}"
    return _literal(v, language)


def render_value(v: Any, spec: dict[str, Any], language: str) -> Any:
    """A Python value as the string BFCL expects for a Java / JavaScript parameter of type
    ``spec["type"]`` (what the package's type converters parse back)."""
    t = spec.get("type", "any")
    if language == "python" or isinstance(v, str) and t in ("String", "any", "char"):
        return v
    if t in ("Array", "ArrayList", "Queue", "Stack", "Set") and isinstance(v, list):
        item_type = spec.get("items", {}).get("type", "")
        items = ", ".join(_item_literal(x, item_type, language) for x in v)
        if t == "Array":
            elem = _JAVA_ELEM.get(item_type, "Object")
            if elem == "String":  # the package's parser keeps quotes of String array items
                items = ", ".join(str(x) for x in v)
            return f"new {elem}[]{{{items}}}"
        return f"new ArrayList<>(Arrays.asList({items}))"
    if t in ("HashMap", "Hashtable") and isinstance(v, dict):
        puts = " ".join(f"put({_literal(k, language)}, {_literal(x, language)});"
                        for k, x in v.items())
        return f"new HashMap<String, Object>() {{{{ {puts} }}}}"
    if t == "Bigint" and isinstance(v, int):
        return f"{v}n"
    if language == "java" and t in ("long", "float") and isinstance(v, (int, float)):
        return _item_literal(v, t, language)  # Java literal suffixes the parser needs
    if isinstance(v, str):
        return v
    return _literal(v, language)


def _task(category: str, e: dict[str, Any]) -> Task:
    turns = e["question"]
    first = next((m["content"] for m in reversed(turns[0]) if m.get("role") == "user"), "")
    data: dict[str, Any] = {"category": category, "entry_id": e["id"], "turns": turns}
    if is_multi_turn(category):
        classes = tuple(e["involved_classes"])
        params = method_parameters(classes)
        gt = e["ground_truth"]
        data.update(
            involved_classes=list(classes), initial_config=e.get("initial_config", {}),
            ground_truth=gt, missed_function=e.get("missed_function", {}),
            long_context="long_context" in category,
            reference_calls=[parse_call(c, params) for turn in gt for c in turn],
        )
    else:
        pa, language = e["possible_answer"], language_of(category)
        props = {f["name"]: (f.get("parameters") or {}).get("properties") or {}
                 for f in e["function"]}
        refs = []
        required = {f["name"]: (f.get("parameters") or {}).get("required") or []
                    for f in e["function"]}
        for a in pa or []:
            fn = next(iter(a))
            call = first_choice_call(a, props.get(fn, {}), required.get(fn, ()))
            call["arguments"] = {k: render_value(v, props[call["name"]].get(k, {}), language)
                                 for k, v in call["arguments"].items()}
            refs.append(call)
        data.update(language=language, kind=kind_of(category), functions=e["function"],
                    possible_answer=pa, reference_calls=refs)
    return Task(id=f"bfcl-{e['id']}", prompt=first, answer=None, data=copy.deepcopy(data))


def make_tasks(
    source: str = "multi_turn_base", split: str = "test", n: int = 100, seed: int = 0, *,
    test_percent: int = DEFAULT_TEST_PERCENT,
) -> list[Task]:
    """Up to ``n`` tasks of BFCL category ``source`` in ``split`` (see the module docstring),
    in an order shuffled by ``seed`` (a representative sample when ``n`` is small). Asking for
    more than the split holds returns the whole split."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got '{split}'")
    if not 0 <= test_percent <= 100:
        raise ValueError(f"tasks.kwargs.test_percent must be in [0, 100], got {test_percent}")
    entries = [e for e in load_entries(source) if split_of(e["id"], test_percent) == split]
    if not entries:
        raise ValueError(f"BFCL {source}: no {split} entries with test_percent={test_percent}")
    random.Random(f"bfcl/{source}/{seed}").shuffle(entries)
    return [_task(source, e) for e in entries[:n]]
