"""Advantage estimators: hand-computed values, loop vs vectorised, registry behaviour."""

from __future__ import annotations

import math

import pytest
import torch

from rl.algos import ADVANTAGES, AdvantageConfig, Registry, compute_advantages

F64 = torch.float64

# One batch used by the hand-computed tests. Ids are sparse and unsorted on purpose.
#   index:   0  1  2  3  4  5  6
#   group:   7  2  7  2  7  7  9
#   reward:  4  1  2  5  4  2  9
# group 7 = {0, 2, 4, 5}: rewards 4, 2, 4, 2 -> mean 3, deviations +1 -1 +1 -1,
#   population var = 4/4 = 1 (std 1), unbiased var = 4/3 (std 2/sqrt(3))
# group 2 = {1, 3}: rewards 1, 5 -> mean 3, deviations -2 +2,
#   population var = 8/2 = 4 (std 2), unbiased var = 8/1 (std 2*sqrt(2))
# group 9 = {6}: a single trajectory -> advantage 0 for group-relative estimators
REWARDS = torch.tensor([4.0, 1.0, 2.0, 5.0, 4.0, 2.0, 9.0], dtype=F64)
GROUPS = torch.tensor([7, 2, 7, 2, 7, 7, 9])


def _adv(name: str, **cfg: object) -> torch.Tensor:
    return ADVANTAGES.get(name)(REWARDS, GROUPS, AdvantageConfig(**cfg))  # type: ignore[arg-type]


def test_grpo_population_std_by_hand() -> None:
    # group 7: +-1 / 1 = +-1; group 2: +-2 / 2 = +-1; group 9: 0
    expected = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, -1.0, 0.0], dtype=F64)
    torch.testing.assert_close(_adv("grpo"), expected, atol=1e-5, rtol=0)


def test_grpo_binary_rewards_by_hand() -> None:
    # rewards [1, 0, 0, 1]: mean 0.5, deviations +-0.5, population std 0.5 -> +-1
    rewards = torch.tensor([1.0, 0.0, 0.0, 1.0], dtype=F64)
    adv = ADVANTAGES.get("grpo")(rewards, torch.zeros(4, dtype=torch.long), AdvantageConfig())
    torch.testing.assert_close(
        adv, torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=F64), atol=1e-5, rtol=0
    )


def test_grpo_unbiased_std_by_hand() -> None:
    # group 7: +-1 / (2/sqrt 3) = +-sqrt(3)/2 = +-0.8660254; group 2: +-2 / (2 sqrt 2) = +-0.7071068
    expected = torch.tensor(
        [0.8660254, -0.7071068, -0.8660254, 0.7071068, 0.8660254, -0.8660254, 0.0], dtype=F64
    )
    torch.testing.assert_close(_adv("grpo", std_unbiased=True), expected, atol=1e-5, rtol=0)


def test_grpo_without_std_is_drgrpo_by_hand() -> None:
    # mean baseline only: group 7 deviations +-1, group 2 deviations +-2, group 9 0
    expected = torch.tensor([1.0, -2.0, -1.0, 2.0, 1.0, -1.0, 0.0], dtype=F64)
    torch.testing.assert_close(_adv("grpo", norm_std=False), expected)
    torch.testing.assert_close(_adv("drgrpo"), expected)
    torch.testing.assert_close(_adv("drgrpo", norm_std=True), expected)  # never divides


def test_rloo_by_hand() -> None:
    # group 7 (n=4, sum 12): 4 - (12-4)/3 = 4/3, 2 - (12-2)/3 = -4/3
    # group 2 (n=2): 1 - 5 = -4, 5 - 1 = 4; group 9: no other sample -> 0
    expected = torch.tensor([4 / 3, -4.0, -4 / 3, 4.0, 4 / 3, -4 / 3, 0.0], dtype=F64)
    torch.testing.assert_close(_adv("rloo"), expected)


def test_reinforce_by_hand() -> None:
    torch.testing.assert_close(_adv("reinforce"), REWARDS)
    # batch mean = 27 / 7 = 3.857142857
    b = 27 / 7
    expected = torch.tensor([4 - b, 1 - b, 2 - b, 5 - b, 4 - b, 2 - b, 9 - b], dtype=F64)
    torch.testing.assert_close(_adv("reinforce", batch_baseline=True), expected)


def test_uniform_group_and_singletons_give_zero() -> None:
    rewards = torch.tensor([0.3, 0.3, 0.3, 1.0, -2.0], dtype=F64)
    groups = torch.tensor([5, 5, 5, 1, 3])  # one group with equal rewards, two singletons
    for name in ("grpo", "drgrpo", "rloo"):
        for unbiased in (False, True):
            adv = ADVANTAGES.get(name)(rewards, groups, AdvantageConfig(std_unbiased=unbiased))
            assert torch.isfinite(adv).all()
            torch.testing.assert_close(adv, torch.zeros(5, dtype=F64), atol=1e-9, rtol=0)


def test_compute_advantages_dispatches_on_config() -> None:
    torch.testing.assert_close(
        compute_advantages(REWARDS, GROUPS, AdvantageConfig(estimator="rloo")), _adv("rloo")
    )
    with pytest.raises(KeyError, match="grpo"):
        compute_advantages(REWARDS, GROUPS, AdvantageConfig(estimator="nope"))


