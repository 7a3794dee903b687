"""launch/slurm_ray.sbatch: its one-line errors (outside Slurm, a run dir some node cannot see),
and, marked heavy (`make test-launch`), a real `sbatch --wait` on a one-node Slurm cluster: the
Ray head starts under srun, the driver joins it and trains the tiny model to a checkpoint; a
second job resumes it. Job states come from `scontrol show job` (no accounting daemon)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest
from launch_cluster import check_run, free_port, ray_ports_args, tiny_ray_run

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "launch" / "slurm_ray.sbatch"


def _run_script(env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), "trainer.steps=1"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)


def test_outside_slurm_is_a_one_line_error():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    res = _run_script(env)
    assert res.returncode == 2
    assert res.stderr.splitlines() == [
        "slurm_ray.sbatch: error: not inside a Slurm job; submit it: "
        "sbatch --nodes=N launch/slurm_ray.sbatch [overrides]"]


def test_run_dir_a_node_cannot_see_is_a_one_line_error(tmp_path):
    """Two nodes, and the visibility step reports that node1 lacks the token or the venv
    (fake scontrol/srun: this machine has one node). Nothing else is started."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho node0\necho node1\n")
    # the check step prints the host names that miss the files; any other step is a failure
    (bin_dir / "srun").write_text(
        "#!/bin/sh\ncase \"$*\" in *'[[ -s'*) echo node1 ;; *) exit 97 ;; esac\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SLURM_")}
    env.update(PATH=f"{bin_dir}:{env['PATH']}", SLURM_JOB_ID="7", SLURM_JOB_NODELIST="node[0-1]",
               SLURM_SUBMIT_DIR=str(ROOT), RUN=str(tmp_path / "run"))
    res = _run_script(env)
    assert res.returncode == 2, res.stderr
    [line] = res.stderr.splitlines()
    assert line.startswith(f"slurm_ray.sbatch: error: RUN={tmp_path / 'run'} or VENV=")
    assert "is not visible on node1: put both on a filesystem every node mounts" in line


@pytest.mark.heavy
def test_sbatch_trains_to_a_checkpoint_and_a_second_job_resumes(slurm_cluster, tiny_model_dir,
                                                                tmp_path):
    run = tmp_path / "run"
    times = []
    for job, (steps, extra) in enumerate(((1, ()), (2, ("trainer.resume=latest",))), 1):
        log = tmp_path / f"job{job}.out"
        env = slurm_cluster.env(
            RUN=str(run), RAY_PORT=str(free_port()), RAY_TMPDIR=str(slurm_cluster.root),
            RAY_START_ARGS=f"--include-dashboard=false {ray_ports_args()}", OMP_NUM_THREADS="1")
        cmd = ["sbatch", "--nodes=1", "--wait", "--parsable", f"--output={log}", str(SCRIPT),
               *tiny_ray_run(tiny_model_dir, steps, *extra)]
        t0 = time.monotonic()
        res = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
        times.append(round(time.monotonic() - t0))
        out = log.read_text() if log.exists() else ""
        job_id = res.stdout.strip().split(";")[0]
        state = slurm_cluster.job(job_id)
        assert res.returncode == 0 and state["JobState"] == "COMPLETED", (
            f"{res.stderr}\n{state}\n{out[-4000:]}")
        assert state["ExitCode"] == "0:0"
        assert "[slurm_ray] Ray up on 1 node(s)" in out and "[turnrl] done" in out
        # the job's end stopped Ray: nothing it started still runs
        assert slurm_cluster.leftovers() == []
        check_run(run, steps)
    assert "[turnrl] resumed from" in out and "step_000001" in out  # job 2 continued job 1
    print(f"\n[slurm] two sbatch jobs took {times[0]} s and {times[1]} s")
