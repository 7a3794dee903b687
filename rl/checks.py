"""The names a config picks, checked against the parts that exist: env, tool-call format, credit,
advantage, KL estimator, loss aggregation, learner backend, reward terms, the model and the env's
task source.

The schema (rl/config.py) knows nothing of the parts (STYLE 20): ``Config.validate()`` checks
values, ranges and combinations only. This module is the wiring's half: :func:`validate` runs both
before any model loads (``turnrl`` and the Ray controller call it), one line per problem with the
key, what is wrong and the valid values. It imports the registries (envs, rewards, algos,
learners), never a model.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rl.config import Config, ConfigError, config_problems


def registry_problems(cfg: Config) -> list[str]:
    """Names that must exist in a registry (importing the registries, not a model)."""
    import envs.tasks  # noqa: F401  (registers the envs)
    import rewards  # noqa: F401  (registers the reward terms)
    from envs.base import registered_envs
    from envs.formats import registered_formats
    from envs.tasks import TASK_MAKERS
    from rewards.compose import _REWARDS as REWARDS
    from rewards.compose import _TURN_REWARDS as TURN_REWARDS
    from rl.algos.advantages import ADVANTAGES
    from rl.algos.credit import CREDITS
    from rl.algos.kl import KL_ESTIMATORS
    from rl.algos.losses import AGGREGATIONS as LOSS_AGGS
    from rl.algos.preference import PREFERENCE
    from rl.learner import LEARNERS

    a = cfg.algorithm
    checks: list[tuple[str, Any, Any]] = [
        ("env.name", cfg.env.name, registered_envs()),
        ("algorithm.credit", a.credit, CREDITS.names()),
        ("algorithm.advantage", a.advantage, ADVANTAGES.names()),
        ("algorithm.loss.kl_estimator", a.loss.kl_estimator, KL_ESTIMATORS.names()),
        ("algorithm.loss.agg", a.loss.agg, LOSS_AGGS.names()),
        ("learner.backend", cfg.learner.backend, LEARNERS.names()),
        ("algorithm.objective", a.objective, ("policy", *PREFERENCE.names())),
    ]
    fmt_name = cfg.env.format.partition("+")[0]  # "+lenient": an option (envs.formats)
    if fmt_name != "auto":
        checks.append(("env.format", fmt_name, registered_formats()))
    out = [f"{key}={val!r} is not one of: {', '.join(sorted(valid))}"
           for key, val, valid in checks if val not in valid]
    if cfg.env.name in registered_envs() and cfg.env.name not in TASK_MAKERS:
        out.append(f"env.name={cfg.env.name!r} has no task maker (envs.tasks.TASK_MAKERS)")
    out += [f"algorithm.reward_weights: unknown reward {k!r} (valid: "
            f"{', '.join(sorted(REWARDS.names()))})" for k in a.reward_weights if k not in REWARDS]
    out += [f"algorithm.turn_reward_weights: unknown turn reward {k!r} (valid: "
            f"{', '.join(sorted(TURN_REWARDS.names()))})"
            for k in a.turn_reward_weights if k not in TURN_REWARDS]
    return out


def model_problems(cfg: Config) -> list[str]:
    """``model.name`` must be an embedded model, an existing folder, or a hub id (org/name)."""
    from rl.models import EMBEDDED

    name = cfg.model.name
    if name in EMBEDDED or Path(name).expanduser().is_dir():
        return []
    looks_like_path = name.startswith((".", "/", "~")) or name.count("/") != 1
    if looks_like_path:
        return [f"model.name={name!r} is not an embedded model ({', '.join(sorted(EMBEDDED))}), "
                "an existing folder, or a hub id like org/name"]
    return []


def task_problems(cfg: Config) -> list[str]:
    """The env's task maker knows ``tasks.source`` / ``tasks.kwargs`` (cheap: makes one task)."""
    from envs.tasks import make_tasks

    ts = cfg.tasks
    try:
        make_tasks(cfg.env.name, ts.source, "train", 1, ts.seed, **dict(ts.kwargs))
    except (KeyError, ValueError, TypeError) as e:
        msg = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
        return [f"tasks.source={ts.source!r} / tasks.kwargs for env {cfg.env.name!r}: {msg}"]
    return []


def problems(cfg: Config) -> list[str]:
    """Every problem of ``cfg`` as a one-line message (empty when it is valid): the schema's
    (rl.config.config_problems), then the model and the registry names; the task source only
    when all of those are fine (its maker needs a valid env name and settings)."""
    out = config_problems(cfg) + model_problems(cfg) + registry_problems(cfg)
    return out or task_problems(cfg)


def validate(cfg: Config) -> None:
    """Raise :class:`rl.config.ConfigError` listing every problem of :func:`problems`."""
    found = problems(cfg)
    if found:
        raise ConfigError("\n".join(found))
