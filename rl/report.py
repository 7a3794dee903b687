"""A self-contained HTML report of trajectories (no external JS/CSS, opens from disk).

Each episode shows its task, verdict and rewards, then the whole token list as the model saw it:
model-sampled tokens (loss mask 1) are highlighted, template / tool / user tokens (mask 0) are
plain, so the loss mask is visible; below, each model turn with its parsed tool calls (errors in
red), turn reward and the env's observation. A filter at the top shows only failures, only
episodes with tool errors, or a text search. ``trajectory_record`` is also the JSONL line format
of ``trajectories.jsonl`` (eval) and ``samples.jsonl`` (train).

Written with the standard library only (``html.escape``, ``json``).
"""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rl.health import HEALTH_KEYS, metric_value
from rl.tooluse import call_error_kind
from rl.types import Trajectory


def mask_segments(traj: Trajectory, tokenizer) -> list[dict[str, Any]]:
    """Runs of equal loss mask, decoded: ``[{"loss": 0|1, "text": ...}, ...]``."""
    out: list[dict[str, Any]] = []
    ids, mask = traj.token_ids, traj.loss_mask
    i = 0
    while i < len(ids):
        j = i
        while j < len(ids) and mask[j] == mask[i]:
            j += 1
        out.append({"loss": int(mask[i]),
                    "text": tokenizer.decode(ids[i:j], skip_special_tokens=False)})
        i = j
    return out


def trajectory_record(traj: Trajectory, tokenizer=None, **extra: Any) -> dict[str, Any]:
    """One episode as plain JSON: task, verdict, rewards, turns with tool calls, messages and
    (with a tokenizer) the token list as loss-mask segments."""
    from rewards.outcome import success as solved

    turns = []
    for i, t in enumerate(traj.turns):
        turns.append({
            "text": t.text, "finish_reason": t.finish_reason, "reward": t.reward,
            "turn_reward": traj.turn_rewards[i] if i < len(traj.turn_rewards) else None,
            "model_tokens": t.end - t.start,
            "tool_calls": [{"name": c.name, "arguments": c.arguments, "error": c.error,
                            "kind": call_error_kind(c), "lenient": bool(getattr(c, "lenient",
                                                                                 False))}
                           for c in t.tool_calls],
        })
    rec: dict[str, Any] = {
        "task_id": traj.task.id, "prompt": traj.task.prompt, "answer": traj.task.answer,
        "group": traj.group_id, "success": bool(solved(traj)), "reward": traj.outcome_reward,
        "reward_terms": dict(traj.reward_terms), "final_answer": traj.info.get("final_answer"),
        "terminated": traj.terminated, "truncated": traj.truncated,
        "tool_errors": traj.info.get("tool_errors", 0), "model_tokens": traj.num_model_tokens,
        "tokens": len(traj.token_ids), "turns": turns, "messages": traj.messages,
        **extra,
    }
    if tokenizer is not None:
        rec["segments"] = mask_segments(traj, tokenizer)
    return rec


_CSS = """
body{font-family:system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.3em} table{border-collapse:collapse;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 8px;font-size:.9em;text-align:left}
.ep{border:1px solid #bbb;border-radius:6px;margin:1em 0;padding:.6em}
.ep.fail{border-left:6px solid #c33}.ep.ok{border-left:6px solid #3a3}
.head{font-weight:600}.meta{color:#555;font-size:.9em}
pre.tokens{white-space:pre-wrap;word-break:break-word;background:#f7f7f7;padding:.5em;
 font-size:.85em;border-radius:4px}
.m1{background:#d8ecff;outline:1px solid #8bbde8}.m0{color:#555}
.turn{margin:.4em 0 .4em 1em;padding-left:.6em;border-left:3px solid #ddd}
.call{font-family:monospace;font-size:.85em}.err{color:#b00}.okc{color:#070}
.obs{font-family:monospace;font-size:.85em;background:#fffbe6;white-space:pre-wrap;
 padding:.3em;margin:.2em 0}
.bar{position:sticky;top:0;background:#fff;padding:.4em 0;border-bottom:1px solid #ddd}
.legend span{padding:0 .4em}
"""

