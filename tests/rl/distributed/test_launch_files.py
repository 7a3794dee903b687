"""docker/ and launch/ cannot run here (no docker engine, no Slurm, no GPU): lint them, and check
that each says how to run it."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
SCRIPTS = [ROOT / "launch" / n for n in ("ray_submit.sh", "slurm_ray.sbatch",
                                         "torchrun_learner.sh")]
DOCKERFILES = [ROOT / "docker" / n for n in ("Dockerfile.cpu", "Dockerfile.cuda")]


def _tool(name: str) -> str:
    path = shutil.which(name) or str(Path(sys.executable).parent / name)
    if not Path(path).exists():
        pytest.skip(f"{name} not installed (pip install -e .[dev])")
    return path


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_launch_script_parses_lints_and_documents_its_command(path):
    subprocess.run(["bash", "-n", str(path)], check=True)
    out = subprocess.run([_tool("shellcheck"), "-x", str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    header = path.read_text().split("set -euo pipefail")[0]
    assert f"launch/{path.name}" in header, "the header must show the exact command"


@pytest.mark.parametrize("path", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_lints(path):
    out = subprocess.run([_tool("hadolint"), str(path)], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout
    text = path.read_text()
    assert "docker build -f docker/" in text  # build instructions in the header


def test_cpu_image_runs_make_train():
    text = (ROOT / "docker" / "Dockerfile.cpu").read_text()
    assert 'CMD ["make", "train"]' in text and "make install" in text
