"""``env.format=auto``: pick the tool-call format from the model's chat template.

The template's text names the call syntax it renders and trains on (its tool prompt and how it
renders an assistant's ``tool_calls``), so a few markers identify the family. The first matching
rule wins; the reason names the marker found, so a wrong pick is visible and easy to override
with an explicit ``env.format=<name>``.
"""

from __future__ import annotations

from typing import Any

# (markers that must all be present, format, what the markers mean) — first match wins. Order
# matters: Qwen3-Coder templates also contain <tool_call>; Llama 4 also mentions "parameters".
_RULES: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (("<|channel|>", "<|call|>", "tools"), "harmony", "harmony <|channel|> / <|call|> (gpt-oss)"),
    (("<|channel|>", "<|call|>"), "harmony-prompt",
     "harmony <|channel|> / <|call|> but no tool rendering: definitions in the system prompt"),
    (("<function=",), "qwen3-coder", "XML <function=...><parameter=...> calls (Qwen3-Coder)"),
    (("[TOOL_CALLS]",), "mistral", "[TOOL_CALLS] (Mistral)"),
    (("<tool_call>", "<think>"), "qwen3", "<tool_call> with <think> reasoning (Qwen3)"),
    (("<tool_call>",), "hermes", "<tool_call> JSON calls (Hermes / Qwen2.5)"),
    (("[func_name1(",), "pythonic", "a Python list of calls (Llama 3.2 / 4 pythonic)"),
    (("<|python_start|>",), "pythonic", "<|python_start|> (Llama 4 pythonic)"),
    (("<|tool_call_start|>[",), "pythonic", "<|tool_call_start|>[f(...)] (LFM2 pythonic)"),
    (("<|tool_list_start|>",), "pythonic", "<|tool_list_start|> (LFM2, pythonic calls)"),
    (("<|python_tag|>",), "llama3-json", "<|python_tag|> JSON calls (Llama 3.1-3.3)"),
    (("respond with a JSON for a function call",), "llama3-json",
     "a JSON function-call prompt (Llama 3.x)"),
)
_FALLBACK = "hermes-prompt"
_UNSUPPORTED: tuple[tuple[tuple[str, ...], str], ...] = (  # call syntaxes recognised but not implemented: say so rather than mis-pick
    (("<arg_key>",), "GLM-4.5 (<arg_key>/<arg_value>)"),
    (("<|tool_call>call:",), "Gemma 4"),
)


def chat_template_text(tokenizer_or_template: Any) -> str:
    """The template source of a tokenizer (its ``tool_use`` template when it has several), or
    the string itself; "" when there is none."""
    t = tokenizer_or_template
    if not isinstance(t, (str, dict, list)) and t is not None:
        t = getattr(t, "chat_template", None)
    if isinstance(t, list):  # [{"name": ..., "template": ...}] as saved in tokenizer_config
        t = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
    if isinstance(t, dict):
        t = t.get("tool_use") or t.get("default") or next(iter(t.values()), None)
    return t if isinstance(t, str) else ""


def detect_format(tokenizer_or_template: Any) -> tuple[str, str]:
    """``(format name, reason)`` for a tokenizer or a chat template string.

    Templates without tool support (no marker and no ``tools`` variable) get ``hermes-prompt``:
    the schemas go in the system prompt and the model learns the Hermes syntax (cold start).
    """
    text = chat_template_text(tokenizer_or_template)
    if not text:
        return _FALLBACK, "the tokenizer has no chat template"
    for markers, family in _UNSUPPORTED:
        if all(m in text for m in markers):
            return _FALLBACK, (f"{family} template: its call syntax is not implemented, so the "
                               "tools go in the system prompt with Hermes calls")
    for markers, name, meaning in _RULES:
        if all(m in text for m in markers):
            return name, f"the chat template contains {meaning}"
    if "tools" not in text:
        return _FALLBACK, "the chat template has no tool support: schemas go in the system prompt"
    return _FALLBACK, ("the chat template renders tools but no known call syntax was found: "
                       "schemas go in the system prompt with Hermes calls")


def resolve_format(spec: str, tokenizer_or_template: Any) -> tuple[str, str]:
    """``spec`` with ``auto`` replaced by the detected name (options kept), and the reason
    (empty when nothing was detected): ``("auto+lenient", tok) -> ("qwen3+lenient", "...")``."""
    name, _, options = spec.partition("+")
    if name != "auto":
        return spec, ""
    picked, reason = detect_format(tokenizer_or_template)
    return (f"{picked}+{options}" if options else picked), reason
