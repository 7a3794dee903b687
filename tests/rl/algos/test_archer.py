"""ArCHer's TD targets, losses, actor advantage, Polyak update, replay buffer and a chain MDP
with known values (tabular critic)."""

from __future__ import annotations

import random

import pytest
import torch
from torch import nn

from rl.algos.archer import (
    Archer,
    ArcherConfig,
    ReplayBuffer,
    Transition,
    critic_loss,
    polyak_update,
    q_minus_v,
    q_targets,
    transitions,
    v_targets,
)
from rl.algos.critic import CriticValues
from rl.types import Task, Trajectory, Turn


def test_q_targets_by_hand():
    r, done = torch.tensor([1.0, 0.5]), torch.tensor([0.0, 1.0])
    nv1, nv2 = torch.tensor([2.0, 3.0]), torch.tensor([1.5, 4.0])
    # clipped double: min(V1', V2') = [1.5, 3]; 1 + 0.9 * 1.5 = 2.35; done -> r only
    t1, t2 = q_targets(r, done, nv1, nv2, 0.9, clipped_double=True)
    torch.testing.assert_close(t1, torch.tensor([2.35, 0.5]))
    torch.testing.assert_close(t2, torch.tensor([2.35, 0.5]))
    # per head (authors' code): 1 + 0.9 * 2 = 2.8 and 1 + 0.9 * 1.5 = 2.35
    t1, t2 = q_targets(r, done, nv1, nv2, 0.9, clipped_double=False)
    torch.testing.assert_close(t1, torch.tensor([2.8, 0.5]))
    torch.testing.assert_close(t2, torch.tensor([2.35, 0.5]))


def test_v_targets_and_actor_advantage_by_hand():
    fq1, fq2 = torch.tensor([1.0, 2.0]), torch.tensor([0.5, 3.0])
    t1, t2 = v_targets(fq1, fq2, clipped_double=True)
    assert t1.tolist() == [0.5, 2.0] and t2.tolist() == [0.5, 2.0]
    t1, t2 = v_targets(fq1, fq2, clipped_double=False)
    assert t1.tolist() == [1.0, 2.0] and t2.tolist() == [0.5, 3.0]
    out = CriticValues(torch.tensor([1.0, 2.0]), torch.tensor([1.5, 1.0]),
                       torch.tensor([0.2, 0.5]), torch.tensor([0.3, 0.1]))
    # min Q - min V = [1 - 0.2, 1 - 0.1]
    torch.testing.assert_close(q_minus_v(out), torch.tensor([0.8, 0.9]))


def test_critic_loss_by_hand():
    out = CriticValues(torch.tensor([2.0, 0.0], requires_grad=True), torch.tensor([1.0, 1.0]),
                       torch.tensor([0.0, 0.0]), torch.tensor([3.0, 1.0]))
    tq = torch.tensor([1.0, 1.0])
    tv = torch.tensor([1.0, 2.0])
    loss, m = critic_loss(out, tq, tq, tv, tv)
    # q1: ((1)^2 + (-1)^2)/2 = 1; q2: 0; v1: (1 + 4)/2 = 2.5; v2: (4 + 1)/2 = 2.5
    assert float(m["q1_loss"]) == 1.0 and float(m["q2_loss"]) == 0.0
    assert float(m["v1_loss"]) == 2.5 and float(m["v2_loss"]) == 2.5
    assert float(loss.detach()) == 6.0
    loss.backward()  # d/dq1 of mean (q1 - t)^2 = (q1 - t) = [1, -1]
    torch.testing.assert_close(out.q1.grad, torch.tensor([1.0, -1.0]))


def test_polyak_update():
    target, online = nn.Linear(2, 1), nn.Linear(2, 1)
    nn.init.zeros_(target.weight), nn.init.zeros_(target.bias)
    nn.init.ones_(online.weight), nn.init.ones_(online.bias)
    polyak_update(target, online, 0.1)
    torch.testing.assert_close(target.weight, torch.full((1, 2), 0.1))
    polyak_update(target, online, 0.1)  # 0.9 * 0.1 + 0.1 = 0.19
    torch.testing.assert_close(target.bias, torch.tensor([0.19]))
    polyak_update(target, online, 1.0)  # tau 1 = hard copy
    assert torch.equal(target.weight, online.weight)
    with pytest.raises(ValueError, match="tau"):
        polyak_update(target, online, 1.5)


