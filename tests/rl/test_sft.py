"""Cold-start SFT data: env demonstrations and JSONL conversations on the RL token path."""

from __future__ import annotations

import json
import re

import pytest

import envs.tasks  # noqa: F401
from envs.base import make_env
from envs.tasks.math import make_tasks
from rewards.compose import compose
from rl.sft import SFTDataError, conversation_trajectory, load_jsonl_conversations, replay


def _assistant_tokens(traj):
    return [i for i, m in zip(traj.token_ids, traj.loss_mask) if m]


@pytest.mark.parametrize("source", ["mixed", "word", "arith", "basic_arithmetic", "chain_sum"])
def test_demonstrations_replayed_through_the_env_score_full_reward(tokenizer, source):
    factory = lambda: make_env("math")  # noqa: E731
    for task in make_tasks(source, "train", 5, seed=3):
        actions = factory().demonstration(task)
        traj = replay(tokenizer, factory, task, actions)
        total, terms = compose(traj, {"outcome": 1.0, "format": 1.0})
        assert terms == {"outcome": 1.0, "format": 1.0}, (task.prompt, actions)
        assert traj.terminated and not traj.truncated


def test_sft_loss_mask_covers_exactly_the_assistant_tokens(tokenizer):
    factory = lambda: make_env("math")  # noqa: E731
    task = make_tasks("word", "train", 1, seed=0)[0]
    actions = factory().demonstration(task)
    traj = replay(tokenizer, factory, task, actions)
    expected = []
    for a in actions:
        expected += tokenizer.encode(a, add_special_tokens=False) + [tokenizer.eos_token_id]
    assert _assistant_tokens(traj) == expected
    rendered = tokenizer.apply_chat_template(traj.messages, tokenize=False)
    full = tokenizer.encode(rendered, add_special_tokens=False)
    assert full[: len(traj.token_ids)] == traj.token_ids
    # the tool's real result is in the (unmasked) observation
    obs = tokenizer.decode([i for i, m in zip(traj.token_ids, traj.loss_mask) if not m])
    assert "<tool_response>" in obs


def test_jsonl_conversations_take_the_same_path(tokenizer, tmp_path):
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "2+2?"},
        {"role": "assistant", "content": '<tool_call>{"name": "calculator", "arguments": '
                                         '{"expression": "2+2"}}</tool_call>'},
        {"role": "tool", "content": "<tool_response>4</tool_response>"},
        {"role": "assistant", "content": "<answer>4</answer>"},
    ]}
    path = tmp_path / "data.jsonl"
    path.write_text(json.dumps(row) + "\n\n")
    (loaded,) = load_jsonl_conversations(path)
    traj = conversation_trajectory(tokenizer, loaded, native_tools=False)
    expected = []
    for m in row["messages"]:
        if m["role"] == "assistant":
            expected += tokenizer.encode(m["content"], add_special_tokens=False)
            expected.append(tokenizer.eos_token_id)
    assert _assistant_tokens(traj) == expected
    rendered = tokenizer.apply_chat_template(row["messages"], tokenize=False)
    assert tokenizer.encode(rendered, add_special_tokens=False)[: len(traj.token_ids)] == \
        traj.token_ids


def test_replay_ends_a_turn_where_sampling_stops(tokenizer):
    """EOS follows a turn unless the turn already ends with a token sampling stops at: EOS
    itself or one of the request's stop tokens (a format's, e.g. harmony's <|call|>)."""
    from rl.rollout.engines.base import GenerationRequest, SamplingParams
    from rl.sft import ReplayEngine

    eos = tokenizer.eos_token_id
    turns = ["<tool_call>{}</tool_call>", "bye<|im_end|>", "<tool_call>{}</tool_call>"]
    enc = [tokenizer.encode(t, add_special_tokens=False) for t in turns]
    stop = enc[0][-1]  # as if the format's turns ended at the token that closes </tool_call>
    engine = ReplayEngine(tokenizer, turns)
    got = [engine.generate([GenerationRequest([1])], SamplingParams(stop_token_ids=ids))[0]
           for ids in ([], [], [stop])]
    assert [o.token_ids for o in got] == [enc[0] + [eos], enc[1], enc[2]]
    assert enc[1][-1] == eos and [o.finish_reason for o in got] == ["stop"] * 3


