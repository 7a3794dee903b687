"""Sandbox latency and throughput: plain ``python -c`` subprocesses vs the sandbox modes.

    PYTHONPATH=. .venv/bin/python bench/bench_sandbox.py            # full run (about a minute)
    PYTHONPATH=. .venv/bin/python bench/bench_sandbox.py --n 100    # quicker

    # before / after in one run: a copy of envs/sandbox from another commit, timed alternately
    git archive 9ab5987 envs/sandbox | tar -x -C /tmp/base
    PYTHONPATH=. .venv/bin/python bench/bench_sandbox.py --baseline /tmp/base/envs/sandbox \\
        --modes default --rounds 3

For each mode: median and p99 latency of a trivial call (``print(1)``) issued one at a time,
(the "no per-call tmpfs" row shows what the per-call mount + IPC namespaces and quota tmpfs
cost), and calls/s with ``--concurrency`` calls in flight; over the sequential calls, the CPU
ms per call of the sandbox's processes (workers, fork servers, call children) and of this
process (the trainer side: its event loops and threads). Prints a markdown table. ``--baseline`` runs the same modes on the
trainer-side module and worker of that copy (``sandbox.py`` and the worker it starts; the
config, results and host helpers stay this tree's), alternating with this tree in each round,
and prints the median of the per-round ratios. Not a test: numbers depend on the machine and on
what else runs on it (the load average is printed).
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import resource
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from envs.sandbox import Sandbox, SandboxConfig

CODE = "print(1)"
MODES = {
    "process": ("sandbox, process level", {"isolation": "process"}),
    "default": ("sandbox, default", {}),
    "no-tmpfs": ("  default, no per-call tmpfs/namespaces", {"tmpfs_workdirs": False}),
    "session": ("  persistent session cell", {}),
    "namespace": ("sandbox, strong (namespace)", {"isolation": "namespace"}),
}


async def _plain(code: str) -> bool:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", code,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return out == b"1\n"


TICK = os.sysconf("SC_CLK_TCK")


def _tree_cpu(roots: list[int]) -> float:
    """CPU seconds of the process trees under ``roots`` (worker, fork server, children; with
    bwrap, bwrap too): what the live ones used plus what their reaped children did."""
    total, todo, seen = 0, list(roots), set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            with open(f"/proc/{pid}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
            total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
            for tid in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                    todo += [int(x) for x in f.read().split()]
        except (OSError, ValueError):
            continue
    return total / TICK


def _own_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(
    call: Callable[[], Awaitable[bool]],
    n: int,
    concurrency: int,
    cpu: Callable[[], tuple[float, float]] = lambda: (0.0, 0.0),
) -> tuple[float, float, float, float, float]:
    """(median ms, p99 ms, calls/s, and over the sequential calls the CPU ms per call of the
    sandbox and of this process, as ``cpu`` counts them)."""
    for _ in range(min(20, n)):  # warm up
        await call()
    lat = []
    cpu0 = cpu()
    for _ in range(n):
        t0 = time.perf_counter()
        assert await call()
        lat.append(time.perf_counter() - t0)
    cpu1 = cpu()
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
    med, p99 = 1000 * statistics.median(lat), 1000 * lat[int(0.99 * (len(lat) - 1))]
    return med, p99, rate, 1000 * (cpu1[0] - cpu0[0]) / n, 1000 * (cpu1[1] - cpu0[1]) / n


async def _mode(
    sandbox_cls: Any, mode: str, n: int, concurrency: int
) -> tuple[str, float, float, float, float, float]:
    """(isolation, median ms, p99 ms, calls/s, sandbox and trainer CPU ms per call)."""
    _name, overrides = MODES[mode]
    cfg = SandboxConfig(**overrides)
    cfg.max_concurrency = concurrency
    session = "bench" if mode == "session" else None
    async with sandbox_cls(cfg) as sb:

        async def one() -> bool:
            r = await sb.run(CODE, session=session)
            if r.stdout != "1\n":  # say what went wrong before the assertion stops the run
                print(f"unexpected result: {r}", file=sys.stderr)
            return bool(r.stdout == "1\n")

        def cpu() -> tuple[float, float]:
            return _tree_cpu([w.proc.pid for w in sb._workers]), _own_cpu()

        # one session runs one cell at a time
        m = await _measure(one, n, 1 if session else concurrency, cpu)
        return sb.isolation, *m


def _load_baseline(path: str) -> ModuleType:
    """``sandbox.py`` of a copy of envs/sandbox, as its own module (its worker is the copy's)."""
    spec = importlib.util.spec_from_file_location(
        "turnrl_sandbox_baseline", Path(path) / "sandbox.py"
    )
    if spec is None or spec.loader is None:
        raise SystemExit(f"no sandbox.py in {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


async def main(args: argparse.Namespace) -> None:
    versions: list[tuple[str, Any]] = [("", Sandbox)]
    if args.baseline:
        versions = [("baseline", _load_baseline(args.baseline).Sandbox), ("this tree", Sandbox)]
    rows: list[tuple[str, str, str, float, float, float, float, float]] = []
    load0 = os.getloadavg()[0]
    if args.plain:
        m = await _measure(lambda: _plain(CODE), max(args.n // 3, 30), args.concurrency)
        rows.append(("plain subprocess (python -c)", "", "none", *m[:3], float("nan"), m[4]))
    ratios: dict[str, list[tuple[float, float, float]]] = {}
    for rnd in range(args.rounds):
        for mode in args.modes:
            got = {}
            for label, cls in versions if rnd % 2 == 0 else versions[::-1]:
                iso, med, p99, rate, cpu, own = await _mode(cls, mode, args.n, args.concurrency)
                got[label] = (med, rate, cpu)
                rows.append((MODES[mode][0], label, iso, med, p99, rate, cpu, own))
            if args.baseline:
                (bm, br, bc), (tm, tr, tc) = got["baseline"], got["this tree"]
                ratios.setdefault(mode, []).append((bm / tm, tr / br, bc / tc))
    load1 = os.getloadavg()[0]
    print(
        f"\n{os.cpu_count()} CPUs, load average {load0:.1f} at start, {load1:.1f} at end, "
        f"n={args.n}, concurrency={args.concurrency}, rounds={args.rounds}\n"
    )
    print("| mode | version | isolation | median ms | p99 ms | calls/s | CPU ms/call: sandbox "
          "| trainer |")  # fmt: skip
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name, label, iso, med, p99, rate, cpu, own in rows:
        print(f"| {name} | {label} | {iso} | {med:.2f} | {p99:.2f} | {rate:.0f} | {cpu:.2f} "
              f"| {own:.2f} |")  # fmt: skip
    if ratios:
        print("\nbaseline / this tree, median over rounds (latency and CPU: > 1 = faster now;")
        print("throughput: this tree / baseline):\n")
        print("| mode | latency | throughput | CPU per call |")
        print("|---|---:|---:|---:|")
        for mode, rs in ratios.items():
            lat, thr, cpu = (statistics.median(x) for x in zip(*rs))
            print(f"| {MODES[mode][0].strip()} | {lat:.2f}x | {thr:.2f}x | {cpu:.2f}x |")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=300, help="sequential calls per mode")
    ap.add_argument("--concurrency", type=int, default=16, help="calls in flight")
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=list(MODES))
    ap.add_argument("--rounds", type=int, default=1, help="repeat every mode (alternating order)")
    ap.add_argument("--baseline", metavar="DIR", help="a copy of envs/sandbox to compare with")
    ap.add_argument("--no-plain", dest="plain", action="store_false",
                    help="skip the plain-subprocess row")  # fmt: skip
    asyncio.run(main(ap.parse_args()))
