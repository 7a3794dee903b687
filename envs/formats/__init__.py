"""Tool-call formats of model families: one registry, one interface (:mod:`envs.formats.core`)."""

from envs.formats.core import (
    ANSWER_RE,
    HermesFormat,
    HermesPromptFormat,
    ParsedAction,
    ToolCallFormat,
    compact_schema,
    find_answers,
    format_answer,
    get_format,
    parse_hermes,
    register_format,
    registered_formats,
)

__all__ = [
    "ANSWER_RE", "HermesFormat", "HermesPromptFormat", "ParsedAction", "ToolCallFormat",
    "compact_schema", "find_answers", "format_answer", "get_format", "parse_hermes",
    "register_format", "registered_formats",
]