def _tr(i: int) -> Transition:
    return Transition((i,), (i,), float(i), (i + 1,), False)


def test_replay_buffer_capacity_fifo_and_seeded_sampling():
    buf = ReplayBuffer(3, seed=1)
    buf.extend([_tr(i) for i in range(5)])  # 0, 1 overwritten by 3, 4
    assert len(buf) == 3 and sorted(t.reward for t in buf.items) == [2.0, 3.0, 4.0]
    again = ReplayBuffer(3, seed=1)
    again.extend([_tr(i) for i in range(5)])
    assert buf.sample(20) == again.sample(20)  # same seed, same draws
    state = buf.state_dict()
    expected = buf.sample(10)
    restored = ReplayBuffer(1, seed=99)
    restored.load_state_dict(state)
    assert restored.sample(10) == expected  # the RNG state travels with the buffer
    counts = {r: 0 for r in (2.0, 3.0, 4.0)}
    for t in buf.sample(3000):
        counts[t.reward] += 1
    assert all(abs(c / 3000 - 1 / 3) < 0.04 for c in counts.values())  # uniform
    with pytest.raises(ValueError, match="empty"):
        ReplayBuffer(2).sample(1)
    with pytest.raises(ValueError, match="capacity"):
        ReplayBuffer(0)


def test_transitions_of_a_trajectory():
    # prompt [1, 2] | turn0 [3, 4] | obs [5] | turn1 [6]
    traj = Trajectory(Task("t", ""), [1, 2, 3, 4, 5, 6], [0, 0, 1, 1, 0, 1], [0.0] * 6, 2,
                      turns=[Turn(2, 4, "a", "stop"), Turn(5, 6, "b", "stop")],
                      outcome_reward=1.0, turn_rewards=[0.25, 0.0])
    t0, t1 = transitions(traj)
    assert t0 == Transition((1, 2), (3, 4), 0.25, (1, 2, 3, 4, 5), False)
    assert t1 == Transition((1, 2, 3, 4, 5), (6,), 1.0, (1, 2, 3, 4, 5, 6), True)


# -- chain MDP ---------------------------------------------------------------------------------
# States 0..4, actions 0 = left (to max(s - 1, 0)), 1 = right (to s + 1). Right from state 4
# earns 1 and ends the episode; every other reward is 0. Policy: right with probability 0.7.

N, GAMMA, P_RIGHT = 5, 0.9, 0.7


def _step(s: int, a: int) -> tuple[float, int, bool]:
    if a == 1:
        return (1.0, s, True) if s == N - 1 else (0.0, s + 1, False)
    return 0.0, max(s - 1, 0), False


def _analytic() -> tuple[torch.Tensor, torch.Tensor]:
    """V^pi from (I - gamma P_pi) V = R_pi; Q(s, a) = r + gamma (1 - done) V(s')."""
    P, R = torch.zeros(N, N, dtype=torch.float64), torch.zeros(N, dtype=torch.float64)
    for s in range(N):
        for a, p in ((0, 1 - P_RIGHT), (1, P_RIGHT)):
            r, s2, done = _step(s, a)
            R[s] += p * r
            if not done:
                P[s, s2] += p
    V = torch.linalg.solve(torch.eye(N, dtype=torch.float64) - GAMMA * P, R)
    Q = torch.zeros(N, 2, dtype=torch.float64)
    for s in range(N):
        for a in (0, 1):
            r, s2, done = _step(s, a)
            Q[s, a] = r + (0.0 if done else GAMMA * V[s2])
    return V.float(), Q.float()


class TabularCritic(nn.Module):
    """Two Q tables and two V tables; the same interface as rl.algos.critic.TokenCritic."""

    def __init__(self) -> None:
        super().__init__()
        self.q = nn.Parameter(torch.zeros(2, N, 2))
        self.v = nn.Parameter(torch.zeros(2, N))

    def clone(self) -> TabularCritic:
        twin = TabularCritic()
        twin.load_state_dict(self.state_dict())
        return twin

    def forward(self, states, actions) -> CriticValues:
        s, a = torch.tensor(states), torch.tensor(actions)
        return CriticValues(self.q[0, s, a], self.q[1, s, a], self.v[0, s], self.v[1, s])

    def state_values(self, states):
        s = torch.tensor(states)
        return self.v[0, s], self.v[1, s]


