"""Preference objectives (rl/algos/preference.py): M-DPO, M-KTO, REFUEL against hand-computed
losses, masks included; pair formation; the per-token weights' gradient; a tiny run of each."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rl.algos.objective import preference_loss, preference_weights
from rl.algos.preference import (
    PREFERENCE,
    dpo_loss,
    group_labels,
    group_pairs,
    kto_loss,
    preference_spec,
    refuel_loss,
    shared_prefix,
    token_weights,
)
from rl.types import Batch, PreferenceSpec, Task, Trajectory, Turn


def spec(objective: str, beta: float, pairs=(), starts=(), labels=(), rewards=(),
         wd: float = 1.0, wu: float = 1.0) -> PreferenceSpec:
    return PreferenceSpec(objective, beta, torch.tensor(list(pairs), dtype=torch.long
                                                        ).reshape(-1, 2),
                          torch.tensor(list(starts), dtype=torch.long),
                          torch.tensor(list(labels), dtype=torch.long),
                          torch.tensor(list(rewards), dtype=torch.float32), wd, wu)


def sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


# Two rows of 4 positions; mask 0 = prompt / tool tokens. Per-position lp - ref:
#   row 0: [., +0.5, +0.5, -5 (tool)]   -> D0 = 1.0
#   row 1: [., -0.5, -9 (tool), -0.5]   -> D1 = -1.0
MASK = torch.tensor([[0, 1, 1, 0], [0, 1, 0, 1]], dtype=torch.float32)
LP = torch.tensor([[0.0, -1.0, -2.0, -5.0], [0.0, -1.0, -9.0, -1.0]])
REF = torch.tensor([[0.0, -1.5, -2.5, 0.0], [0.0, -0.5, 0.0, -0.5]])


def test_dpo_by_hand():
    # margin = beta (D0 - D1) = 0.5 * 2 = 1; loss = -log sigmoid(1) = log(1 + e^-1)
    loss, m = dpo_loss(LP, REF, MASK, spec("dpo", 0.5, pairs=[(0, 1)]))
    assert float(loss) == pytest.approx(0.3132616875, abs=1e-7)
    assert float(m["margin"]) == pytest.approx(1.0) and float(m["accuracy"]) == 1.0
    # d loss / d lp = -beta * sigmoid(-margin) on the chosen row's model tokens, + on the rejected
    w, metrics = token_weights(LP, REF, MASK, spec("dpo", 0.5, pairs=[(0, 1)]))
    g = 0.5 * sig(-1.0)
    assert torch.allclose(w, torch.tensor([[0, -g, -g, 0], [0, g, 0, g]]), atol=1e-7)
    assert metrics["pref/loss"] == pytest.approx(0.3132616875, abs=1e-7)
    assert metrics["pref/pairs"] == 1.0


def test_masked_tokens_change_nothing():
    """Tool / observation tokens (mask 0) enter neither the loss nor its gradient."""
    lp2 = LP.clone()
    lp2[0, 3], lp2[1, 2], lp2[:, 0] = 40.0, -40.0, 3.0
    for name, s in [("dpo", spec("dpo", 0.5, pairs=[(0, 1)])),
                    ("kto", spec("kto", 0.5, labels=[1, -1])),
                    ("refuel", spec("refuel", 0.5, pairs=[(0, 1)], starts=[1], rewards=[1, 0]))]:
        a, wa = token_weights(LP, REF, MASK, s)
        b, wb = token_weights(lp2, REF, MASK, s)
        assert torch.equal(a, b), name
        assert wa["pref/loss"] == wb["pref/loss"], name
        assert not a[MASK == 0].any(), name


def test_kto_by_hand():
    # D = [1.0, -1.0, 0.5] (one model token each), labels +1, -1, +1; beta 1, lambda_D 1, lambda_U 2
    # z = max(0, mean D) = 1/6; values: sig(1 - 1/6), 2 sig(1/6 + 1), sig(0.5 - 1/6)
    mask = torch.tensor([[0.0, 1.0, 0.0]] * 3)
    lp = torch.tensor([[0.0, 1.0, 7.0], [0.0, -1.0, 7.0], [0.0, 0.5, 7.0]])
    s = spec("kto", 1.0, labels=[1, -1, 1], wd=1.0, wu=2.0)
    loss, m = kto_loss(lp, torch.zeros_like(lp), mask, s)
    z = 1 / 6
    expect = ((1 - sig(1 - z)) + (2 - 2 * sig(z + 1)) + (1 - sig(0.5 - z))) / 3
    assert float(loss) == pytest.approx(expect, abs=1e-6)
    assert float(m["kl_ref_point"]) == pytest.approx(z)
    # the reference point is clipped at 0: mean D = (-1 - 2) / 2 < 0 -> z = 0; unlabelled rows out
    lp2 = torch.tensor([[0.0, -1.0, 0.0], [0.0, -2.0, 0.0], [0.0, 50.0, 0.0]])
    loss2, m2 = kto_loss(lp2, torch.zeros_like(lp2), mask, spec("kto", 1.0, labels=[1, -1, 0]))
    assert float(m2["kl_ref_point"]) == 0.0
    assert float(loss2) == pytest.approx(((1 - sig(-1.0)) + (1 - sig(2.0))) / 2, abs=1e-6)


def test_kto_reference_point_carries_no_gradient():
    mask = torch.tensor([[0.0, 1.0]] * 2)
    lp = torch.tensor([[0.0, 1.0], [0.0, 0.2]])
    w, _ = token_weights(lp, torch.zeros_like(lp), mask, spec("kto", 1.0, labels=[1, 1]))
    z = 0.6  # detached: each row's weight is its own -(1/2) sig'(D - z)
    for i, d in enumerate([1.0, 0.2]):
        assert float(w[i, 1]) == pytest.approx(-0.5 * sig(d - z) * (1 - sig(d - z)), abs=1e-6)


def test_refuel_by_hand():
    # rows a, b share positions < 2; lp - old per position:
    #   a: [., 3.0 (shared), 0.2, 7 (tool), 0.3]  -> D_a = 0.5 (positions >= 2, model tokens)
    #   b: [., 3.0 (shared), -0.4, 0.1, 9 (tool)] -> D_b = -0.3
    mask = torch.tensor([[0, 1, 1, 0, 1], [0, 1, 1, 1, 0]], dtype=torch.float32)
    diff = torch.tensor([[0.0, 3.0, 0.2, 7.0, 0.3], [0.0, 3.0, -0.4, 0.1, 9.0]])
    old = torch.full_like(diff, -1.0)
    s = spec("refuel", 2.0, pairs=[(0, 1)], starts=[2], rewards=[1.0, 0.0])
    loss, m = refuel_loss(old + diff, old, mask, s)
    # (beta (D_a - D_b) - (r_a - r_b))^2 = (2 * 0.8 - 1)^2 = 0.36
    assert float(loss) == pytest.approx(0.36, abs=1e-6)
    assert float(m["reward_gap"]) == 1.0
    # the shared prefix does not count: change it, same loss
    diff2 = diff.clone()
    diff2[:, 1] = torch.tensor([-4.0, 6.0])
    assert float(refuel_loss(old + diff2, old, mask, s)[0]) == pytest.approx(0.36, abs=1e-6)
    # d loss / d lp = +-2 beta (pred - target) = +-2.4 on the continuation's model tokens
    w, _ = token_weights(old + diff, old, mask, s)
    assert torch.allclose(w, torch.tensor([[0, 0, 2.4, 0, 2.4], [0, 0, -2.4, -2.4, 0]]),
                          atol=1e-6)


def test_weights_give_the_objectives_gradient_over_any_micro_batch_split():
    """sum(w * lp) accumulated over micro-batches has the loss's own gradient (pairs split)."""
    torch.manual_seed(0)
    theta = torch.randn(4, 6, requires_grad=True)
    mask = (torch.rand(4, 6) > 0.3).float()
    mask[:, 0] = 0
    ref = torch.randn(4, 6)

    def lp_of(t):
        return torch.nn.functional.logsigmoid(t)

    for s in [spec("dpo", 0.3, pairs=[(0, 3), (2, 1)]),
              spec("kto", 0.7, labels=[1, -1, 1, -1], wu=1.5),
              spec("refuel", 0.5, pairs=[(0, 3), (1, 2)], starts=[2, 3], rewards=[1, 0, .5, 0])]:
        loss, _ = PREFERENCE.get(s.objective).loss(lp_of(theta), ref, mask, s)
        (direct,) = torch.autograd.grad(loss, theta)
        batch = Batch(torch.zeros(4, 6, dtype=torch.long), torch.ones(4, 6, dtype=torch.long),
                      mask, torch.zeros(4, 6), torch.zeros(4, 6), preference=s)
        m = preference_weights(batch, lp_of(theta).detach(), ref)
        assert m["actor/pref/loss"] == pytest.approx(float(loss.detach()), abs=1e-6)
        theta.grad = None
        for mb in batch.split(3):  # rows 0-2, then 3: every pair crosses the split
            rows = slice(0, 3) if len(mb) == 3 else slice(3, 4)
            preference_loss(lp_of(theta[rows]), mb)[0].backward()
        assert torch.allclose(theta.grad, direct, atol=1e-6), s.objective


