"""The token-level double critic: shapes, causal consistency, truncation, frozen policy
backbone, target clone, and that TD training separates a good action from a bad one."""

from __future__ import annotations

import pytest
import torch

from rl.algos.archer import Archer, ArcherConfig, Transition
from rl.algos.critic import TokenCritic


def _critic(**kw) -> TokenCritic:
    torch.manual_seed(0)
    return TokenCritic(100, hidden=16, layers=1, heads=2, **kw)


def test_shapes_and_v_does_not_depend_on_the_action():
    c = _critic()
    c.eval()
    states = [[1, 2, 3], [4, 5], [1, 2, 3]]
    out = c(states, [[7, 8], [9], [10, 11, 12, 13]])
    assert all(x.shape == (3,) for x in out)
    # causal: the state's features end before the action starts, so V(s) is the same for any a
    torch.testing.assert_close(out.v1[0], out.v1[2])
    v1, v2 = c.state_values(states)
    torch.testing.assert_close(v1, out.v1, atol=1e-5, rtol=0)
    torch.testing.assert_close(v2, out.v2, atol=1e-5, rtol=0)
    assert not torch.allclose(out.q1[0], out.q1[2])  # Q does see the action


def test_truncated_v_is_the_same_in_forward_and_state_values():
    # max_tokens 8: once len(s) + len(a) > 8, V(s) read inside forward(s, a) must not depend on
    # a, and must equal state_values(s) (which sees no action)
    c = _critic(max_tokens=8)
    c.eval()
    with torch.no_grad():
        for state in ([1, 2, 3, 4, 5, 6, 7], list(range(1, 30))):
            v1, v2 = c.state_values([state])
            for action in ([9], [9, 10, 11, 12], list(range(40, 60))):
                out = c([state], [action])
                torch.testing.assert_close(out.v1, v1, atol=1e-6, rtol=0)
                torch.testing.assert_close(out.v2, v2, atol=1e-6, rtol=0)


def test_truncation_keeps_the_task_prompt():
    # a long state keeps its head (the task prompt) and its tail (the latest turns)
    c = _critic(max_tokens=8)
    c.eval()
    long_state = list(range(1, 50))
    other_task = [77] + long_state[1:]  # differs in the first (prompt) token only
    other_middle = long_state[:20] + [77] + long_state[21:]  # differs in the dropped middle
    with torch.no_grad():
        v = c.state_values([long_state])[0]
        assert not torch.allclose(c.state_values([other_task])[0], v)
        torch.testing.assert_close(c.state_values([other_middle])[0], v, atol=1e-6, rtol=0)
        # Q still sees the action when the state fills its budget
        q = c([long_state, long_state], [[3, 4], [5, 6]]).q1
        assert not torch.allclose(q[0], q[1])


def test_truncated_layout_by_hand():
    # max_tokens 8: action budget 8 // 4 = 2, state budget 6 kept as head 3 + tail 3; the
    # action gets what the state leaves (8 - 6 = 2 here): its head and tail halves
    c = _critic(max_tokens=8)
    assert c.view(list(range(1, 50)), [60, 61, 62, 63, 64]) == ([1, 2, 3, 47, 48, 49, 60, 64], 5, 7)
    # a short state leaves the action more room: 8 - 3 = 5 tokens, head 2 + tail 3
    assert c.view([1, 2, 3], list(range(60, 70))) == ([1, 2, 3, 60, 61, 67, 68, 69], 2, 7)
    assert c.view([1, 2, 3], [4, 5]) == ([1, 2, 3, 4, 5], 2, 4)  # fits: unchanged
    assert c.view([1, 2, 3], []) == ([1, 2, 3], 2, 2)
    c.eval()
    with torch.no_grad():
        out = c([list(range(1, 50))], [[60, 61, 62, 63, 64]])
        same = c([[1, 2, 3, 47, 48, 49]], [[60, 64]])
    torch.testing.assert_close(out.q1, same.q1, atol=1e-6, rtol=0)
    torch.testing.assert_close(out.v1, same.v1, atol=1e-6, rtol=0)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="backbone"):
        TokenCritic(10, backbone="lstm")
    with pytest.raises(ValueError, match="needs the policy"):
        TokenCritic(10, backbone="policy")
    c = _critic()
    with pytest.raises(ValueError, match="at least one token"):
        c([[]], [[1]])
    with pytest.raises(ValueError, match="equally many"):
        c([[1]], [[1], [2]])


def test_policy_backbone_is_frozen_and_not_in_the_state_dict(tiny_model):
    c = TokenCritic(len(tiny_model.get_input_embeddings().weight), backbone="policy",
                    hidden=16, policy=tiny_model)
    assert not any(k.startswith("_policy") or "model." in k for k in c.state_dict())
    assert sum(p.numel() for p in c.parameters()) < 10_000  # heads only
    out = c([[1, 2, 3]], [[4, 5]])
    (out.q1.sum() + out.v1.sum()).backward()
    assert all(p.grad is None for p in tiny_model.parameters())  # nothing reaches the policy
    twin = c.clone()
    assert twin._policy is tiny_model
    torch.testing.assert_close(twin([[1, 2, 3]], [[4, 5]]).q1, out.q1.detach())


def test_td_training_separates_a_good_action_from_a_bad_one():
    # one state, two one-token actions: action 7 earns 1, action 8 earns 0, both end the episode
    c = _critic()
    archer = Archer(ArcherConfig(critic_lr=1e-2, batch_size=8, tau=0.5), c, seed=0)
    archer.buffer.extend([Transition((1, 2, 3), (7,), 1.0, (1, 2, 3, 7), True),
                          Transition((1, 2, 3), (8,), 0.0, (1, 2, 3, 8), True)])
    for _ in range(60):
        archer.update_once(archer.buffer.sample(8))
    c.eval()
    with torch.no_grad():
        out = c([(1, 2, 3), (1, 2, 3)], [(7,), (8,)])
    assert float(out.q1[0]) == pytest.approx(1.0, abs=0.1)
    assert float(out.q1[1]) == pytest.approx(0.0, abs=0.1)
    # V regresses to Q_target of the stored (replayed) actions: their mean, 0.5
    assert float(out.v1[0]) == pytest.approx(0.5, abs=0.15)
    # the target network moved towards the online one
    assert any(not torch.equal(a, b) for a, b in
               zip(archer.target.state_dict().values(), _critic().state_dict().values()))


def test_prompt_tokens_bounds():
    with pytest.raises(ValueError, match="prompt_tokens"):
        TokenCritic(10, max_tokens=8, prompt_tokens=6)  # the state budget is 6: no tail left
    assert _critic(max_tokens=8, prompt_tokens=0).view(list(range(1, 20)), [])[0] == list(
        range(14, 20))  # tail only
    twin = _critic(max_tokens=8, prompt_tokens=1).clone()
    assert twin.prompt_tokens == 1
