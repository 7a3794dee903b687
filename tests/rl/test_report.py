"""The HTML report: parses, holds every trajectory, shows the loss mask, escapes model text,
loads nothing from outside, and offers the failure filter."""

from __future__ import annotations

from html.parser import HTMLParser

from rl.report import mask_segments, render_report, trajectory_record, write_report
from rl.types import Task, ToolCall, Trajectory, Turn


class Page(HTMLParser):
    def __init__(self):
        super().__init__()
        self.episodes: list[dict] = []
        self.loss_spans: list[str] = []
        self.external: list[str] = []
        self.options: list[str] = []
        self._in_loss = False
        self._stack: list[str] = []

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self._stack.append(tag)
        if tag == "div" and "ep" in (a.get("class") or "").split():
            self.episodes.append(a)
        if tag == "span" and a.get("class") == "m1":
            self._in_loss = True
            self.loss_spans.append("")
        if tag in ("script", "link", "img") and (a.get("src") or a.get("href")):
            self.external.append(tag)
        if tag == "option":
            self.options.append(a.get("value", ""))

    def handle_endtag(self, tag):
        if tag == "span":
            self._in_loss = False

    def handle_data(self, data):
        if self._in_loss:
            self.loss_spans[-1] += data


def _traj(tokenizer, prompt: str, action: str, ok: bool, calls=()) -> Trajectory:
    p = tokenizer.encode(prompt, add_special_tokens=False)
    a = tokenizer.encode(action, add_special_tokens=False)
    obs = tokenizer.encode("\nresult: 4\n", add_special_tokens=False)
    ids = p + a + obs
    t = Trajectory(task=Task(id=prompt, prompt=prompt, answer=4), token_ids=ids,
                   loss_mask=[0] * len(p) + [1] * len(a) + [0] * len(obs),
                   logprobs=[0.0] * len(ids), prompt_len=len(p))
    t.turns = [Turn(len(p), len(p) + len(a), action, "stop", tool_calls=list(calls))]
    t.messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": action},
                  {"role": "tool", "content": "result: 4"}]
    t.info["success"] = ok
    t.outcome_reward = 1.0 if ok else 0.0
    return t


def test_mask_segments_round_trip(tokenizer):
    t = _traj(tokenizer, "Q: 2+2?", " <answer>4</answer>", True)
    segs = mask_segments(t, tokenizer)
    assert [s["loss"] for s in segs] == [0, 1, 0]
    assert segs[1]["text"] == " <answer>4</answer>"
    assert "".join(s["text"] for s in segs) == tokenizer.decode(t.token_ids)


def test_report_holds_every_trajectory_and_shows_the_mask(tokenizer, tmp_path):
    trajs = [
        _traj(tokenizer, "Q: 2+2?", " <answer>4</answer>", True),
        _traj(tokenizer, "Q: 1+3?", ' <tool_call>{"name": "calc"}</tool_call>', False,
              calls=[ToolCall("calc", {}, error="calc failed: boom")]),
        _traj(tokenizer, "Q: <script>alert(1)</script>", " <b>5</b>", False),
    ]
    records = [trajectory_record(t, tokenizer) for t in trajs]
    path = write_report(tmp_path / "r.html", records, title="t", summary_md="| a | b |\n|---|---|"
                        "\n| success | 0.333 |")
    page = Page()
    page.feed(path.read_text())
    assert len(page.episodes) == 3
    assert [e["data-success"] for e in page.episodes] == ["1", "0", "0"]
    assert [e["data-toolerr"] for e in page.episodes] == ["0", "1", "0"]
    # the highlighted (loss) spans are exactly the model's actions
    assert page.loss_spans[0] == "model token (loss)"  # the legend
    assert page.loss_spans[1:] == [" <answer>4</answer>", ' <tool_call>{"name": "calc"}</tool_call>',
                               " <b>5</b>"]
    html_text = path.read_text()
    assert "<script>alert(1)</script>" not in html_text  # model / task text is escaped
    assert "calc failed: boom" in html_text and "[tool_error]" in html_text
    assert page.external == []  # self-contained: no src= / href= resources
    assert {"fail", "toolerr", "nocall"} <= set(page.options)
    assert "<th>success</th>" in html_text or "<td>success</td>" in html_text


def test_render_report_without_tokenizer_still_lists_turns(tokenizer):
    rec = trajectory_record(_traj(tokenizer, "Q", " A", True))
    assert "segments" not in rec
    page = render_report([rec])
    assert page.count('class="ep ') == 1 and "turn 0" in page