def test_critic_converges_to_the_chain_mdp_values():
    torch.manual_seed(0)
    rng = random.Random(0)
    policy = lambda states: [int(rng.random() < P_RIGHT) for _ in states]  # noqa: E731
    cfg = ArcherConfig(gamma=GAMMA, tau=0.1, critic_lr=0.05, batch_size=64,
                       replay_capacity=1000, fresh_actions=True)
    archer = Archer(cfg, TabularCritic(), seed=0, action_sampler=policy)
    for _ in range(1000):  # off-policy data: uniform over state-action pairs
        s, a = rng.randrange(N), rng.randrange(2)
        r, s2, done = _step(s, a)
        archer.buffer.add(Transition(s, a, r, s2, done))
    for i in range(1000):
        if i == 700:  # smaller steps at the end: Adam's jitter ~ lr around the fixed point
            for g in archer.optimizer.param_groups:
                g["lr"] = 0.005
        archer.update_once(archer.buffer.sample(cfg.batch_size))
    V, Q = _analytic()
    crit = archer.critic
    tol = 0.03
    for head in (0, 1):
        assert torch.allclose(crit.v[head], V, atol=tol), (crit.v[head], V)
        assert torch.allclose(crit.q[head], Q, atol=tol), (crit.q[head], Q)
    # and the target network followed
    assert torch.allclose(archer.target.v[0], V, atol=tol)
    # the actor advantage min Q - min V has the analytic sign: right is better than left
    adv = q_minus_v(crit(list(range(N)), [1] * N))
    assert torch.all(adv > 0)


def test_warmup_gives_zero_advantages_then_critic_ones():
    cfg = ArcherConfig(warmup_iters=1, critic_updates=2, batch_size=4)
    traj = Trajectory(Task("t", ""), [1, 2, 3, 4], [0, 0, 1, 1], [0.0] * 4, 2,
                      turns=[Turn(2, 4, "a", "stop")], outcome_reward=1.0, turn_rewards=[0.0])

    class Const(TabularCritic):  # token tuples -> state index 0, action 1
        def forward(self, states, actions):
            return super().forward([0] * len(states), [1] * len(states))

        def state_values(self, states):
            return super().state_values([0] * len(states))

        def clone(self):
            twin = Const()
            twin.load_state_dict(self.state_dict())
            return twin

    archer = Archer(cfg, Const(), seed=0)
    m = archer.critic_update([traj])
    assert m["critic/buffer"] == 1.0 and "critic/q1_loss" in m and m["critic/actor_ready"] == 0
    assert torch.all(archer.advantages([traj], [0]) == 0)  # warm-up: critic only
    archer.critic_update([traj])
    adv = archer.advantages([traj], [0])
    q, v = archer.critic.q.detach(), archer.critic.v.detach()
    expected = float(torch.minimum(q[0, 0, 1], q[1, 0, 1]) - torch.minimum(v[0, 0], v[1, 0]))
    assert adv.shape == (1, 4) and adv[0, :2].tolist() == [0.0, 0.0]
    torch.testing.assert_close(adv[0, 2:], torch.full((2,), expected))
    assert expected != 0.0
    # state round trip
    fresh = Archer(cfg, Const(), seed=5)
    fresh.load_state_dict(archer.state_dict())
    assert fresh.iterations == 2 and len(fresh.buffer) == 2
    assert torch.equal(fresh.critic.q, archer.critic.q)
    with pytest.raises(ValueError, match="missing"):
        fresh.load_state_dict({"critic": {}})


def test_bad_config_is_a_clear_error():
    with pytest.raises(ValueError, match="archer.advantage"):
        Archer(ArcherConfig(advantage="gae"), TabularCritic())
    with pytest.raises(ValueError, match="action sampler"):
        Archer(ArcherConfig(fresh_actions=True), TabularCritic())
