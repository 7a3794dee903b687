"""Atomic checkpoints: a round trip restores everything; truncated, corrupt or unfinished ones
are skipped for the previous good one (or refused when named explicitly)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rl import checkpoint as ckpt
from rl.learner.torch import LearnerConfig, TorchLearner
from rl.types import Batch, Task, Trajectory


class Counter:
    """A stand-in for a registered stateful part (e.g. a critic)."""

    def __init__(self) -> None:
        self.n = 0

    def state_dict(self):
        return {"n": self.n}

    def load_state_dict(self, state):
        self.n = state["n"]


def _learner(model) -> TorchLearner:
    return TorchLearner(model, LearnerConfig(lr=1e-2, autocast="fp32"))


def _train_once(learner: TorchLearner) -> None:
    trajs = [Trajectory(Task(str(i), ""), [5, 6, 7, 8 + i], [0, 0, 1, 1], [0.0] * 4, 2)
             for i in range(2)]
    learner.sft_update(Batch.from_trajectories(trajs, torch.zeros(2), 0))


def _save(root, step, learner, tokenizer, parts=None, keep_last=3):
    return ckpt.save_checkpoint(root, step, learner=learner, tokenizer=tokenizer,
                                trainer_state={"step": step, "stage": "rl", "results": {}},
                                parts=parts or {}, config_yaml="a: 1\n", keep_last=keep_last)


def test_round_trip_restores_weights_optimizer_rng_and_parts(tmp_path, tiny_model_dir,
                                                              tokenizer):
    from transformers import AutoModelForCausalLM

    def fresh():
        return AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)

    learner, part = _learner(fresh()), Counter()
    _train_once(learner)
    part.n = 7
    path = _save(tmp_path, 3, learner, tokenizer, {"critic": part})
    assert ckpt.verify(path, deep=True) is None
    assert sorted(p.name for p in path.iterdir()) == [
        "config.yaml", "manifest.json", "model", "rank0.pt", "state.pt"]
    expect_draw = torch.rand(4)  # the RNG stream right after the save

    other, other_part = _learner(fresh()), Counter()
    torch.manual_seed(123)
    state = ckpt.load_checkpoint(path, learner=other, parts={"critic": other_part})
    assert state["step"] == 3 and state["world_size"] == 1 and other_part.n == 7
    assert torch.equal(torch.rand(4), expect_draw)
    for (n, a), (_, b) in zip(learner.model.named_parameters(), other.model.named_parameters()):
        assert torch.equal(a, b), n
    sa, sb = learner.state_dict(), other.state_dict()
    assert sb["optimizer_steps"] == sa["optimizer_steps"] == 1
    assert sa["scheduler"] == sb["scheduler"]
    for k, st in sa["optimizer"]["state"].items():
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(st[name], sb["optimizer"]["state"][k][name])
    # Both continue identically.
    _train_once(learner)
    _train_once(other)
    for (n, a), (_, b) in zip(learner.model.named_parameters(), other.model.named_parameters()):
        assert torch.equal(a, b), n


def test_truncated_checkpoint_is_skipped_for_the_previous_good_one(tmp_path, tiny_model,
                                                                    tokenizer):
    learner = _learner(tiny_model)
    good = _save(tmp_path / "checkpoints", 1, learner, tokenizer)
    bad = _save(tmp_path / "checkpoints", 2, learner, tokenizer)
    weights = bad / "model" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # crash mid-write
    messages: list[str] = []
    assert ckpt.resolve_resume("latest", tmp_path, log=messages.append) == good
    assert len(messages) == 1 and str(bad) in messages[0]
    assert "model/model.safetensors" in messages[0] and "truncated" in messages[0]
    with pytest.raises(ckpt.CheckpointError, match="truncated"):
        ckpt.resolve_resume(str(bad), tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="incomplete"):
        ckpt.load_checkpoint(bad, learner=learner)


def test_corrupt_bytes_of_the_same_size_are_caught_by_sha256(tmp_path, tiny_model, tokenizer):
    learner = _learner(tiny_model)
    good = _save(tmp_path / "checkpoints", 1, learner, tokenizer)
    bad = _save(tmp_path / "checkpoints", 2, learner, tokenizer)
    f = bad / "rank0.pt"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    assert ckpt.verify(bad) is None  # sizes match
    assert "sha256" in ckpt.verify(bad, deep=True)
    messages: list[str] = []
    assert ckpt.resolve_resume("true", tmp_path, log=messages.append) == good
    assert "rank0.pt" in messages[0] and "corrupt" in messages[0]
    with pytest.raises(ckpt.CheckpointError, match="corrupt"):
        ckpt.resolve_resume(str(bad), tmp_path)


def test_unfinished_writes_are_skipped_and_cleaned_up(tmp_path, tiny_model, tokenizer):
    learner = _learner(tiny_model)
    good = _save(tmp_path, 1, learner, tokenizer)
    leftover = tmp_path / ".tmp-step_000002-123"
    leftover.mkdir()  # a writer killed before its rename
    (leftover / "rank0.pt").write_bytes(b"partial")
    (tmp_path / "step_000003").mkdir()  # a folder without a manifest
    messages: list[str] = []
    assert ckpt.latest_checkpoint(tmp_path, log=messages.append) == good
    assert "no manifest.json" in messages[0]
    _save(tmp_path, 4, learner, tokenizer)
    assert not leftover.exists()  # the next complete save removes dead writers' leftovers


def test_keep_last_prunes_older_complete_checkpoints(tmp_path, tiny_model, tokenizer):
    learner = _learner(tiny_model)
    for step in (1, 2, 3):
        _save(tmp_path, step, learner, tokenizer, keep_last=2)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000002", "step_000003"]


def test_world_size_and_missing_parts_are_clear_errors(tmp_path, tiny_model, tokenizer,
                                                       monkeypatch):
    learner = _learner(tiny_model)
    path = _save(tmp_path, 1, learner, tokenizer)
    with pytest.raises(ckpt.CheckpointError, match="holds no state for 'critic'"):
        ckpt.load_checkpoint(path, learner=learner, parts={"critic": Counter()})
    monkeypatch.setattr(ckpt.dist, "world_size", lambda: 2)
    with pytest.raises(ckpt.CheckpointError, match="written by 1 process.*this run has 2"):
        ckpt.load_checkpoint(path, learner=learner)


def test_unreadable_state_is_a_clear_error(tmp_path, tiny_model, tokenizer):
    learner = _learner(tiny_model)
    path = _save(tmp_path, 1, learner, tokenizer)
    (path / "state.pt").write_bytes(b"x" * (path / "state.pt").stat().st_size)
    man = json.loads((path / "manifest.json").read_text())
    man["files"]["state.pt"]["sha256"] = ckpt._sha256(path / "state.pt")  # consistent, unreadable
    (path / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(ckpt.CheckpointError, match="cannot read state.pt"):
        ckpt.load_checkpoint(path, learner=learner)


@pytest.mark.parametrize("value,expected", [
    (None, None), (False, None), ("False", None), ("", None), ("null", None),
    (True, "latest"), ("True", "latest"), ("true", "latest"), ("latest", "latest"),
    ("runs/x/checkpoints/step_000002", "runs/x/checkpoints/step_000002"),
])
def test_resume_spec(value, expected):
    assert ckpt.resume_spec(value) == expected


def test_resolve_resume_paths(tmp_path, tiny_model, tokenizer):
    learner = _learner(tiny_model)
    run = tmp_path / "run"
    _save(run / "checkpoints", 1, learner, tokenizer)
    second = _save(run / "checkpoints", 2, learner, tokenizer)
    assert ckpt.resolve_resume(str(run), tmp_path) == second  # a run dir: its newest
    assert ckpt.resolve_resume(str(second), tmp_path) == second
    assert ckpt.resolve_resume("latest", tmp_path / "empty", log=lambda m: None) is None
    assert ckpt.run_dir_of(second) == run and ckpt.run_dir_of(run) == run
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.resolve_resume(str(tmp_path / "nope"), tmp_path)
    with pytest.raises(ckpt.CheckpointError, match="no manifest"):
        ckpt.resolve_resume(str(second / "model"), tmp_path)


def test_rewind_logs_drops_rows_written_after_the_checkpoint(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    rows = [json.dumps({"step": s, "reward/mean": s / 10}) + "\n" for s in range(4)]
    metrics.write_text("".join(rows[:2]))
    offsets = ckpt.log_offsets(tmp_path)
    assert offsets == {"metrics.jsonl": len("".join(rows[:2])), "samples.txt": 0}
    with open(metrics, "a") as f:  # the killed run got further, and died mid-line
        f.write(rows[2] + rows[3][:5])
    kept = ckpt.rewind_logs(tmp_path, offsets)
    assert [r["step"] for r in kept] == [0, 1]
    assert metrics.read_text() == "".join(rows[:2])


def test_check_resume_config_reports_changed_keys(tmp_path):
    from rl.config import Config

    (tmp_path / "config.yaml").write_text(
        "trainer:\n  steps: 4\n  tasks_per_step: 2\nlearner:\n  lr: 0.1\n")
    cfg = Config()
    cfg.trainer.tasks_per_step = 2
    now = "trainer:\n  steps: 8\n  tasks_per_step: 2\nlearner:\n  lr: 0.2\n"
    msgs: list[str] = []
    assert ckpt.check_resume_config(Path(tmp_path), {"tasks_per_step": 2}, cfg, now,
                                    log=msgs.append) == ["learner.lr"]  # steps may change
    assert "learner.lr" in msgs[0]


WORKER = r'''
import json, sys
from pathlib import Path
import torch
from rl import checkpoint as ckpt
from rl.learner import dist
from rl.learner.torch import LearnerConfig, TorchLearner
from rl.models import load_tokenizer
from rl.types import Batch, Task, Trajectory
from transformers import AutoModelForCausalLM

model_dir, root, out = (Path(a) for a in sys.argv[1:4])
assert dist.init_from_env("gloo")
r = dist.rank()

def learner():
    m = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return TorchLearner(m, LearnerConfig(lr=1e-2, autocast="fp32"))

a = learner()
trajs = [Trajectory(Task("0", ""), [5, 6, 7, 8 + r, 11 * r + 3], [0, 0, 1, 1, 1], [0.0] * 5, 2)]
a.sft_update(Batch.from_trajectories(trajs, torch.zeros(1), 0))  # rank-specific optimizer state
torch.manual_seed(100 + r)
path = ckpt.save_checkpoint(root, 1, learner=a, tokenizer=load_tokenizer(str(model_dir)),
                            trainer_state={"step": 1, "stage": "rl", "results": {}})
draw = torch.rand(3).tolist()
b = learner()
state = ckpt.load_checkpoint(ckpt.resolve_resume("latest", root.parent), learner=b)
sa, sb = a.state_dict()["optimizer"]["state"], b.state_dict()["optimizer"]["state"]
w0 = next(b.model.parameters()).detach().sum().item()
json.dump({"rank": r, "draw": draw, "draw_after_load": torch.rand(3).tolist(),
           "same_opt": all(torch.equal(sa[k]["exp_avg"], sb[k]["exp_avg"]) for k in sa),
           "exp_avg_sum": sum(float(v["exp_avg"].sum()) for v in sa.values()),
           "weights_sum": w0, "world": state["world_size"], "path": str(path)},
          open(out / f"rank{r}.json", "w"))
'''


def test_two_processes_write_one_checkpoint_with_a_state_per_rank(tmp_path, tiny_model_dir,
                                                                  tiny_model):
    import os
    import socket
    import subprocess
    import sys

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = Path(__file__).resolve().parents[2]
    procs = []
    for rank in range(2):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "PYTHONPATH": str(root),
               "OMP_NUM_THREADS": "1"}
        procs.append(subprocess.Popen(
            [sys.executable, str(script), str(tiny_model_dir), str(tmp_path / "run" / "checkpoints"),
             str(tmp_path)], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    for p in procs:
        out = p.communicate(timeout=240)[0].decode(errors="replace")
        assert p.returncode == 0, out[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2))
    path = Path(r0["path"])
    assert r1["path"] == r0["path"] and r0["world"] == r1["world"] == 2
    man = json.loads((path / "manifest.json").read_text())
    assert man["world_size"] == 2 and {"rank0.pt", "rank1.pt"} <= set(man["files"])
    assert not list(path.parent.glob(".tmp-*"))
    for r in (r0, r1):  # each rank got its own RNG stream and optimizer state back
        assert r["draw_after_load"] == r["draw"] and r["same_opt"]
    assert r0["draw"] != r1["draw"] and r0["exp_avg_sum"] != r1["exp_avg_sum"]
    assert r0["weights_sum"] == r1["weights_sum"]  # both ranks load rank 0's weights
    with pytest.raises(ckpt.CheckpointError, match="written by 2 process.*this run has 1"):
        ckpt.load_checkpoint(path, learner=_learner(tiny_model))


# -- interrupted and failed writes ---------------------------------------------------------------
def _snapshot(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()}


def _partial_then(exc_factory):
    """A ``_save_hashed`` that writes a few bytes of its file, then fails like a real writer."""

    def writer(obj, path):
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
        raise exc_factory()

    return writer


def test_ctrl_c_mid_write_leaves_no_temp_folder_and_the_previous_checkpoint(
        tmp_path, tiny_model, tokenizer, monkeypatch):
    import os
    import signal

    learner = _learner(tiny_model)
    good = _save(tmp_path, 1, learner, tokenizer)
    before = _snapshot(good)

    def interrupted(obj, path):  # a real SIGINT (the default handler) lands mid-file
        with open(path, "wb") as f:
            f.write(b"\0" * 4096)
            os.kill(os.getpid(), signal.SIGINT)
            f.write(b"\0" * 4096)  # the handler runs at the next bytecode boundary

    monkeypatch.setattr(ckpt, "_save_hashed", interrupted)
    with pytest.raises(KeyboardInterrupt):
        _save(tmp_path, 2, learner, tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001"]  # no .tmp-step_*
    assert _snapshot(good) == before and ckpt.verify(good, deep=True) is None
    assert ckpt.latest_checkpoint(tmp_path) == good
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # handler restored


def test_disk_full_keeps_the_previous_checkpoint_and_says_how_much_is_needed(
        tmp_path, tiny_model, tokenizer, monkeypatch):
    import errno

    learner = _learner(tiny_model)
    good = _save(tmp_path, 1, learner, tokenizer)
    before = _snapshot(good)
    size = sum(len(b) for b in before.values())
    assert ckpt.checkpoint_size(good) == size
    monkeypatch.setattr(ckpt, "_save_hashed", _partial_then(
        lambda: OSError(errno.ENOSPC, "No space left on device")))
    with pytest.raises(ckpt.CheckpointWriteError) as info:
        _save(tmp_path, 2, learner, tokenizer)
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("disk full: cannot write checkpoint")
    assert f"a checkpoint needs about {size / 2**20:,.0f} MiB" in msg \
        if size >= 2**20 else f"a checkpoint needs about {size:,} bytes" in msg
    assert f"the last complete checkpoint {good} is kept" in msg
    assert "free in" in msg and "step_000002" in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001"]
    assert _snapshot(good) == before and ckpt.latest_checkpoint(tmp_path, deep=True) == good


def test_disk_full_inside_a_native_writer_is_recognised(tmp_path, tiny_model, tokenizer,
                                                          monkeypatch):
    from safetensors import SafetensorError

    learner = _learner(tiny_model)  # no earlier checkpoint: the bytes written are a lower bound
    native = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: '
                             'StorageFull, message: "No space left on device" })')

    def save_pretrained(path):
        path.mkdir(parents=True)
        (path / "model.safetensors").write_bytes(b"\0" * 5000)
        raise native

    monkeypatch.setattr(learner, "save_pretrained", save_pretrained)
    with pytest.raises(ckpt.CheckpointWriteError,
                       match=r"needs more than the 5,000 bytes written before the disk filled.*"
                             r"no earlier checkpoint exists") as info:
        _save(tmp_path, 1, learner, tokenizer)
    assert info.value.__cause__ is native
    assert list(tmp_path.iterdir()) == []


def test_other_write_failures_propagate_unchanged_and_clean_up(tmp_path, tiny_model, tokenizer,
                                                                 monkeypatch):
    learner = _learner(tiny_model)
    good = _save(tmp_path, 1, learner, tokenizer)
    monkeypatch.setattr(ckpt, "_save_hashed", _partial_then(lambda: RuntimeError("bug")))
    with pytest.raises(RuntimeError, match="^bug$"):
        _save(tmp_path, 2, learner, tokenizer)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001"]
    assert ckpt.verify(good, deep=True) is None


def test_resaving_a_step_swaps_the_folder_and_leaves_nothing_behind(tmp_path, tiny_model,
                                                                      tokenizer):
    learner = _learner(tiny_model)
    first = _save(tmp_path, 1, learner, tokenizer)
    _train_once(learner)
    again = _save(tmp_path, 1, learner, tokenizer)
    assert again == first and ckpt.verify(again, deep=True) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step_000001"]


def test_a_second_ctrl_c_during_cleanup_waits_for_it():
    import os
    import signal

    done = []
    with pytest.raises(KeyboardInterrupt):
        with ckpt._deferred_sigint():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("cleanup finished")
    assert done == ["cleanup finished"]


def test_checked_model_path_verifies_like_resume(tmp_path, tiny_model, tokenizer):
    learner = _learner(tiny_model)
    run = tmp_path / "run"
    good = _save(run / "checkpoints", 1, learner, tokenizer)
    bad = _save(run / "checkpoints", 2, learner, tokenizer)
    assert ckpt.checked_model_path(good) == good
    assert ckpt.checked_model_path(good / "model") == good / "model"
    f = bad / "model" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[100:4196] = b"\xaa" * 4096  # 4 KiB overwritten in place: same size
    f.write_bytes(bytes(data))
    for p in (bad, bad / "model"):
        with pytest.raises(ckpt.CheckpointError, match=r"step_000002 is not a complete "
                                                         r"checkpoint: .*sha256 \(corrupt\)"):
            ckpt.checked_model_path(p)
    messages: list[str] = []
    assert ckpt.checked_model_path(run, log=messages.append) == good  # newest good one
    assert "step_000002" in messages[0]
    (good / ckpt.MANIFEST).unlink()
    with pytest.raises(ckpt.CheckpointError, match="no manifest.json"):
        ckpt.checked_model_path(good)
    with pytest.raises(ckpt.CheckpointError, match="does not exist"):
        ckpt.checked_model_path(tmp_path / "nope")
    plain = tmp_path / "exported"  # an HF folder outside any checkpoint: nothing to verify
    plain.mkdir()
    (plain / "config.json").write_text("{}")
    assert ckpt.checked_model_path(plain) == plain


REAL_FULL = """
import sys, torch
from pathlib import Path
from transformers import AutoModelForCausalLM
from rl import checkpoint as ckpt
from rl.learner.torch import LearnerConfig, TorchLearner
from rl.models import load_tokenizer
root = Path(sys.argv[2])
learner = TorchLearner(AutoModelForCausalLM.from_pretrained(sys.argv[1], dtype=torch.float32),
                       LearnerConfig(autocast="fp32"))
