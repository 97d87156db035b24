"""Which CPU kernels compute the bf16 reference here: recorded with every golden, shown by
`parity goldens list` and by a verification on another platform.

The same code rounds differently from one machine to the next: ATen picks its vectorised kernels
(softmax, reductions, elementwise maths) by CPU capability (DEFAULT, AVX2, AVX512, or Arm's), and
oneDNN, which serves bf16 matrix products on CPUs with avx512_core and up, picks its GEMM kernels by
instruction set (AVX512_CORE, AVX512_CORE_BF16, AVX512_CORE_AMX). `ATEN_CPU_CAPABILITY` and
`ONEDNN_MAX_CPU_ISA` cap either one at a lower level, which reproduces another CPU on this one.
"""

from __future__ import annotations

import os
import platform as _platform
from pathlib import Path

import torch

# oneDNN's x86 instruction sets, lowest first, with the CPU flags (Linux /proc/cpuinfo names) each needs.
ONEDNN_ISAS: dict[str, tuple[str, ...]] = {
    "SSE41": ("sse4_1",),
    "AVX": ("avx",),
    "AVX2": ("avx2",),
    "AVX2_VNNI": ("avx2", "avx_vnni"),
    "AVX512_CORE": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
    "AVX512_CORE_VNNI": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni"),
    "AVX512_CORE_BF16": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16"),
    "AVX512_CORE_AMX": ("avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512_vnni", "avx512_bf16",
                        "amx_tile", "amx_bf16"),
}
# ATen's capabilities on x86 and the flags each needs.
ATEN_CAPABILITIES: dict[str, tuple[str, ...]] = {
    "DEFAULT": (),
    "AVX2": ("avx2", "fma"),
    "AVX512": ("avx512f", "avx512bw", "avx512vl", "avx512dq"),
}
ENV_KNOBS = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")


def cpu_flags() -> set[str] | None:
    """The CPU's feature flags (Linux), or None where they cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return set(value.split())
    return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware"):
                return value.strip()
    except OSError:
        pass
    return _platform.processor() or "unknown"


def supports(flags: set[str] | None, needed: tuple[str, ...]) -> bool | None:
    """Whether a CPU with these flags has everything `needed` (None: unknown)."""
    return None if flags is None else all(f in flags for f in needed)


def best_onednn_isa(flags: set[str] | None) -> str | None:
    """The highest oneDNN instruction set these flags allow (x86 only)."""
    if flags is None or _platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    best = None
    for isa, needed in ONEDNN_ISAS.items():
        if supports(flags, needed):
            best = isa
    return best


def onednn_isa(flags: set[str] | None = None) -> str:
    """The instruction set oneDNN uses: the CPU's best, capped by $ONEDNN_MAX_CPU_ISA."""
    flags = cpu_flags() if flags is None else flags
    best = best_onednn_isa(flags)
    if best is None:
        return "n/a"
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "").upper()
    order = list(ONEDNN_ISAS)
    if cap in order and order.index(cap) < order.index(best):
        return cap
    return best


def onednn_bf16_matmul() -> bool:
    """Whether torch hands bf16 matrix products to oneDNN here (CPUs with avx512_core and up);
    elsewhere they run in ATen's own kernels and oneDNN's instruction set changes nothing."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def describe() -> dict:
    """What decides the reference's rounding on this machine (a manifest entry's "platform")."""
    knobs = {k: os.environ[k] for k in ENV_KNOBS if os.environ.get(k)}
    return {
        "machine": _platform.machine(),
        "cpu": cpu_model(),
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_isa": onednn_isa(),
        "onednn_bf16_matmul": onednn_bf16_matmul(),
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        **({"env": knobs} if knobs else {}),
    }


def summary(p: dict | None) -> str:
    """One line: "x86_64, ATen AVX2, oneDNN AVX2 (not used for bf16), 2 threads, torch 2.13.0"."""
    if not p:
        return "unrecorded platform"
    onednn = p.get("onednn_isa", "?") + ("" if p.get("onednn_bf16_matmul") else " (not used for bf16)")
    env = p.get("env") or {}
    extra = "".join(f", {k}={v}" for k, v in sorted(env.items()))
    return (f"{p.get('machine', '?')}, ATen {p.get('aten_capability', '?')}, oneDNN {onednn}, "
            f"{p.get('threads', '?')} threads, torch {p.get('torch', '?')}{extra}")


def kernels(p: dict | None) -> tuple:
    """What two platforms must share for bit-identical bf16 results (the CPU model and the
    environment may differ freely)."""
    if not p:
        return ()
    return (p.get("machine"), p.get("aten_capability"), p.get("onednn_bf16_matmul") and p.get("onednn_isa"),
            p.get("threads"), p.get("torch"))


def why_no_effect(variable: str, value: str) -> str | None:
    """None when running with `variable=value` selects other kernels than this process runs with;
    otherwise why it does not (the CPU lacks the instruction set, nothing here uses it, or it is
    what this process already uses)."""
    flags = cpu_flags()
    if flags is None:
        return "the CPU's flags cannot be read here (not Linux), so which kernels a setting selects is unknown"
    if variable == "ONEDNN_MAX_CPU_ISA":
        needed = ONEDNN_ISAS.get(value.upper())
        if needed is None:
            return f"{value!r} is not one of oneDNN's x86 instruction sets {list(ONEDNN_ISAS)}"
        if not supports(flags, needed):
            return f"this CPU lacks {sorted(set(needed) - flags)}, so oneDNN cannot use {value} here"
        if not onednn_bf16_matmul():
            return ("torch does not hand bf16 matrix products to oneDNN on this CPU (that needs avx512_core), so "
                    f"{variable}={value} selects no other kernel here")
        if value.upper() == onednn_isa(flags):
            return f"oneDNN already uses {value} in this process"
        return None
    if variable == "ATEN_CPU_CAPABILITY":
        needed = ATEN_CAPABILITIES.get(value.upper())
        if needed is None:
            return f"{value!r} is not one of ATen's x86 capabilities {[c.lower() for c in ATEN_CAPABILITIES]}"
        if _platform.machine().lower() not in ("x86_64", "amd64"):
            return "ATen's x86 capabilities do not apply to this machine"
        if not supports(flags, needed):
            return f"this CPU lacks {sorted(set(needed) - flags)}, so ATen cannot use {value} here"
        if value.upper() == torch.backends.cpu.get_cpu_capability().upper():
            return f"ATen already uses {value} in this process"
        return None
    return f"{variable} is not a setting that selects CPU kernels"
