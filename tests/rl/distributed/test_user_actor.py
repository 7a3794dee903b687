"""The LLM-simulated user as one Ray actor under launcher=ray (rl/user_actor.py).

One small local Ray instance (1 CPU) for the module. A scripted stand-in engine whose reply is a
function of the prompt it saw (and of the sampling seed) shows that the actor path writes the
same user turns as the in-process path, that the hidden goal reaches the user model's prompt and
never the agent's context, and that user tokens carry no loss; the config path with a tiny real
model shows the one shared actor holds a frozen model.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import os
import sys
from types import SimpleNamespace

import pytest

ray = pytest.importorskip("ray")

from envs.base import replay_actions  # noqa: E402
from envs.tasks.llm_user import LLMUser  # noqa: E402
from envs.tasks.simuser import SimUserEnv  # noqa: E402
from rl.types import Task  # noqa: E402
from rl.user_actor import (  # noqa: E402
    RemoteUser,
    UserModelActor,
    actor_name,
    get_user_actor,
)

REF = {"name": "book_table", "arguments": {"restaurant": "Sakura", "day": "Friday", "people": 4}}
TASK = Task(id="s", prompt="I'd like to book a table.", data={
    "domain": "restaurant", "slots": dict(REF["arguments"]), "revealed": [],
    "reference_calls": [REF], "max_turns": 6})
GOAL_TEXT = "restaurant = Sakura, day = Friday, people = 4"  # in SimUserEnv.goal()
ACTIONS = ["Which restaurant?", "Which day?", "How many people?"]


class EchoEngine:
    """Scripted stand-in: the reply says whether the goal was in the prompt and hashes the
    prompt and the sampling seed, so two paths give equal replies only on equal inputs."""

    def __init__(self, tokenizer) -> None:
        self.tok = tokenizer

    def generate(self, requests, sampling):
        outs = []
        for r in requests:
            text = self.tok.decode(r.prompt_ids)
            seen = "goal-seen" if GOAL_TEXT in text else "goal-missing"
            digest = hashlib.sha256(f"{text}/{sampling.seed}".encode()).hexdigest()[:8]
            ids = self.tok(f"{seen} {digest}", add_special_tokens=False)["input_ids"]
            ids.append(self.tok.eos_token_id)
            outs.append(SimpleNamespace(token_ids=ids, logprobs=[0.0] * len(ids),
                                        finish_reason="stop"))
        return outs

    def update_weights(self, named_tensors) -> None:
        raise AssertionError("the user model never trains")


def echo_user(**kw) -> LLMUser:
    from rl.models import load_tokenizer

    tok = load_tokenizer("smollm2-135m-instruct")
    return LLMUser(EchoEngine(tok), tok, **kw)


@pytest.fixture(scope="module")
def ray_up():
    os.environ.setdefault("RAY_memory_monitor_refresh_ms", "0")  # shared machine (see others)
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False,
             object_store_memory=128 * 1024**2)
    # the actor builds the scripted user from this module: ship it by value
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    yield
    ray.shutdown()


def _user_turns(user, actions=ACTIONS) -> tuple[list[str], str]:
    msgs, _ = asyncio.run(replay_actions(SimUserEnv(user_model=user), TASK, actions))
    return [m["content"] for m in msgs if m["role"] == "user"], json.dumps(msgs)


def test_actor_path_gives_the_in_process_user_turns(ray_up) -> None:
    kw = {"temperature": 1.0, "seed": 3}  # sampled: the seed is a hash of prompt and seed
    actor = get_user_actor("test-echo-sampled", functools.partial(echo_user, **kw))
    remote_turns, agent_context = _user_turns(RemoteUser(actor))
    local_turns, _ = _user_turns(echo_user(**kw))
    assert remote_turns == local_turns and len(remote_turns) == 4  # opening + 3 answers
    assert all(t.startswith("goal-seen ") for t in remote_turns)  # the goal was in every prompt
    assert GOAL_TEXT not in agent_context and "Details:" not in agent_context
    assert "Your goal" not in agent_context
    other, _ = _user_turns(echo_user(temperature=1.0, seed=4))
    assert other != local_turns  # the seed matters, so equality above is not vacuous


def test_concurrent_episodes_batch_in_the_actor_and_match(ray_up) -> None:
    """Greedy replies from concurrent episodes go to the engine together, same text."""
    actor = get_user_actor("test-echo-greedy",
                           functools.partial(echo_user, max_batch=8, batch_wait_s=0.05))
    remote = RemoteUser(actor)
    tasks = [Task(id=f"s{i}", prompt=TASK.prompt, data={**TASK.data, "slots": {
        **TASK.data["slots"], "people": 2 + i}}) for i in range(4)]

    async def episodes(user):
        runs = [replay_actions(SimUserEnv(user_model=user), t, ACTIONS[:1]) for t in tasks]
        return [[m["content"] for m in msgs if m["role"] == "user"]
                for msgs, _ in await asyncio.gather(*runs)]

    got = asyncio.run(episodes(remote))
    want = asyncio.run(episodes(echo_user()))
    assert got == want
    stats = ray.get(actor.stats.remote())
    assert stats["replies"] == 8 and stats["engine_calls"] < 8  # 4 openings + 4 answers


def test_user_tokens_carry_no_loss_and_the_actor_never_trains(ray_up, tokenizer) -> None:
    from rl.sft import replay

    actor = get_user_actor("test-echo-sampled", functools.partial(echo_user, temperature=1.0,
                                                                  seed=3))
    remote = RemoteUser(actor)
    traj = replay(tokenizer, lambda: SimUserEnv(user_model=remote), TASK, ACTIONS)
    full = tokenizer.decode(traj.token_ids)
    trained = tokenizer.decode([i for i, m in zip(traj.token_ids, traj.loss_mask) if m])
    # opening + 2 answers (the turn limit ends the episode before the 3rd answer is appended)
    assert full.count("goal-seen") == 3 and "goal-seen" not in trained  # user turns: mask 0
    assert all(a in trained for a in ACTIONS)  # the agent's own tokens carry the loss
    # no method of the actor can change the user model's weights
    assert not [m for m in dir(UserModelActor) if "weight" in m or m in ("update", "train")]


def test_config_path_shares_one_frozen_actor(ray_up, tiny_model_dir) -> None:
    from rl.build import build_env_factory
    from rl.config import load_config, to_dataclass

    cfg = to_dataclass(load_config([
        "launcher=ray", "env=simuser", f"+env.kwargs.user_model={tiny_model_dir}",
        "launcher.cpus_per_user_model=0.5"]))
    f1, _ = build_env_factory(cfg)
    f2, _ = build_env_factory(cfg)  # another worker's factory: the same named actor
    a, b = f1(), f2()
    assert isinstance(a.user_model, RemoteUser) and isinstance(b.user_model, RemoteUser)
    assert a.user_model.actor._actor_id == b.user_model.actor._actor_id
    named = ray.get_actor(actor_name(str(tiny_model_dir), cfg.trainer.seed))
    assert named._actor_id == a.user_model.actor._actor_id
    assert ray.get(named.trainable_parameters.remote()) == 0  # eval, requires_grad off
    msgs, _ = asyncio.run(a.reset(TASK))
    assert msgs[1]["role"] == "user" and isinstance(msgs[1]["content"], str)
    # launcher=local: the in-process LLMUser, as before
    local = to_dataclass(load_config(["env=simuser", f"+env.kwargs.user_model={tiny_model_dir}"]))
    assert isinstance(build_env_factory(local)[0]().user_model, LLMUser)


class _SyncWorker:
    """Like a RolloutWorker: a threaded (non-async) actor whose agent loop runs asyncio.run."""

    def episode(self, actor) -> list[str]:
        return _user_turns(RemoteUser(actor))[0]


def test_a_sync_worker_actor_reaches_the_user_actor(ray_up) -> None:
    kw = {"temperature": 1.0, "seed": 3}
    actor = get_user_actor("test-echo-sampled", functools.partial(echo_user, **kw))
    worker = ray.remote(num_cpus=0)(_SyncWorker).remote()
    assert ray.get(worker.episode.remote(actor)) == _user_turns(echo_user(**kw))[0]
    ray.kill(worker)


def test_user_actor_asks_for_the_user_model_resources(monkeypatch) -> None:
    """launcher.cpus_per_user_model / gpus_per_user_model (not a rollout worker's share) size the
    actor; checked on the call, without Ray running."""
    import rl.user_actor as ua
    from rl.config import load_config, to_dataclass

    asked: dict = {}

    def fake_get(name, build, **kw):
        asked.update(kw, name=name)
        return SimpleNamespace(ping=SimpleNamespace(remote=lambda: None))

    monkeypatch.setattr(ua, "get_user_actor", fake_get)
    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(ray, "get", lambda ref: ref)
    cfg = to_dataclass(load_config([
        "launcher=ray", "launcher.cpus_per_user_model=2.5", "launcher.gpus_per_user_model=0.25",
        "launcher.cpus_per_rollout_worker=3", "launcher.gpus_per_rollout_worker=0.5"]))
    assert isinstance(ua.shared_user(cfg, "some/model", lambda: None), RemoteUser)
    assert (asked["num_cpus"], asked["num_gpus"]) == (2.5, 0.25)
    assert asked["name"] == actor_name("some/model", cfg.trainer.seed)