def test_group_pairs_and_labels():
    assert group_pairs([1.0, 0.0, 0.5, 0.0], "best_worst") == [(0, 1)]
    assert group_pairs([1.0, 0.0, 0.5, 0.0], "all") == [(0, 1), (0, 2), (0, 3), (2, 1), (2, 3)]
    assert group_pairs([1.0, 0.0, 1.0, 0.0], "all") == [(0, 1), (0, 3), (2, 1), (2, 3)]
    assert group_pairs([0.5, 0.5, 0.5], "all") == []  # no preference, no pair
    assert group_pairs([0.5, 0.5], "best_worst") == []
    assert group_labels([1.0, 0.0, 0.0, 1.0]) == [1, -1, -1, 1]
    assert group_labels([0.0, 0.0]) == [0, 0]
    with pytest.raises(ValueError, match="not one of"):
        group_pairs([1.0, 0.0], "random")


def _traj(ids, model_from, reward, group, turn_rewards=()):
    n = len(ids)
    mask = [0] * model_from + [1] * (n - model_from)
    return Trajectory(Task("t", "q"), list(ids), mask, [0.0] * n, prompt_len=model_from,
                      turns=[Turn(model_from, n, "x", "stop")], outcome_reward=reward,
                      turn_rewards=list(turn_rewards), group_id=group)