def test_chatml_conversation_ending_in_eos_gets_no_second_eos(tokenizer):
    row = {"messages": [{"role": "user", "content": "hi"},
                        {"role": "assistant", "content": "hello<|im_end|>"},
                        {"role": "user", "content": "bye"},
                        {"role": "assistant", "content": "bye"}]}
    traj = conversation_trajectory(tokenizer, row, native_tools=False)
    clean = [{**m, "content": m["content"].removesuffix("<|im_end|>")} for m in row["messages"]]
    rendered = tokenizer.apply_chat_template(clean, tokenize=False)
    full = tokenizer.encode(rendered, add_special_tokens=False)
    assert full[: len(traj.token_ids)] == traj.token_ids  # one <|im_end|> per turn
    assert tokenizer.decode(full[len(traj.token_ids):]) == "\n"
    assert _assistant_tokens(traj).count(tokenizer.eos_token_id) == 2


@pytest.mark.parametrize(("line", "msg"), [
    ("{not json", "not valid JSON"),
    ('{"messages": [{"role": "user", "content": "hi"}]}', "no assistant turn"),
    ('{"messages": [{"role": "assistant"}]}', "message 0 (assistant) has no 'content'"),
    ('{"text": "no messages"}', "needs a non-empty 'messages' list (missing)"),
    ('{"messages": []}', "needs a non-empty 'messages' list (empty)"),
    ('{"messages": "hi"}', "needs a non-empty 'messages' list (a JSON string)"),
    ('[{"role": "assistant", "content": "x"}]', "the row is a JSON array, expected an object"),
    ('{"messages": [{"role": "bot", "content": "x"}]}',
     "message 0 has role 'bot', expected one of system, user, assistant, tool"),
    ('{"messages": [{"content": "x"}]}', "message 0 has no 'role'"),
    ('{"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": null}]}',
     "message 1 (assistant) has null content, expected a string"),
    ('{"messages": [{"role": "assistant", "content": [{"type": "text", "text": "x"}]}]}',
     "message 0 (assistant) has array content"),
    ('{"messages": [{"role": "assistant", "content": "", "tool_calls": [{"name": "f"}]}]}',
     "structured 'tool_calls', which are not replayed"),
    ('{"messages": ["hi", {"role": "assistant", "content": "x"}]}', "message 0 is a JSON string"),
    ('{"messages": [{"role": "assistant", "content": "x"}], "tools": {"a": 1}}',
     "'tools' must be a list"),
])
def test_malformed_jsonl_rows_fail_with_line_numbers(tmp_path, line, msg):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"messages": [{"role": "assistant", "content": "ok"}]}\n' + line + "\n")
    with pytest.raises(SFTDataError, match=re.escape(msg)) as info:
        load_jsonl_conversations(path)
    assert str(info.value).startswith(f"{path}:2: ")
    assert "\n" not in str(info.value)


def test_empty_missing_and_binary_files_are_errors(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n  \n")
    with pytest.raises(SFTDataError, match=r"empty\.jsonl: no conversations \(the file is empty"):
        load_jsonl_conversations(empty)
    with pytest.raises(SFTDataError, match=r"sft.data_path: .*nope\.jsonl does not exist"):
        load_jsonl_conversations(tmp_path / "nope.jsonl")
    with pytest.raises(SFTDataError, match="is not a file"):
        load_jsonl_conversations(tmp_path)
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00garbage\n")
    with pytest.raises(SFTDataError, match="not UTF-8 text"):
        load_jsonl_conversations(binary)


def test_valid_rows_with_tool_messages_and_tools_pass(tmp_path):
    rows = [{"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
                          {"role": "assistant", "content": "<tool_call>{}</tool_call>"},
                          {"role": "tool", "name": "calculator", "content": "4"},
                          {"role": "assistant", "content": "<answer>4</answer>"}],
             "tools": [{"type": "function", "function": {"name": "calculator"}}], "id": "a"},
            {"messages": [{"role": "assistant", "content": ""}]}]
    path = tmp_path / "ok.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    assert load_jsonl_conversations(path) == rows