_JS = """
function applyFilter(){
  var mode=document.getElementById('mode').value;
  var q=document.getElementById('q').value.toLowerCase();
  var eps=document.querySelectorAll('.ep'), shown=0;
  for(var i=0;i<eps.length;i++){
    var e=eps[i], ok=true;
    if(mode==='fail'&&e.dataset.success==='1')ok=false;
    if(mode==='ok'&&e.dataset.success!=='1')ok=false;
    if(mode==='toolerr'&&e.dataset.toolerr==='0')ok=false;
    if(mode==='nocall'&&e.dataset.okcalls!=='0')ok=false;
    if(q&&e.textContent.toLowerCase().indexOf(q)<0)ok=false;
    e.style.display=ok?'':'none'; if(ok)shown++;
  }
  document.getElementById('count').textContent=shown+' of '+eps.length+' shown';
}
"""


def _e(x: Any) -> str:
    return html.escape(x if isinstance(x, str) else json.dumps(x, default=str))


def _md_table_html(md: str) -> str:
    """Markdown tables/lines of EvalResult.table() as HTML (tables stay tables)."""
    out, rows = [], []

    def flush() -> None:
        if rows:
            body = "".join(
                "<tr>" + "".join(f"<{'th' if i == 0 else 'td'}>{html.escape(c)}</"
                                 f"{'th' if i == 0 else 'td'}>" for c in r) + "</tr>"
                for i, r in enumerate(rows))
            out.append(f"<table>{body}</table>")
            rows.clear()

    for line in md.splitlines():
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        else:
            flush()
            if line.strip():
                out.append(f"<p>{html.escape(line)}</p>")
    flush()
    return "\n".join(out)


def _episode_html(i: int, r: dict[str, Any]) -> str:
    ok_calls = sum(c["error"] is None for t in r["turns"] for c in t["tool_calls"])
    n_err = sum(c["error"] is not None for t in r["turns"] for c in t["tool_calls"])
    cls = "ok" if r["success"] else "fail"
    step = f" step {r['step']}" if r.get("step") is not None else ""
    parts = [
        f'<div class="ep {cls}" id="ep{i}" data-success="{int(r["success"])}" '
        f'data-toolerr="{n_err}" data-okcalls="{ok_calls}">',
        f'<div class="head">#{i}{_e(step)} task {_e(str(r["task_id"]))} — '
        f'{"success" if r["success"] else "FAILURE"} — reward {float(r["reward"]):.3f}</div>',
        f'<div class="meta">answer {_e(r["answer"])} · final {_e(r["final_answer"])} · '
        f'terms {_e(r["reward_terms"])} · terminated {r["terminated"]} · truncated '
        f'{r["truncated"]} · {len(r["turns"])} turns · {ok_calls} ok / {n_err} failed calls · '
        f'{r["model_tokens"]} model tokens of {r["tokens"]}</div>',
    ]
    if r.get("segments"):
        spans = "".join(f'<span class="m{s["loss"]}">{html.escape(s["text"])}</span>'
                        for s in r["segments"])
        parts.append(f'<details open><summary>tokens (highlighted = loss mask 1)</summary>'
                     f'<pre class="tokens">{spans}</pre></details>')
    parts.append("<details><summary>turns, tool calls, observations</summary>")
    # observations: the messages between one assistant message and the next
    obs_after: list[list[dict[str, Any]]] = []
    for m in r["messages"]:
        if m.get("role") == "assistant":
            obs_after.append([])
        elif obs_after:
            obs_after[-1].append(m)
    for j, t in enumerate(r["turns"]):
        tr = "" if t["turn_reward"] is None else f" · turn reward {float(t['turn_reward']):.3f}"
        parts.append(f'<div class="turn"><div class="meta">turn {j} · {t["model_tokens"]} tokens '
                     f'· finish {_e(t["finish_reason"])} · env reward {float(t["reward"]):.3f}'
                     f'{tr}</div>')
        for c in t["tool_calls"]:
            if c["error"] is None:
                parts.append(f'<div class="call okc">call {_e(c["name"])}({_e(c["arguments"])})'
                             f'{" [lenient]" if c["lenient"] else ""}</div>')
            else:
                parts.append(f'<div class="call err">failed call {_e(c["name"] or "?")}'
                             f'({_e(c["arguments"])}): [{_e(c["kind"])}] {_e(c["error"])}</div>')
        for m in obs_after[j] if j < len(obs_after) else []:
            parts.append(f'<div class="obs">{_e(m.get("role", ""))}: '
                         f'{_e(str(m.get("content", "")))}</div>')
        parts.append("</div>")
    parts.append("</details></div>")
    return "\n".join(parts)


