"""The learner's compute dtype: ``learner.autocast=auto`` and ``learner.deepspeed.bf16=auto``.

bf16 pays only where the hardware computes it natively: CUDA devices with bf16 support, and CPUs
with AMX (``amx_bf16``, Sapphire Rapids and later) or AVX512-BF16 (``avx512_bf16``). Elsewhere
PyTorch emulates bf16 matmuls through fp32 conversions: on an AVX-512 CPU with neither, bf16
autocast made a SmolLM2-135M forward+backward 2.7x slower than fp32 (DESIGN.md, measured facts).

:func:`choose_autocast` is the decision, fed the device type and the CPU's flags (tests pass
their own); :func:`resolve_autocast` reads them from this machine. Nothing here imports torch at
module level (only the CUDA query does, when the device is CUDA).
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Collection

AUTOCAST_MODES = ("auto", "bf16", "fp32")
NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
"""/proc/cpuinfo flags of CPUs whose matmul kernels (oneDNN) compute bf16 natively."""


def choose_autocast(setting: str, device_type: str, cpu_flags: Collection[str] = (),
                    cuda_bf16: bool = False) -> tuple[str, str]:
    """``(dtype, why)`` for ``learner.autocast=setting`` on a learner computing on
    ``device_type`` ("cuda" | "cpu" | ...): dtype is "bf16" or "fp32"; why is the reason for an
    "auto" choice ("" for an explicit setting). ``cpu_flags``: the CPU's /proc/cpuinfo flags;
    ``cuda_bf16``: whether the CUDA device computes bf16 natively (Ampere and later).
    """
    if setting not in AUTOCAST_MODES:
        raise ValueError(f"learner.autocast={setting!r} is not one of: {', '.join(AUTOCAST_MODES)}")
    if setting != "auto":
        return setting, ""
    if device_type == "cuda":
        return ("bf16", "CUDA supports bf16") if cuda_bf16 else ("fp32", "this GPU has no bf16")
    if device_type == "cpu":
        native = [f for f in NATIVE_BF16_CPU_FLAGS if f in cpu_flags]
        if native:
            return "bf16", f"this CPU computes bf16 natively ({native[0]})"
        return "fp32", "this CPU has no native bf16 (avx512_bf16/AMX)"
    return "fp32", f"no native bf16 known for device type {device_type!r}"


@functools.cache
def cpu_flags() -> frozenset[str]:
    """This machine's CPU flags from /proc/cpuinfo; empty off Linux or when unreadable (then
    ``auto`` picks fp32 on the CPU: emulated bf16 is the costly mistake, fp32 only a slower
    one where bf16 would have been native)."""
    if platform.system() != "Linux":
        return frozenset()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        pass
    return frozenset()


def resolve_autocast(setting: str, device) -> tuple[str, str]:
    """:func:`choose_autocast` on this machine for a learner on ``device`` (a ``torch.device``
    or its type as a string)."""
    device_type = getattr(device, "type", None) or str(device).partition(":")[0]
    cuda_bf16 = False
    if setting == "auto" and device_type == "cuda":
        import torch

        # not emulated bf16 (pre-Ampere GPUs report it with the default including_emulation)
        cuda_bf16 = torch.cuda.is_bf16_supported(including_emulation=False)
    flags = cpu_flags() if setting == "auto" and device_type == "cpu" else frozenset()
    return choose_autocast(setting, device_type, flags, cuda_bf16)


def autocast_line(setting: str, device) -> str:
    """The start-up line that says which autocast the learner on ``device`` uses, and why."""
    dtype, why = resolve_autocast(setting, device)
    if setting != "auto":
        return f"[turnrl] learner autocast: {dtype}"
    other = "fp32" if dtype == "bf16" else "bf16"
    return (f"[turnrl] learner autocast: {dtype} (learner.autocast=auto: {why}; "
            f"learner.autocast={other} to force)")