def test_preference_spec_from_groups():
    trajs = [_traj([1, 2, 3, 4], 2, 1.0, 0), _traj([1, 2, 3, 5, 6], 2, 0.0, 0),
             _traj([1, 2, 7], 2, 0.0, 0),
             _traj([9, 8, 7], 2, 1.0, 1), _traj([9, 8, 6], 2, 1.0, 1),  # uniform group
             _traj([5, 5, 1], 2, 0.0, 2), _traj([5, 5, 2], 2, 0.0, 2, turn_rewards=[0.5])]
    rows, s = preference_spec(trajs, "dpo", "all", 0.1)
    assert rows == [0, 1, 2, 5, 6]
    assert s.pairs.tolist() == [[0, 1], [0, 2], [4, 3]]  # turn rewards break group 2's tie
    assert s.starts.tolist() == [3, 2, 2]  # the longest common token prefix of each pair
    assert s.rewards.tolist() == [1.0, 0.0, 0.0, 0.0, 0.5]
    rows, s = preference_spec(trajs, "kto", "best_worst", 0.1)
    assert rows == [0, 1, 2, 5, 6] and s.labels.tolist() == [1, -1, -1, -1, 1]
    assert len(s.pairs) == 0
    assert preference_spec(trajs[3:5], "refuel", "all", 0.1) is None
    # deepest: of group 0's differing pairs (0,1) shares 3 tokens, (0,2) 2: the fork pair wins
    rows, s = preference_spec(trajs, "refuel", "deepest", 0.1)
    assert rows == [0, 1, 5, 6] and s.pairs.tolist() == [[0, 1], [3, 2]]
    assert s.starts.tolist() == [3, 2]
    assert shared_prefix([1, 2], [1, 2, 3]) == 2


def test_config_validation_one_line_each():
    from rl.config import load_config, to_dataclass

    cfg = to_dataclass(load_config(["algorithm=mdpo", "algorithm.group_size=1",
                                    "algorithm.preference.beta=0", "learner.mini_batches=2",
                                    "algorithm.loss.kl_coef=0.1"]))
    from rl.config import config_problems

    probs = config_problems(cfg)
    assert any("algorithm.preference.beta=0" in p for p in probs)
    assert any("group_size=1 must be >= 2" in p for p in probs)
    assert any("learner.mini_batches=1" in p for p in probs)
    assert any("kl_coef=0" in p for p in probs)
    assert all("\n" not in p for p in probs)
    for preset, obj in [("mdpo", "dpo"), ("mkto", "kto"), ("refuel", "refuel")]:
        c = to_dataclass(load_config([f"algorithm={preset}"]))
        assert c.algorithm.objective == obj and config_problems(c) == []


@pytest.mark.parametrize("extra", [
    ("algorithm=mdpo",),
    ("algorithm=mkto",),
    ("algorithm=refuel", "rollout.tree.mode=fork", "rollout.max_turns=2"),
])
def test_tiny_run_trains(tmp_path, tiny_run, extra):
    """Two RL steps of each preset with the tiny model on the HF engine (the local driver's
    whole run: stages, update, checkpoint)."""
    threads = torch.get_num_threads()
    try:
        t = tiny_run.trainer(tmp_path, *extra, "eval.compare_stages=false",
                             "trainer.tasks_per_step=3", "algorithm.group_size=3")
        before = {n: p.detach().clone() for n, p in t.learner.model.named_parameters()}
        t.fit()
    finally:
        torch.set_num_threads(threads)
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    trained = [r for r in rows if r.get("update/trained_seqs", 0) > 0]
    assert trained, "no step had a preference"
    assert all(math.isfinite(r["actor/pref/loss"]) for r in trained)
    after = dict(t.learner.model.named_parameters())
    assert any(not torch.equal(before[n], after[n]) for n in before), "nothing trained"
