"""Tool-call formats of model families: one registry, one interface.

``get_format("qwen3+lenient")`` returns a :class:`ToolCallFormat`; ``detect_format(tokenizer)``
picks one from a chat template (``env.format=auto``). Modules: :mod:`~envs.formats.base` (the
interface, registry, lenient option, failure kinds), :mod:`~envs.formats.hermes` (hermes,
hermes-prompt, qwen3), :mod:`~envs.formats.qwen3_coder`, :mod:`~envs.formats.llama`
(llama3-json, pythonic), :mod:`~envs.formats.mistral`, :mod:`~envs.formats.harmony` (gpt-oss:
harmony, harmony-prompt), :mod:`~envs.formats.detect`.
"""

from envs.formats import harmony, llama, mistral, qwen3_coder  # noqa: F401  (register them)
from envs.formats.base import (
    ANSWER_RE,
    PARSE_ERROR_KINDS,
    LenientFormat,
    ParsedAction,
    ToolCallFormat,
    compact_schema,
    error_kind,
    find_answers,
    format_answer,
    get_format,
    lenient_calls,
    register_format,
    registered_formats,
    split_spec,
)
from envs.formats.detect import detect_format, resolve_format
from envs.formats.harmony import HarmonyFormat, HarmonyPromptFormat, parse_harmony
from envs.formats.hermes import HermesFormat, HermesPromptFormat, Qwen3Format, parse_hermes
from envs.formats.llama import Llama3JsonFormat, PythonicFormat
from envs.formats.mistral import MistralFormat
from envs.formats.qwen3_coder import Qwen3CoderFormat

__all__ = [
    "ANSWER_RE", "PARSE_ERROR_KINDS", "HarmonyFormat", "HarmonyPromptFormat", "HermesFormat",
    "HermesPromptFormat", "LenientFormat",
    "Llama3JsonFormat", "MistralFormat", "ParsedAction", "PythonicFormat", "Qwen3CoderFormat",
    "Qwen3Format", "ToolCallFormat", "compact_schema", "detect_format", "error_kind",
    "find_answers", "format_answer", "get_format", "lenient_calls", "parse_harmony",
    "parse_hermes",
    "register_format", "registered_formats", "resolve_format", "split_spec",
]
