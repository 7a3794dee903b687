"""Ray start-up, placement, the actor pool, weight broadcast, health checks and restarts.

Placement: one placement group (strategy PACK). ``separate``: a bundle per learner rank
(``cpus/gpus_per_learner``) and one per rollout worker. ``colocated``: rollout worker ``i``
shares learner rank ``i``'s bundle, which holds the sum of both actors' resources (on GPUs:
e.g. ``gpus_per_learner=0.5, gpus_per_rollout_worker=0.5`` puts both on one device). Env workers
are scheduled outside the group (``cpus_per_env_worker``, default 0: they wait on tools).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from rl.config import Config, LauncherConfig


def init_ray(lc: LauncherConfig) -> None:
    """Join ``lc.address`` ("auto" inside a job / Slurm) or start a private local instance."""
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "WANDB_MODE": "disabled"}}
    if lc.address:
        ray.init(address=lc.address, runtime_env=env, log_to_driver=True)
    else:
        ray.init(num_cpus=lc.num_cpus, include_dashboard=False, runtime_env=env)


def bundles(lc: LauncherConfig) -> tuple[list[dict[str, float]], list[int], list[int]]:
    """Placement-group bundles and the bundle index of each learner rank and rollout worker."""

    def res(cpu: float, gpu: float) -> dict[str, float]:
        return {k: v for k, v in (("CPU", cpu), ("GPU", gpu)) if v > 0} or {"CPU": 0.01}

    nl, nr = lc.learner_ranks, lc.num_rollout_workers
    if lc.placement == "separate":
        out = [res(lc.cpus_per_learner, lc.gpus_per_learner)] * nl
        out += [res(lc.cpus_per_rollout_worker, lc.gpus_per_rollout_worker)] * nr
        return out, list(range(nl)), list(range(nl, nl + nr))
    out = []
    for i in range(max(nl, nr)):
        cpu = (lc.cpus_per_learner if i < nl else 0.0) + (
            lc.cpus_per_rollout_worker if i < nr else 0.0)
        gpu = (lc.gpus_per_learner if i < nl else 0.0) + (
            lc.gpus_per_rollout_worker if i < nr else 0.0)
        out.append(res(cpu, gpu))
    return out, list(range(nl)), list(range(nr))


@dataclass
class WeightVersion:
    version: int
    ref: Any  # ObjectRef of {name: tensor}
    publish_s: float


@dataclass
class PoolStats:
    restarts: int = 0
    """Rollout / env worker restarts over the run (dist/restarts)."""
    load_s: list[float] = field(default_factory=list)
    """Worker-side fetch + load seconds of weight versions (acks collected so far)."""


class WorkerPool:
    """The actors of a run and what keeps them alive. Only the driver calls into it."""

    def __init__(self, cfg: Config, run_dir: str, config_yaml: str = "") -> None:
        import ray
        from ray.util.placement_group import placement_group

        from rl.build import resolve_engine
        from rl.distributed.envs import EnvWorker
        from rl.distributed.workers import LearnerWorker, RolloutWorker

        resolve_engine(cfg)  # engine=auto: decided here, once, for every rollout worker
        self.cfg, self.lc = cfg, cfg.launcher
        lc = self.lc
        specs, self.learner_bundle, self.rollout_bundle = bundles(lc)
        self.pg = placement_group(specs, strategy="PACK")
        if not self.pg.wait(timeout_seconds=120):
            raise RuntimeError(
                f"placement group {specs} could not be scheduled in 120 s; cluster resources: "
                f"{ray.cluster_resources()} (lower launcher.cpus_per_* or add nodes)")
        self._rollout_cls = ray.remote(concurrency_groups={"health": 1})(RolloutWorker)
        self._env_cls = ray.remote(EnvWorker)
        self.stats = PoolStats()
        self.envs = [self._new_env(i) for i in range(lc.num_env_workers)]
        master = self._master_address() if lc.learner_ranks > 1 else ("127.0.0.1", 29500)
        learner_cls = ray.remote(LearnerWorker)
        self.learners = [
            learner_cls.options(**self._placed(self.learner_bundle[r], lc.cpus_per_learner,
                                               lc.gpus_per_learner)).remote(
                cfg, run_dir, r, lc.learner_ranks, master[0], master[1], config_yaml)
            for r in range(lc.learner_ranks)
        ]
        self.rollouts = [self._new_rollout(i) for i in range(lc.num_rollout_workers)]
        self.latest: WeightVersion | None = None
        self._acks: list[Any] = []
        # wait for every actor's start-up (model loads can take long): an actor that cannot
        # be built fails the run here with its own error, not a health-check timeout later
        ray.get([a.ping.remote() for a in [*self.learners, *self.rollouts, *self.envs]])

    # -- construction ----------------------------------------------------------------------------
    def _placed(self, bundle: int, cpus: float, gpus: float) -> dict[str, Any]:
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        return {"num_cpus": cpus, "num_gpus": gpus,
                "scheduling_strategy": PlacementGroupSchedulingStrategy(
                    self.pg, placement_group_bundle_index=bundle)}

    def _new_rollout(self, i: int):
        lc = self.lc
        return self._rollout_cls.options(
            **self._placed(self.rollout_bundle[i], lc.cpus_per_rollout_worker,
                           lc.gpus_per_rollout_worker)).remote(self.cfg, i, self.envs or None)

    def _new_env(self, i: int):
        return self._env_cls.options(num_cpus=self.lc.cpus_per_env_worker).remote(self.cfg, i)

    def _master_address(self) -> tuple[str, int]:
        """Address of learner rank 0's node and a free port there (torch.distributed rendezvous)."""
        import ray

        @ray.remote(num_cpus=0)
        def probe() -> tuple[str, int]:
            import socket

            with socket.socket() as s:
                s.bind(("", 0))
                return ray.util.get_node_ip_address(), s.getsockname()[1]

        strategy = self._placed(self.learner_bundle[0], 0, 0)["scheduling_strategy"]
        return ray.get(probe.options(scheduling_strategy=strategy).remote())

    # -- weights ---------------------------------------------------------------------------------
    def publish(self, version: int) -> WeightVersion:
        """Learner rank 0's weights into the object store once (every rank is called), then every rollout worker pulls
        them (queued behind its running rollout: calls on an actor run in order)."""
        import ray

        t0 = time.perf_counter()
        # every rank joins (ZeRO-3 gathers are collective); rank 0's call returns the weights
        refs = [lr.weights.remote() for lr in self.learners]
        ray.wait(refs, num_returns=len(refs), fetch_local=False)
        ref = refs[0]
        self.latest = WeightVersion(version, ref, time.perf_counter() - t0)
        self._acks += [w.set_weights.remote(version, [ref]) for w in self.rollouts]
        return self.latest

    def drain_acks(self, wait: bool = False) -> list[float]:
        """Worker-side seconds (fetch + load) of the weight loads finished since the last call."""
        import ray

        if not self._acks:
            return []
        # timeout 0: whatever has finished; None: all of them
        ready, self._acks = ray.wait(self._acks, num_returns=len(self._acks),
                                     timeout=None if wait else 0)
        out = []
        for r in ready:
            try:
                a = ray.get(r)
            except Exception:  # the worker died before loading; its restart reloads
                continue
            if a["fetch_s"] or a["load_s"]:
                out.append(a["fetch_s"] + a["load_s"])
        self.stats.load_s += out
        return out

    # -- health ----------------------------------------------------------------------------------
    def _alive(self, handle, health_group: bool) -> bool:
        import ray

        call = handle.ping.options(concurrency_group="health") if health_group else handle.ping
        try:
            ray.get(call.remote(), timeout=self.lc.health_check_timeout_s)
            return True
        except Exception:  # died, or hung past the timeout
            return False

    def check_all(self) -> int:
        """Ping every rollout and env worker; restart those that do not answer. Returns restarts."""
        n = 0
        for i, e in enumerate(self.envs):
            if not self._alive(e, False):
                self.restart_env(i)
                n += 1
        for i, w in enumerate(self.rollouts):
            if not self._alive(w, True):
                self.restart_rollout(i)
                n += 1
        return n

    def _count_restart(self, what: str) -> None:
        self.stats.restarts += 1
        if self.stats.restarts > self.lc.max_restarts:
            raise RuntimeError(f"{what} died and launcher.max_restarts={self.lc.max_restarts} "
                               "restarts are used up")
        print(f"[turnrl] restarting {what} (restart {self.stats.restarts})", flush=True)

    def restart_rollout(self, i: int) -> None:
        """A fresh rollout worker in the same bundle, loaded with the latest published weights."""
        import ray

        self._count_restart(f"rollout worker {i}")
        t0 = time.perf_counter()
        ray.kill(self.rollouts[i], no_restart=True)
        self.rollouts[i] = self._new_rollout(i)
        ray.get(self.rollouts[i].ping.remote())  # started (a health check must not race it)
        print(f"[turnrl] rollout worker {i} restarted in {time.perf_counter() - t0:.1f} s",
              flush=True)
        if self.latest is not None:
            self._acks.append(self.rollouts[i].set_weights.remote(self.latest.version,
                                                                  [self.latest.ref]))

    def restart_env(self, i: int) -> None:
        import ray

        self._count_restart(f"env worker {i}")
        ray.kill(self.envs[i], no_restart=True)
        self.envs[i] = self._new_env(i)
        ray.get(self.envs[i].ping.remote())
        for w in self.rollouts:
            w.set_env_actors.remote(self.envs)

    def shutdown(self) -> None:
        import ray
        from ray.util.placement_group import remove_placement_group

        for a in [*self.rollouts, *self.envs, *self.learners]:
            ray.kill(a, no_restart=True)
        remove_placement_group(self.pg)