# the per-step table: (column, metrics key), then the learning-health keys a row has
_STEP_COLUMNS = (("step", "step"), ("reward", "reward/mean"), ("success", "reward/success"),
                 ("tool-call rate", "tools/call_rate"))


def step_table_html(rows: Sequence[dict[str, Any]]) -> str:
    """Per-step health of a training run: step, reward, success, tool-call rate and every
    learning-health key (rl/health.py:HEALTH_KEYS) that some row has; ``-`` where a row has
    none (older runs, other learners). Rows without ``reward/mean`` (SFT, eval) are skipped."""
    rows = [r for r in rows if "reward/mean" in r]
    if not rows:
        return ""
    cols = list(_STEP_COLUMNS) + [(k, k) for k in HEALTH_KEYS
                                  if any(metric_value(r, k) is not None for r in rows)]

    def cell(r: dict[str, Any], k: str) -> str:
        v = metric_value(r, k)
        if v is None:
            return "-"
        return f"{v:.0f}" if k == "step" else f"{v:.4g}"

    head = "".join(f"<th>{html.escape(c)}</th>" for c, _ in cols)
    body = "".join("<tr>" + "".join(f"<td>{cell(r, k)}</td>" for _, k in cols) + "</tr>"
                   for r in rows)
    return (f'<details open><summary>per-step learning health ({len(rows)} steps)</summary>'
            f'<table class="steps"><tr>{head}</tr>{body}</table></details>')


def render_report(records: Sequence[dict[str, Any]], title: str = "turnrl trajectories",
                  summary_md: str = "", settings: dict[str, Any] | None = None,
                  step_rows: Sequence[dict[str, Any]] = ()) -> str:
    """The whole HTML page for ``records`` (from :func:`trajectory_record`); ``step_rows``: a
    training run's metrics rows, shown as a per-step health table (:func:`step_table_html`)."""
    n_fail = sum(not r["success"] for r in records)
    head = [f"<h1>{html.escape(title)}</h1>"]
    if settings:
        head.append('<p class="meta">' + " · ".join(
            f"{html.escape(str(k))}={_e(v)}" for k, v in settings.items()) + "</p>")
    if summary_md:
        head.append(_md_table_html(summary_md))
    if step_rows:
        head.append(step_table_html(step_rows))
    bar = (
        '<div class="bar">show <select id="mode" onchange="applyFilter()">'
        '<option value="all">all episodes</option>'
        f'<option value="fail">failures ({n_fail})</option>'
        '<option value="ok">successes</option>'
        '<option value="toolerr">with failed tool calls</option>'
        '<option value="nocall">without a successful tool call</option></select> '
        '<input id="q" placeholder="search text" oninput="applyFilter()"> '
        f'<span id="count">{len(records)} of {len(records)} shown</span> '
        '<span class="legend"><span class="m1">model token (loss)</span>'
        '<span class="m0">template / tool / user token (no loss)</span></span></div>'
    )
    eps = "\n".join(_episode_html(i, r) for i, r in enumerate(records))
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{html.escape(title)}"
            f"</title><style>{_CSS}</style></head><body>\n" + "\n".join(head) + bar + "\n"
            + eps + f"\n<script>{_JS}</script></body></html>\n")


def write_report(path: Path, records: Sequence[dict[str, Any]], **kw: Any) -> Path:
    """Write :func:`render_report` atomically (a reader never sees half a page)."""
    path = Path(path)
    tmp = path.with_suffix(".html.tmp")
    tmp.write_text(render_report(records, **kw), encoding="utf-8")
    tmp.replace(path)
    return path
