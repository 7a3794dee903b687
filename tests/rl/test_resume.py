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


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith(("time/", "perf/"))}
            for r in rows if r.get("stage") == "rl"]


def test_kill_and_resume_continues_exactly(tmp_path, tiny_model_dir):
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
        ckpt2 = run_b / "checkpoints" / "step_000002"  # appears (by rename) only when complete
        deadline = time.monotonic() + 240
        while not ckpt2.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        out = proc.communicate()[0].decode(errors="replace")
        assert proc.returncode == -signal.SIGKILL, f"run ended before the kill:\n{out[-3000:]}"
        assert ckpt2.exists(), out[-3000:]
        assert not (run_b / "checkpoints" / "step_000004").exists()

        b = _trainer(_overrides(tiny_model_dir, run_b, "trainer.save_every=1",
                                "trainer.keep_last=3", "resume=true"))
        b.fit()
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
