"""ArCHer and turn-level GRPO through the real trainer on the guessing game (tiny random Llama).

A random model earns no game reward, so a test turn reward (share of even token ids in each
turn) gives the critic and the turn-level advantages something to learn from.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from rl.config import load_config, to_dataclass

REGISTER = """
from rewards.compose import register_turn_reward, registered_turn_rewards
if "even_turn_tokens" not in registered_turn_rewards():
    @register_turn_reward("even_turn_tokens")
    def even_turn_tokens(traj):
        return [sum(t % 2 == 0 for t in traj.token_ids[u.start:u.end]) / max(u.end - u.start, 1)
                for u in traj.turns]
"""


def _trainer(model_dir: Path, run_dir: Path, *extra: str):
    from rl.trainer import Trainer

    exec(REGISTER, {})
    overrides = [
        "env=guess", f"model.name={model_dir}", "engine=hf", f"trainer.run_dir={run_dir}",
        "trainer.steps=2",
        "trainer.tasks_per_step=2", "algorithm.group_size=2", "tasks.train_size=8",
        "tasks.eval_size=2", "sft.enabled=false", "eval.compare_stages=false",
        "rollout.max_turns=3", "rollout.max_tokens_per_turn=6", "learner.autocast=fp32",
        "learner.lr=1e-3", "trainer.num_threads=1", "trainer.wandb=disabled",
        "trainer.samples_to_log=1", "++algorithm.turn_reward_weights={even_turn_tokens: 1.0}",
        *extra,
    ]
    return Trainer(to_dataclass(load_config(overrides)), run_dir)


def _checksum(module: torch.nn.Module) -> float:
    return float(sum(p.detach().double().abs().sum() for p in module.parameters()))


def test_archer_two_steps_train_actor_and_critic(tmp_path, tiny_model_dir):
    t = _trainer(tiny_model_dir, tmp_path, "algorithm=archer", "algorithm.archer.warmup_iters=1",
                 "algorithm.archer.critic_updates=2", "algorithm.archer.batch_size=4",
                 "algorithm.archer.critic_max_tokens=128")
    actor0, critic0, target0 = (_checksum(t.learner.model), _checksum(t.core.credit.critic),
                                _checksum(t.core.credit.target))
    rows, n_turns = [], 0
    for step in range(2):
        trajs, metrics, timer = t.train_step(step)
        rows.append(metrics)
        n_turns += sum(len(x.turns) for x in trajs)
        assert "advantage" in timer.times  # the critic trains in the credit phase
        assert all(len(x.turns) >= 1 for x in trajs)
    for m in rows:
        for key in ("critic/q1_loss", "critic/q2_loss", "critic/v1_loss", "critic/v2_loss"):
            assert key in m and m[key] >= 0.0
    assert rows[0]["update/trained_seqs"] == 0.0  # step 0: critic warm-up only
    assert rows[1]["update/trained_seqs"] > 0.0 and rows[1]["critic/actor_ready"] == 1.0
    assert _checksum(t.learner.model) != actor0, "actor did not change"
    assert _checksum(t.core.credit.critic) != critic0, "critic did not change"
    assert _checksum(t.core.credit.target) != target0, "target critic did not move"
    assert len(t.core.credit.buffer) == n_turns  # every turn of both steps was replayed into it
    # the critic is a named stateful part, so checkpoints carry it
    assert t.stateful["credit"] is t.core.credit
    from rl import checkpoint as ckpt
    from rl.step import build_credit

    path = t.save()
    fresh = build_credit(t.cfg, t.tokenizer, t.learner.model)
    ckpt.load_checkpoint(path, learner=t.learner, parts={"credit": fresh})
    assert fresh.iterations == 2 and fresh.buffer.items == t.core.credit.buffer.items
    for a, b in zip(fresh.critic.state_dict().values(), t.core.credit.critic.state_dict().values()):
        assert torch.equal(a, b)
    for a, b in zip(fresh.target.state_dict().values(), t.core.credit.target.state_dict().values()):
        assert torch.equal(a, b)


def test_turn_level_grpo_feeds_per_turn_credit(tmp_path, tiny_model_dir):
    t = _trainer(tiny_model_dir, tmp_path, "algorithm=grpo_turn")
    trajs = t.rollout(0)
    t.core.score(trajs)
    assert all(len(x.turn_rewards) == len(x.turns) for x in trajs)
    adv, _ = t.core.assign_credit(trajs)
    batch = t.core.make_batch(trajs, adv)
    assert batch is not None
    # hand check (loops, population std): A[i, t] = (G[i, t] - mean_j G[j, t]) / std_j G[j, t]
    # over the members j of i's group that have a turn t; G = reward-to-go (gamma 1) of the turn
    # rewards with the outcome added at the last turn; each turn's tokens carry its A.
    returns = []
    for x in trajs:
        r = list(x.turn_rewards)
        r[-1] += x.outcome_reward
        returns.append([sum(r[k:]) for k in range(len(r))])
    expected = []
    for i, x in enumerate(trajs):
        adv = []
        for k in range(len(x.turns)):
            peers = [returns[j][k] for j in range(len(trajs))
                     if trajs[j].group_id == x.group_id and len(returns[j]) > k]
            mean = sum(peers) / len(peers)
            std = (sum((p - mean) ** 2 for p in peers) / len(peers)) ** 0.5
            adv.append(0.0 if len(set(peers)) == 1 else (returns[i][k] - mean) / (std + 1e-6))
        expected.append(adv)
    keep = [i for i, adv in enumerate(expected) if any(a != 0.0 for a in adv)]  # signal rows
    assert len(batch) == len(keep) > 0
    for row, i in enumerate(keep):
        for turn, a in zip(trajs[i].turns, expected[i]):
            got = batch.advantages[row, turn.start : turn.end]
            torch.testing.assert_close(got, torch.full_like(got, a), atol=1e-4, rtol=0)
    # unlike outcome-only GRPO, a trajectory's turns get different advantages
    assert any(len({round(a, 5) for a in expected[i]}) > 1 for i in keep)
    _, metrics, _ = t.train_step(1)
    assert metrics["update/trained_seqs"] > 0


def test_archer_config_errors_are_clear(tmp_path, tiny_model_dir):
    with pytest.raises(ValueError, match="critic backbone"):
        _trainer(tiny_model_dir, tmp_path, "algorithm=archer",
                 "algorithm.archer.critic_backbone=lstm")