def test_integer_rewards_and_empty_batch() -> None:
    adv = ADVANTAGES.get("grpo")(torch.tensor([1, 0]), torch.tensor([0, 0]), AdvantageConfig())
    assert adv.dtype.is_floating_point
    torch.testing.assert_close(adv, torch.tensor([1.0, -1.0]), atol=1e-5, rtol=0)
    empty = torch.zeros(0)
    for name in ADVANTAGES.names():
        assert ADVANTAGES.get(name)(empty, empty.long(), AdvantageConfig()).shape == (0,)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError):
        _ = ADVANTAGES.get("grpo")(torch.zeros(3), torch.zeros(4).long(), AdvantageConfig())
    with pytest.raises(TypeError):
        _ = ADVANTAGES.get("grpo")(torch.zeros(3), torch.zeros(3), AdvantageConfig())


# ---- loop (pure Python, one group at a time) vs vectorised ------------------------------------


def _groups_of(groups: list[int]) -> list[list[int]]:
    """Indices of each group, one Python list per distinct id."""
    return [[i for i, g in enumerate(groups) if g == gid] for gid in set(groups)]


def _loop_grpo(rewards: list[float], groups: list[int], cfg: AdvantageConfig) -> list[float]:
    out = [0.0] * len(rewards)
    for idx in _groups_of(groups):
        rs = [rewards[i] for i in idx]
        n, mean = len(rs), sum(rs) / len(rs)
        dof = max(n - 1, 1) if cfg.std_unbiased else n
        std = math.sqrt(sum((r - mean) ** 2 for r in rs) / dof)
        for i in idx:
            out[i] = (rewards[i] - mean) / (std + cfg.eps) if cfg.norm_std else rewards[i] - mean
    return out


def _loop_drgrpo(rewards: list[float], groups: list[int], cfg: AdvantageConfig) -> list[float]:
    out = [0.0] * len(rewards)
    for idx in _groups_of(groups):
        mean = sum(rewards[i] for i in idx) / len(idx)
        for i in idx:
            out[i] = rewards[i] - mean
    return out


def _loop_rloo(rewards: list[float], groups: list[int], cfg: AdvantageConfig) -> list[float]:
    out = [0.0] * len(rewards)
    for idx in _groups_of(groups):
        total, n = sum(rewards[i] for i in idx), len(idx)
        for i in idx:
            out[i] = rewards[i] - (total - rewards[i]) / (n - 1) if n > 1 else 0.0
    return out


def _loop_reinforce(rewards: list[float], groups: list[int], cfg: AdvantageConfig) -> list[float]:
    base = sum(rewards) / len(rewards) if cfg.batch_baseline else 0.0
    return [r - base for r in rewards]


LOOP_REFERENCES = {
    "grpo": _loop_grpo,
    "drgrpo": _loop_drgrpo,
    "rloo": _loop_rloo,
    "reinforce": _loop_reinforce,
}


CONFIGS = [
    AdvantageConfig(),
    AdvantageConfig(std_unbiased=True),
    AdvantageConfig(norm_std=False),
    AdvantageConfig(batch_baseline=True),
]


@pytest.mark.parametrize("name", sorted(LOOP_REFERENCES))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loop_matches_vectorised(name: str, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    n = 40
    # uneven groups (sizes 1..~8), ids sparse, negative and shuffled
    groups = (torch.randint(0, 9, (n,), generator=gen) * 13 - 50)[torch.randperm(n, generator=gen)]
    rewards = torch.randn(n, generator=gen, dtype=F64)
    rewards[::5] = torch.round(rewards[::5])  # some ties
    for cfg in CONFIGS:
        got = ADVANTAGES.get(name)(rewards, groups, cfg)
        want = LOOP_REFERENCES[name](rewards.tolist(), groups.tolist(), cfg)
        torch.testing.assert_close(got, torch.tensor(want, dtype=F64))


# ---- registry -----------------------------------------------------------------------------------


def test_registry_refuses_duplicates_and_lists_names() -> None:
    reg: Registry[int] = Registry("thing")
    reg.register("a")(1)
    reg.register("b")(2)
    assert reg.names() == ("a", "b")
    assert "a" in reg and "c" not in reg
    assert reg.get("b") == 2
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")
    with pytest.raises(KeyError, match=r"unknown thing 'c'.*'a', 'b'"):
        reg.get("c")


def test_builtin_registry_is_complete_and_guarded() -> None:
    assert set(ADVANTAGES.names()) == set(LOOP_REFERENCES)
    with pytest.raises(ValueError):
        ADVANTAGES.register("grpo")
    with pytest.raises(KeyError, match="'drgrpo', 'grpo', 'reinforce', 'rloo'"):
        ADVANTAGES.get("ppo")


def test_grpo_std_floor_keeps_tiny_partial_credit_gaps_small():
    """Rewards [0.05, 0, 0, 0]: std 0.0217, so plain GRPO gives the 0.05 episode +1.73, as
    much as a real success; with the floor 0.25 it gets 0.0375 / 0.25 = +0.15. A binary group
    [1, 0, 0, 0] (std 0.433 > floor) is unchanged: +1.732 / -0.577."""
    gids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])
    r = torch.tensor([0.05, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0])
    grpo = ADVANTAGES.get("grpo")
    plain = grpo(r, gids, AdvantageConfig())
    floored = grpo(r, gids, AdvantageConfig(std_floor=0.25))
    assert abs(plain[0].item() - math.sqrt(3)) < 1e-3  # 0.0375 / 0.02165
    torch.testing.assert_close(floored[:4], torch.tensor([0.15, -0.05, -0.05, -0.05]),
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(floored[4:], plain[4:])
    torch.testing.assert_close(floored[4:], torch.tensor([1.7320508, -0.5773503, -0.5773503,
                                                          -0.5773503]), atol=1e-5, rtol=0)
