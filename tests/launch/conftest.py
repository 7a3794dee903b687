"""Fixtures of the launch tests: a one-node Slurm cluster (launch_cluster.SlurmCluster)."""

from __future__ import annotations

import shutil

import pytest
from launch_cluster import SlurmCluster, ensure_slurm, short_tmpdir


@pytest.fixture(scope="module")
def slurm_cluster():
    """A running one-node Slurm cluster for the module; stopped (with everything its jobs
    started) at the end, also when a test fails."""
    ensure_slurm()
    cluster = SlurmCluster(short_tmpdir("trl-slurm-"))
    try:
        cluster.start()
        yield cluster
    finally:
        left = cluster.stop()
        if left:
            print(f"[launch tests] ended {len(left)} process(es) left by the Slurm jobs: {left}")
        shutil.rmtree(cluster.root, ignore_errors=True)