save = lambda step: ckpt.save_checkpoint(root, step, learner=learner, trainer_state={},
                                         tokenizer=load_tokenizer("smollm2-135m-instruct"))
save(1)
try:
    save(2)
except ckpt.CheckpointWriteError as e:
    print("ERROR", e)
    print("CAUSE", repr(e.__cause__))
print("LEFT", sorted(p.name for p in root.iterdir()), ckpt.verify(root / "step_000001", deep=True))
"""


def test_a_real_full_disk(tmp_path, tiny_model_dir):
    """A 24 MiB tmpfs (a private mount namespace: needs unshare) holds one 16 MB checkpoint of
    the tiny model, not two: the second write hits a real ENOSPC inside safetensors."""
    import shutil
    import subprocess
    import sys

    mnt = tmp_path / "mnt"
    mnt.mkdir()
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs "
                            f"{mnt}"], capture_output=True) if shutil.which("unshare") else None
    if probe is None or probe.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here (unshare -rm)")
    script = tmp_path / "full.py"
    script.write_text(REAL_FULL)
    root = Path(__file__).resolve().parents[2]
    res = subprocess.run(
        ["unshare", "-rm", "sh", "-c", f'mount -t tmpfs -o size=24m tmpfs "{mnt}" && exec '
         f'"{sys.executable}" "{script}" "{tiny_model_dir}" "{mnt}/checkpoints"'],
        capture_output=True, text=True, cwd=root, timeout=600,
        env={**__import__("os").environ, "PYTHONPATH": str(root)})
    out = res.stdout
    assert res.returncode == 0, res.stderr[-3000:]
    assert f"ERROR disk full: cannot write checkpoint {mnt}/checkpoints/step_000002 " \
           "(SafetensorError); a checkpoint needs about 16 MiB (the size of step_000001)" in out
    assert "No space left on device" in out  # the cause, kept as __cause__
    assert "LEFT ['step_000001'] None" in out  # no .tmp folder; step 1 verifies (sha256)


def test_retention_never_deletes_the_best(tmp_path, tiny_model, tokenizer):
    """eval.every's best checkpoint (``checkpoints/best``, a link) outlives keep_last; a best it
    replaces is an ordinary checkpoint again."""
    learner = _learner(tiny_model)
    _save(tmp_path, 1, learner, tokenizer, keep_last=1)
    link = ckpt.mark_best(tmp_path, 1, keep_last=1)
    assert link == tmp_path / "best" and (link / "model").is_dir()
    for step in (2, 3):
        _save(tmp_path, step, learner, tokenizer, keep_last=1)
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000001", "step_000003"]
    assert ckpt.best_target(tmp_path) == "step_000001"
    assert ckpt.latest_checkpoint(tmp_path).name == "step_000003"  # the link is not a step
    assert ckpt.checked_model_path(link) == link  # evaluable / exportable through the link
    assert ckpt.mark_best(tmp_path, 3, keep_last=1) == link
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["step_000003"]
    assert ckpt.load_state(link)["step"] == 3
    assert ckpt.mark_best(tmp_path, 2, keep_last=1) is None  # no such checkpoint: unchanged
    assert ckpt.best_target(tmp_path) == "step_000003"
