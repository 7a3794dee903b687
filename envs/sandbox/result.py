"""The outcome of one sandboxed call, and how the model sees it."""

from __future__ import annotations

import re
from dataclasses import dataclass

_CONTROL = re.compile(
    r"\x1b\[[0-?]*[ -/]*[@-~]"  # CSI sequences: colours, cursor moves, erase
    r"|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"  # OSC: window titles, hyperlinks
    r"|\x1b[PX^_][^\x1b]*(?:\x1b\\)?"  # DCS, SOS, PM, APC strings
    r"|\x1b[ -/]*[0-~]?"  # other escapes (and a lone ESC)
    r"|\r(?!\n)"  # a bare carriage return (overwrites the line on a terminal)
    r"|[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]"  # other C0/C1 controls, NUL included
)


def clean_text(text: str) -> str:
    """What a model may see of program output: no NUL bytes, no ANSI/VT escape sequences, no
    other control characters except newline and tab (``\\r\\n`` becomes ``\\n``)."""
    if text.isprintable():  # the common case: nothing to strip (newlines are not printable)
        return text
    return _CONTROL.sub("", text.replace("\r\n", "\n"))


@dataclass(frozen=True)
class ExecResult:
    """What a call produced. ``error`` is None exactly when the code ran to completion with
    exit status 0; otherwise it is a short message for the model (the exception line, a
    timeout, a limit that was hit, a crashed worker)."""

    stdout: str
    stderr: str
    exit_code: int | None
    """Process exit status; negative = killed by that signal; None = no process result
    (the call never ran or its worker died)."""
    error: str | None
    timed_out: bool
    isolation: str
    """Isolation level the call actually ran under (see ``envs.sandbox.config.LEVELS``)."""
    duration: float
    """Wall-clock seconds, as measured by the worker (or the trainer when the worker died)."""
    truncated: bool = False
    """stdout or stderr was longer than the output cap and was cut."""

    def __post_init__(self) -> None:  # program output is cleaned once, here
        object.__setattr__(self, "stdout", clean_text(self.stdout))
        object.__setattr__(self, "stderr", clean_text(self.stderr))
        if self.error is not None:
            object.__setattr__(self, "error", clean_text(self.error))

    @property
    def ok(self) -> bool:
        return self.error is None

    def render(self, max_chars: int | None = None) -> str:
        """The observation string: stdout, then stderr, then an ``Error:`` line when the
        error is not already the last line of stderr (as a traceback's is)."""
        parts = [self.stdout.rstrip("\n")] if self.stdout.strip() else []
        if self.stderr.strip():
            parts.append(self.stderr.rstrip("\n"))
        if self.truncated:
            parts.append("[output truncated]")
        last = self.stderr.strip().splitlines()[-1] if self.stderr.strip() else ""
        if self.error and not (last and self.error.startswith(last[:80])):
            parts.append(f"Error: {self.error}")
        text = "\n".join(parts) if parts else "(no output)"
        if max_chars is not None and len(text) > max_chars:
            text = text[: max_chars - 24] + "\n[observation truncated]"
        return text

    @classmethod
    def failure(cls, error: str, isolation: str = "none", duration: float = 0.0) -> ExecResult:
        """A call that produced no process result."""
        return cls("", "", None, error, False, isolation, duration)
