"""Exact resume: 4 RL steps straight == 2 steps, SIGKILL, resume, 2 more steps.

Tiny random Llama, HF engine, fp32, one thread, fixed seeds. A random model earns no reward from
the real reward terms, so every advantage would be 0 and nothing would train; both runs add a
test reward that depends on the sampled tokens (share of even token ids), which gives every group
a spread of rewards, so the optimizer state, sampling RNG and data position all matter.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[2]

# 4 steps (the kill lands after step 2), 16 tasks, no stage evaluations (tests/conftest.py TinyRun)
RUN = ("trainer.steps=4", "tasks.train_size=16", "eval.compare_stages=false")


def _logged(run_dir: Path, step: int) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and f'"step": {step},' in path.read_text()


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/", "sandbox/"))}
            for r in rows if r.get("stage") == "rl"]  # (sandbox/: process-wide counters)


def test_kill_and_resume_continues_exactly(tmp_path, tiny_run, capsys):
    threads = torch.get_num_threads()
    try:
        a = tiny_run.trainer(tmp_path / "a", *RUN)
        a.fit()

        run_b = tmp_path / "b"
        code = tiny_run.register + "from rl.cli import main\nimport sys\nmain(sys.argv[1:])\n"
        args = ["train", *tiny_run.overrides(run_b, *RUN, "trainer.save_every=1",
                                             "trainer.keep_last=3")]
        env = {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}
        proc = subprocess.Popen([sys.executable, "-c", code, *args], cwd=ROOT, env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        # Kill once the run has checkpointed step 2 AND logged step index 2 (the row after the
        # checkpoint), so the resumed run must drop that row instead of writing it twice.
        ckpt2 = run_b / "checkpoints" / "step_000002"  # appears (by rename) only when complete
        deadline = time.monotonic() + 240
        while (not (ckpt2.exists() and _logged(run_b, 2)) and proc.poll() is None
               and time.monotonic() < deadline):
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0].decode(errors="replace")
        assert proc.returncode == -signal.SIGKILL, f"run ended before the kill:\n{out[-3000:]}"
        assert ckpt2.exists() and _logged(run_b, 2), out[-3000:]
        assert not (run_b / "checkpoints" / "step_000004").exists()
        ckpt3 = run_b / "checkpoints" / "step_000003"
        if ckpt3.exists():  # the kill came after the step-3 save's rename: make it come before
            ckpt3.rename(run_b / "checkpoints" / ".tmp-step_000003-1")

        b = tiny_run.trainer(run_b, *RUN, "trainer.save_every=1", "trainer.keep_last=3",
                             "resume=true")
        capsys.readouterr()
        b.fit()
        assert "step_000002 at step 2 (rl)" in capsys.readouterr().out
        assert b.state.step == 4
    finally:
        torch.set_num_threads(threads)

    assert b.learner.optimizer_steps == a.learner.optimizer_steps == 4
    pa, pb = dict(a.learner.model.named_parameters()), dict(b.learner.model.named_parameters())
    assert pa.keys() == pb.keys()
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name
    init = load_file(str(tiny_run.model_dir / "model.safetensors"))
    assert any(not torch.equal(init[k], pa[k]) for k in init if k in pa), "nothing trained"
    rows_a, rows_b = _rows(tmp_path / "a"), _rows(run_b)
    assert [r["step"] for r in rows_b] == [0, 1, 2, 3]  # no duplicate, no missing row
    assert rows_a == rows_b
    assert any(r["update/trained_seqs"] > 0 and r["grad_norm"] > 0 for r in rows_a)
