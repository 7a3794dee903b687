"""launch/ray_submit.sh as its header says to use it (heavy, `make test-launch`): a local Ray
head started with `ray start --head --block` (token auth on, as Ray >= 2.59 does by default),
the script submits the tiny-model training as a Ray job, which trains to a checkpoint. HOME is
a temporary folder, so the token (~/.ray/auth_token) is this test's alone; the head and all its
processes are ended afterwards (never `ray stop`: it would end every Ray on the machine)."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from launch_cluster import (
    MARKER,
    check_run,
    end_marked,
    free_port,
    marked_pids,
    ray_ports_args,
    short_tmpdir,
    tiny_ray_run,
)

ROOT = Path(__file__).resolve().parents[2]
RAY = ROOT / ".venv" / "bin" / "ray"


def _wait_for_job_server(url: str, head: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        assert head.poll() is None, "the Ray head exited"
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=5)
            return
        except urllib.error.HTTPError:  # it answers (e.g. 401 without the token): it is up
            return
        except OSError:
            time.sleep(1)
    raise TimeoutError(f"no Ray job server at {url} after {timeout_s} s")


@pytest.mark.heavy
def test_ray_submit_trains_as_a_ray_job_to_a_checkpoint(tiny_model_dir, tmp_path):
    if not RAY.exists():
        pytest.skip("ray not installed in .venv")
    home = short_tmpdir("trl-ray-")  # HOME and RAY_TMPDIR: Ray's socket paths stay short
    cache = os.environ.get("TURNRL_CACHE", str(Path.home() / ".cache" / "turnrl"))
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("RAY_ADDRESS", "RAY_AUTH"))}
    env.update({"HOME": str(home), "RAY_TMPDIR": str(home), MARKER: str(home),
                "TURNRL_CACHE": cache, "OMP_NUM_THREADS": "1",
                "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"})
    dashboard = free_port()
    head_log = tmp_path / "head.log"
    run = tmp_path / "run"
    t0 = time.monotonic()
    with open(head_log, "w") as log:
        head = subprocess.Popen(
            [str(RAY), "start", "--head", f"--port={free_port()}", "--num-cpus=2",
             f"--dashboard-port={dashboard}", "--disable-usage-stats", *ray_ports_args().split(),
             "--block"], env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{dashboard}"
        _wait_for_job_server(url, head)
        res = subprocess.run(
            ["bash", "launch/ray_submit.sh", *tiny_ray_run(tiny_model_dir, 1),
             f"trainer.run_dir={run}"], cwd=ROOT, env={**env, "RAY_ADDRESS": url},
            capture_output=True, text=True, timeout=900)
    finally:
        head.terminate()
        try:
            head.wait(60)
        except subprocess.TimeoutExpired:
            head.kill()
        deadline = time.monotonic() + 30  # the head's processes end after it
        while marked_pids(str(home)) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = end_marked(str(home))
        shutil.rmtree(home, ignore_errors=True)
    print(f"\n[ray_submit.sh] head start + job: {time.monotonic() - t0:.0f} s")
    out = res.stdout + res.stderr
    assert res.returncode == 0, out[-4000:] + head_log.read_text()[-2000:]
    assert "succeeded" in out and "[turnrl] done" in out
    assert left == [], "processes outlived the Ray head"
    check_run(run, 1)
