"""bench/bench_prefix_tree.py: the scripted demonstration engine (turn lookup from a context,
n-th-sample perturbations) and the tree batch it makes through the real tree rollout code:
branches equal their parents token for token through the fork, the trie count equals a
brute-force count of distinct prefixes. No model, no timing."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

_spec = importlib.util.spec_from_file_location(
    "bench_prefix_tree", Path(__file__).resolve().parents[1] / "bench" / "bench_prefix_tree.py")
bt = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bt)

CALL_A = '<tool_call>{"name": "f", "arguments": {"x": 1}}</tool_call>'
CALL_B = '<tool_call>{"name": "g", "arguments": {"y": 2}}</tool_call>'
DEMO = ["Sorry, no.", CALL_A, CALL_B, "Here you go: 3.", CALL_A, "Done: 1."]


def chat(*turns: tuple[str, str]) -> str:
    return "".join(f"<|im_start|>{role}\n{text}<|im_end|>\n" for role, text in turns)


def test_user_turns_split_at_replies_and_refuse_a_trailing_call():
    assert bt.user_turns(DEMO) == [["Sorry, no."], [CALL_A, CALL_B, "Here you go: 3."],
                                   [CALL_A, "Done: 1."]]
    with pytest.raises(ValueError, match="ends with a tool call"):
        bt.user_turns([CALL_A])


def test_next_demo_turn_counts_user_turns_and_the_calls_made_in_the_current_one():
    parts = bt.user_turns(DEMO)
    sys_ = ("system", "tools: f, g")
    assert bt.next_demo_turn(parts, chat(sys_, ("user", "q1"))) == "Sorry, no."
    ctx = chat(sys_, ("user", "q1"), ("assistant", "Sorry, no."), ("user", "q2"))
    assert bt.next_demo_turn(parts, ctx) == CALL_A
    # a malformed CALL_A is not CALL_A: the demonstration's call comes again
    bad = ctx + chat(("assistant", bt.perturb(CALL_A, 1)), ("tool", "Error: invalid JSON"))
    assert bt.next_demo_turn(parts, bad) == CALL_A
    # a call with a sentence before it counts as made
    ok = bad + chat(("assistant", bt.PREAMBLE + CALL_A), ("tool", "1"))
    assert bt.next_demo_turn(parts, ok) == CALL_B
    done = ok + chat(("assistant", CALL_B), ("tool", "2"))
    assert bt.next_demo_turn(parts, done) == "Here you go: 3."
    # user turn 3: CALL_A of turn 2 does not count there
    third = done + chat(("assistant", "Here you go: 3."), ("user", "q3"))
    assert bt.next_demo_turn(parts, third) == CALL_A
    with pytest.raises(ValueError, match="4 user turns"):
        bt.next_demo_turn(parts, third + chat(("user", "q4")))


def test_perturb_cycles_right_wrong_and_reworded():
    assert bt.perturb(CALL_A, 0) == CALL_A
    assert bt.perturb(CALL_A, 1) == '<tool_call>{"name": "f", "arguments": {"x": 1}</tool_call>'
    assert bt.perturb(CALL_A, 2) == "Let me check.\n" + CALL_A
    assert bt.perturb(CALL_A, 3) == bt.perturb(CALL_A, 1)
    assert bt.perturb("Here you go: 3.", 1) == "I could not find that."


def test_scripted_engine_counts_samples_per_exact_context(tokenizer):
    from rl.rollout.engines.base import GenerationRequest, SamplingParams

    eng = bt.ScriptedEngine(tokenizer, {"q1": DEMO})
    ctx = tokenizer.encode(chat(("system", "s"), ("user", "q1")), add_special_tokens=False)
    outs = eng.generate([GenerationRequest(ctx), GenerationRequest(ctx),
                         GenerationRequest(ctx + [13])], SamplingParams())
    texts = [tokenizer.decode(o.token_ids, skip_special_tokens=True) for o in outs]
    assert texts == ["Sorry, no.", "I could not find that.", "Sorry, no."]
    assert all(o.token_ids[-1] == tokenizer.eos_token_id for o in outs)
    with pytest.raises(ValueError, match="0 task prompts"):
        eng.text(tokenizer.encode("nothing here", add_special_tokens=False))


@pytest.fixture(scope="module")
def tree_batch():
    trajs, pad, _ = bt.make_tree_trajectories(2, 1, "fork", 2, 2, 3)
    return trajs


def test_tree_batch_rows_share_exactly_their_prefix(tree_batch):
    trajs = tree_batch
    assert len(trajs) == 2 * (1 + 3)  # per task: a root + max_branches slots
    summary = bt.tree_summary(trajs)
    assert sorted(summary) == ["0", "1"]
    levels = []
    for g, tree in summary.items():
        rows = [t for t in trajs if str(t.group_id) == g]
        ids = {t.info["tree"]["id"]: t for t in rows}
        root = rows[0]
        # every row of a tree starts with the same prompt (system + tools + user turn 1)
        assert all(t.token_ids[: root.prompt_len] == root.token_ids[: root.prompt_len]
                   for t in rows)
        assert tree["prompt_len"] == [root.prompt_len] * len(rows)
        assert tree["branches"], "no fork in a tree"
        for b in tree["branches"]:
            t, p = ids[b["id"]], ids[b["parent"]]
            k = b["fork_turn"]
            end = p.turns[k + 1].start  # through the fork turn's observation
            assert b["expected"] == end
            assert t.token_ids[:end] == p.token_ids[:end]
            # and no further than the common start of the two next turns
            assert b["shared"] == end + b["same_start"]
            assert t.token_ids[b["shared"]] != p.token_ids[b["shared"]]
            levels.append(b["level"])
        assert tree["tokens"] == sum(len(t.token_ids) for t in rows)
        # trie = distinct token prefixes, counted by brute force
        prefixes = {tuple(t.token_ids[: i + 1]) for t in rows for i in range(len(t.token_ids))}
        assert tree["trie_tokens"] == len(prefixes)
        assert tree["trie_tokens"] < tree["tokens"]
    assert 2 in levels  # depth 2: a fork after a later tool turn


def test_tree_branches_continue_wrong_or_reworded(tree_batch, tokenizer):
    """The first branch of a fork point is the n = 1 sample of the turn after the fork (a
    malformed call: an error observation; or a reply without the answer), the second the
    n = 2 one (the demonstration's turn after a sentence)."""
    from rl.rollout.tree import is_error_turn

    seen = set()
    for t in tree_batch:
        t.validate()
        m = t.info["tree"]
        if m["kind"] != "branch":
            continue
        turn = t.turns[m["fork_turn"] + 1]
        text = tokenizer.decode(t.token_ids[turn.start: turn.end], skip_special_tokens=True)
        if m["id"].endswith(".0"):
            if "<tool_call>" in text:
                assert is_error_turn(turn), text
                seen.add("error")
            else:
                assert text == "I could not find that."
                seen.add("wrong reply")
        else:
            assert text.startswith(bt.PREAMBLE), text
            seen.add("reworded")
    assert seen == {"error", "wrong reply", "reworded"}


def test_learner_update_on_the_tree_batch_equals_plain_in_fp32(tree_batch):
    """The bench's comparison is of equal work: on this exact batch (token ids renumbered into a
    small vocabulary, which keeps every shared prefix), a tiny fp32 Llama's prefix-shared update
    has the plain update's gradients. Micro-batch 8 as in the bench: the shared pass packs the
    whole batch into one sequence, the plain one runs the 8 padded rows."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from rl.learner.torch import LearnerConfig, LossConfig, TorchLearner
    from rl.types import Batch

    trajs = tree_batch
    adv = torch.tensor([1.0 if i % 2 == 0 else -1.0 for i in range(len(trajs))])
    b = Batch.from_trajectories(trajs, adv, pad_id=0)
    vocab = {v: i + 1 for i, v in enumerate(sorted(set(b.input_ids[b.attention_mask.bool()]
                                                       .tolist())))}
    b.input_ids = torch.where(b.attention_mask.bool(),
                              b.input_ids.apply_(lambda v: vocab.get(v, 0)), 0)
    grads, norms, shapes = [], [], []
    for share in (False, True):
        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(
            vocab_size=len(vocab) + 1, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
            tie_word_embeddings=True, attn_implementation="sdpa")).float()
        learner = TorchLearner(model, LearnerConfig(micro_batch_size=8, autocast="fp32",
                                                    prefix_sharing=share))
        learner.optimizer.step = lambda *a, **k: None  # gradients only
        learner.scheduler.step = lambda *a, **k: None
        model.get_decoder().register_forward_pre_hook(  # the update's passes, not the no-grad
            lambda mod, args, kw, s=share: shapes.append((s, tuple(kw["input_ids"].shape)))
            if torch.is_grad_enabled() else None, with_kwargs=True)  # health probe's forwards
        m = learner.update(b, LossConfig(kl_coef=0.0))
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        norms.append(m["grad_norm"])
    trie = len({tuple(t.token_ids[: i + 1]) for t in trajs for i in range(len(t.token_ids))})
    # plain: the 8 padded rows; shared: one sequence, the whole batch's trie (each prefix once)
    assert shapes == [(False, tuple(b.input_ids.shape)), (True, (1, trie))]
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5, rtol=1e-4)
    assert norms[1] == pytest.approx(norms[0], rel=1e-4)
