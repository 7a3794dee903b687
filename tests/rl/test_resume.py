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

from rl.config import load_config, to_dataclass

ROOT = Path(__file__).resolve().parents[2]

REGISTER = """
from rewards.compose import register_reward, registered_rewards
if "even_tokens" not in registered_rewards():
    @register_reward("even_tokens")
    def even_tokens(traj):
        ids = [t for t, m in zip(traj.token_ids, traj.loss_mask) if m]
        return sum(t % 2 == 0 for t in ids) / max(len(ids), 1)
"""


def _overrides(model_dir: Path, run_dir: Path, *extra: str) -> list[str]:
    return [
        f"model.name={model_dir}", f"trainer.run_dir={run_dir}", "trainer.steps=4",
        "trainer.tasks_per_step=2", "algorithm.group_size=2", "tasks.train_size=16",
        "tasks.eval_size=2", "sft.enabled=false", "eval.compare_stages=false",
        "rollout.max_turns=1", "rollout.max_tokens_per_turn=6", "learner.autocast=fp32",
        "learner.lr=1e-2", "trainer.num_threads=1", "trainer.wandb=disabled",
        "trainer.samples_to_log=1", "++algorithm.reward_weights={even_tokens: 1.0}", *extra,
    ]


def _trainer(overrides: list[str]):
    from omegaconf import OmegaConf

    from rl.trainer import Trainer

    exec(REGISTER, {})
    raw = load_config(overrides)
    cfg = to_dataclass(raw)
    run_dir = Path(cfg.trainer.run_dir)
    return Trainer(cfg, run_dir, OmegaConf.to_yaml(raw))


def _logged(run_dir: Path, step: int) -> bool:
    path = run_dir / "metrics.jsonl"
    return path.exists() and f'"step": {step},' in path.read_text()


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/", "sandbox/"))}
            for r in rows if r.get("stage") == "rl"]  # (sandbox/: process-wide counters)


def test_kill_and_resume_continues_exactly(tmp_path, tiny_model_dir, capsys):
    threads = torch.get_num_threads()
    try:
        a = _trainer(_overrides(tiny_model_dir, tmp_path / "a"))
        a.fit()

        run_b = tmp_path / "b"
        code = REGISTER + "from rl.cli import main\nimport sys\nmain(sys.argv[1:])\n"
        args = ["train", *_overrides(tiny_model_dir, run_b, "trainer.save_every=1",
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

        b = _trainer(_overrides(tiny_model_dir, run_b, "trainer.save_every=1",
                                "trainer.keep_last=3", "resume=true"))
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
    init = load_file(str(tiny_model_dir / "model.safetensors"))
    assert any(not torch.equal(init[k], pa[k]) for k in init if k in pa), "nothing trained"
    rows_a, rows_b = _rows(tmp_path / "a"), _rows(run_b)
    assert [r["step"] for r in rows_b] == [0, 1, 2, 3]  # no duplicate, no missing row
    assert rows_a == rows_b
    assert any(r["update/trained_seqs"] > 0 and r["grad_norm"] > 0 for r in rows_a)
