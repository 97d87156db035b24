"""What this machine can run of the Neuron path: the mode, and why.

- device: the Neuron SDK imports and a Neuron device is present; each bucket and phase is traced and
  compiled (NxDI's build_module), and runs on the device.
- cpu: the SDK imports but there is no device; the same modules run eagerly in NxDI's CPU mode
  (NXD_CPU_MODE=1, NeuronConfig(on_cpu=True), native attention path).
- unavailable: the SDK does not import (no SDK, or the placeholders of the default package index);
  Neuron candidates are skipped with INSTALL_LINE.

- xla: chosen only explicitly ($PARITY_NEURON_MODE=xla, `--neuron-mode xla`): the module traced by public
  torch-xla on the CPU (harness/neuron/xla.py); the emulation runs there too.

$PARITY_NEURON_MODE (device, cpu or xla) forces a mode the machine can run; it is an error otherwise.
Nothing here imports the SDK at module import time: the rest of the harness works without it.
"""

from __future__ import annotations

import glob
import importlib
import importlib.metadata
import os
import shutil
import subprocess
from dataclasses import dataclass, field

INSTALL_LINE = ("pip install --extra-index-url https://pip.repos.neuron.amazonaws.com "
                "'gpt-oss-parity[neuron]'  (in a Neuron DLAMI or container venv: "
                "pip install -e '.[neuron]' from a checkout; README \"Running on a Neuron host\")")
SDK_PACKAGES = ("neuronx-distributed-inference", "neuronx-distributed", "torch-neuronx", "neuronx-cc", "libneuronxla")
MODES = ("device", "cpu", "xla", "unavailable")


class NeuronUnavailable(ValueError):
    """A Neuron candidate was asked for where it cannot run; the message says why and what to do."""


@dataclass
class NeuronEnvironment:
    mode: str  # one of MODES
    reason: str  # why this mode (and, for unavailable, the install line)
    versions: dict[str, str | None] = field(default_factory=dict)  # installed SDK packages (None: absent)
    devices: list[str] = field(default_factory=list)  # /dev/neuron* device nodes
    import_error: str | None = None


def package_versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in SDK_PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = None
    return out


def device_nodes() -> list[str]:
    return sorted(glob.glob("/dev/neuron[0-9]*"))


def neuron_ls() -> str | None:
    """What `neuron-ls` prints (the devices and their cores), or None where it is not installed."""
    exe = shutil.which("neuron-ls")
    if not exe:
        return None
    try:
        return subprocess.run([exe], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return f"neuron-ls failed: {exc}"


def sdk_import_error() -> str | None:
    """None when NxDI's attention module imports, else the error (the default index's placeholder
    packages raise ImportError; a missing package raises ModuleNotFoundError)."""
    if os.environ.get("NXD_CPU_MODE") is None and not device_nodes():
        os.environ["NXD_CPU_MODE"] = "1"  # NxDI reads it at import: without a device, run on CPU (gloo)
    try:
        importlib.import_module("neuronx_distributed_inference.modules.attention.attention_base")
    except Exception as exc:  # an SDK's import can fail in many ways; each means "cannot run it"
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return None


def detect() -> NeuronEnvironment:
    versions, devices = package_versions(), device_nodes()
    error = sdk_import_error()
    forced = os.environ.get("PARITY_NEURON_MODE", "").strip().lower()
    if forced and forced not in ("device", "cpu", "xla"):
        raise NeuronUnavailable(f"PARITY_NEURON_MODE={forced!r}: expected device, cpu or xla (or unset, to choose by "
                                "machine)")
    if error:
        return NeuronEnvironment("unavailable", f"the Neuron SDK does not import here ({error}); install it with "
                                                f"{INSTALL_LINE}", versions, devices, error)
    if forced == "xla":
        from harness.neuron.xla import XLA_INSTALL, xla_import_error

        problem = xla_import_error()
        if problem:
            raise NeuronUnavailable(f"PARITY_NEURON_MODE=xla but torch-xla does not import here ({problem}); {XLA_INSTALL}")
        return NeuronEnvironment("xla", "PARITY_NEURON_MODE=xla: the module traced by torch-xla on the CPU", versions, devices)
    if forced == "device" and not devices:
        raise NeuronUnavailable("PARITY_NEURON_MODE=device but this machine has no Neuron device (/dev/neuron*); "
                                "run on a trn1/trn2 host, or use PARITY_NEURON_MODE=cpu")
    if devices and forced != "cpu":
        return NeuronEnvironment("device", f"Neuron SDK and {len(devices)} device(s): {', '.join(devices)}", versions,
                                 devices)
    why = "PARITY_NEURON_MODE=cpu" if forced == "cpu" else "no Neuron device (/dev/neuron*)"
    return NeuronEnvironment("cpu", f"Neuron SDK present, {why}: NxDI's modules run eagerly on the CPU "
                                    "(NXD_CPU_MODE=1, native attention path)", versions, devices)


def require(env: NeuronEnvironment | None = None) -> NeuronEnvironment:
    """The environment, or NeuronUnavailable naming the install line."""
    env = env or detect()
    if env.mode == "unavailable":
        raise NeuronUnavailable(f"Neuron candidates cannot run here: {env.reason}")
    return env
