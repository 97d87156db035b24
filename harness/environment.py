"""What a run ran on, for reports and saved results: versions, the CPU instruction set torch uses
(its kernels, and so the last bits of bf16 results, differ between AVX2 and AVX-512), and the command."""

from __future__ import annotations

import platform
import shlex
import sys
from importlib import metadata

from harness import cpu


def run_environment(command: list[str] | None = None) -> dict:
    """`command`: the command line as a list (default: sys.argv)."""
    import torch

    try:
        harness_version = metadata.version("gpt-oss-parity")
    except metadata.PackageNotFoundError:  # run from a checkout without installing it
        harness_version = "not installed"
    argv = list(sys.argv if command is None else command)
    return {
        "harness": harness_version,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "kernels": cpu.summary(cpu.describe()),  # ATen capability, oneDNN instruction set, threads
        "platform": platform.platform(),
        "command": shlex.join(argv),
    }
