"""Launcher options: one process (``local``) or Ray actors (``ray``). Pure dataclass, no Ray import.

Referenced from :class:`rl.config.Config` as ``launcher``; the Hydra group ``configs/launcher/``
holds ``local.yaml`` (the default) and ``ray.yaml``.
"""

from __future__ import annotations

from dataclasses import dataclass


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
                raise ValueError(msg)

    @property
    def staleness_bound(self) -> int:
        """The bound the pipeline enforces: 0 in sync mode."""
        return self.max_staleness if self.mode == "async" else 0
