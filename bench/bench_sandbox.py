"""Sandbox latency and throughput: plain ``python -c`` subprocesses vs the sandbox modes.

    PYTHONPATH=. .venv/bin/python bench/bench_sandbox.py            # full run (about a minute)
    PYTHONPATH=. .venv/bin/python bench/bench_sandbox.py --n 100    # quicker

For each mode: median and p99 latency of a trivial call (``print(1)``) issued one at a time,
(the "no per-call tmpfs" row shows what the per-call mount + IPC namespaces and quota tmpfs
cost),
and calls/s with ``--concurrency`` calls in flight. Prints a markdown table. Not a test:
numbers depend on the machine and on what else runs on it (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable

from envs.sandbox import Sandbox, SandboxConfig

CODE = "print(1)"


async def _plain(code: str) -> bool:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return out == b"1\n"


async def _measure(
    call: Callable[[], Awaitable[bool]], n: int, concurrency: int
) -> tuple[float, float, float]:
    """(median ms, p99 ms, calls/s)."""
    for _ in range(min(20, n)):  # warm up
        await call()
    lat = []
    for _ in range(n):
        t0 = time.perf_counter()
        assert await call()
        lat.append(time.perf_counter() - t0)
    lat.sort()
    sem = asyncio.Semaphore(concurrency)

    async def bounded() -> bool:
        async with sem:
            return await call()

    total = max(n, 4 * concurrency)
    t0 = time.perf_counter()
    ok = await asyncio.gather(*(bounded() for _ in range(total)))
    rate = total / (time.perf_counter() - t0)
    assert all(ok)
    return 1000 * statistics.median(lat), 1000 * lat[int(0.99 * (len(lat) - 1))], rate


async def main(n: int, concurrency: int) -> None:
    rows: list[tuple[str, str, float, float, float]] = []
    rows.append(("plain subprocess (python -c)", "none",
                 *await _measure(lambda: _plain(CODE), max(n // 3, 30), concurrency)))  # fmt: skip
    modes = [
        ("sandbox, process level", SandboxConfig(isolation="process")),
        ("sandbox, default", SandboxConfig()),
        ("sandbox, strong (namespace)", SandboxConfig(isolation="namespace")),
    ]
    if "tmpfs_workdirs" in SandboxConfig.__dataclass_fields__:  # issue 13: its cost, measured
        modes.insert(2, ("  default, no per-call tmpfs/namespaces",
                         SandboxConfig(tmpfs_workdirs=False)))  # fmt: skip
    for name, cfg in modes:
        cfg.max_concurrency = concurrency
        async with Sandbox(cfg) as sb:

            async def one(sb: Sandbox = sb) -> bool:
                r = await sb.run(CODE)
                if r.stdout != "1\n":  # say what went wrong before the assertion stops the run
                    print(f"unexpected result: {r}", file=sys.stderr)
                return r.stdout == "1\n"

            rows.append((name, sb.isolation, *await _measure(one, n, concurrency)))
            if name == "sandbox, default":

                async def cell(sb: Sandbox = sb) -> bool:
                    return (await sb.run(CODE, session="bench")).stdout == "1\n"

                m = await _measure(cell, n, 1)  # one session runs one cell at a time
                rows.append(("  persistent session cell", sb.isolation, *m))
    load = os.getloadavg()[0]
    print(f"\n{os.cpu_count()} CPUs, load average {load:.1f}, n={n}, concurrency={concurrency}\n")
    print("| mode | isolation | median ms | p99 ms | calls/s |")
    print("|---|---|---:|---:|---:|")
    for name, iso, med, p99, rate in rows:
        print(f"| {name} | {iso} | {med:.2f} | {p99:.2f} | {rate:.0f} |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="sequential calls per mode")
    ap.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    args = ap.parse_args()
    asyncio.run(main(args.n, args.concurrency))
