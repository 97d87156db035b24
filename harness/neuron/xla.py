"""The `xla` mode: a Neuron candidate's layer traced by public torch-xla on the CPU (PJRT_DEVICE=CPU), the
lazy-tensor graph torch-neuronx compiles on a Neuron host (only the backend compiler differs: XLA:CPU
instead of neuronx-cc). Chosen explicitly (`--neuron-mode xla`, $PARITY_NEURON_MODE=xla), never silently.

Each NxDI call is one graph: the layer's inputs go to the XLA device, the module runs, one
`torch_xla.sync()` cuts and runs the graph, and its outputs (and what the forward hooks saw, which the
sync makes outputs of the same graph) come back. Around every call torch-xla's own counters
(torch_xla.debug.metrics: UncachedCompile, ExecuteTime) say how many graphs were compiled and run;
harness/neuron/tracing.py judges them. The same module also runs eagerly on the CPU beside it, and the
largest difference of the traced output from the eager one is reported, in units in the last place of each token's largest value. The KV cache is the harness's,
written on the host between calls and sent with each call, as the device path does.

What it proves and what it does not: README "Traced graphs on any CPU (xla mode)".
"""

from __future__ import annotations

import contextlib
import copy
import io
import os
import sys
import tempfile

import torch

from harness.neuron.layer import EagerLayer, NeuronLayer, sinks
from harness.neuron.tracing import Tracing
from harness.quiet import descriptor_redirected

XLA_INSTALL = ("the xla mode needs torch-xla 2.9 with torch 2.9 in a virtual environment of its own: "
               "PARITY_XLA=1 ./dev (README \"Traced graphs on any CPU (xla mode)\"); on a Neuron host it is in the "
               "Neuron venv already")


def xla_import_error() -> str | None:
    """None when torch-xla imports and runs on the CPU here, else why not. torch-xla's debug output
    (PT_XLA_DEBUG_LEVEL=1, read when it is imported) names the Python line that made each graph run;
    XlaLayer keeps it from the console and takes that line from it."""
    os.environ.setdefault("PJRT_DEVICE", "CPU")
    os.environ.setdefault("PT_XLA_DEBUG_LEVEL", "1")
    try:
        import torch_xla  # noqa: F401
        import torch_xla.debug.metrics  # noqa: F401
    except Exception as exc:  # any failure to import means the mode cannot run
        return f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
    return None


def requested() -> bool:
    return os.environ.get("PARITY_NEURON_MODE", "").strip().lower() == "xla"


def strict_first_call() -> bool:
    """$PARITY_XLA_STRICT=1 (`--xla-strict`): a first call that traces another graph fails instead of warning."""
    return os.environ.get("PARITY_XLA_STRICT", "") not in ("", "0")


def ulps(traced: torch.Tensor, eager: torch.Tensor) -> float:
    """The largest difference of `traced` from `eager` [..., hidden], in units in the last place of each
    token's largest value in `eager`'s dtype (per token: a bucket's padding holds large poison values,
    and an element near zero has a tiny ulp of its own)."""
    bits = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}.get(eager.dtype, 23)
    e, t = eager.float().nan_to_num(0, 0, 0), traced.float().nan_to_num(0, 0, 0)
    scale = e.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(eager.dtype).tiny)
    spacing = torch.exp2(torch.floor(torch.log2(scale)) - bits)
    return float(((t - e).abs() / spacing).max())


def report(tracing: Tracing) -> dict:
    """What goes in the result's info: compiles per graph, the checks, the traced-vs-eager difference."""
    return {"graphs": tracing.graphs(), "reruns": list(tracing.reruns),
            "checks": tracing.checks(strict_first_call()), "eager_max_ulps": tracing.eager_max_ulps}


class _Said:
    text = ""


@contextlib.contextmanager
def debug_output():
    """What torch-xla prints (on file descriptor 2, from native code and Python) while the block runs,
    kept from the console: its `.text` after the block."""
    said = _Said()
    with tempfile.TemporaryFile(mode="w+b") as sink:
        with descriptor_redirected(2, sink.fileno(), sys.stderr):
            python_side = io.TextIOWrapper(os.fdopen(os.dup(2), "wb"), write_through=True)  # what Python prints
            try:
                with contextlib.redirect_stderr(python_side):
                    yield said
            finally:
                python_side.close()
        sink.seek(0)
        said.text = sink.read().decode(errors="replace")


def triggers(text: str) -> list[str]:
    """From torch-xla's debug output: for each graph run by anything but the harness's own sync, the
    Python line that made it run ("forward (mypkg/attn.py:37)"): a graph break's place."""
    found = []
    for block in text.split("Python Frame Triggered Execution:")[1:]:
        frames = [line.split("Analysis:", 1)[-1].strip() for line in block.splitlines()[1:]]
        frames = [f for f in frames if f and "(" in f and "torch_xla" not in f]
        if frames and not frames[0].startswith("_traced ("):
            found.append(frames[0])
    return found


class XlaLayer(EagerLayer):
    """A NeuronLayer traced on the XLA device, one graph per call, counted; the eager copy beside it."""

    def __init__(self, module: NeuronLayer):
        """`module`: a layer with no forward hooks (their copies would travel with the traced copy)."""
        import torch_xla
        import torch_xla.debug.metrics as metrics

        self.torch_xla, self.metrics = torch_xla, metrics
        self.device = torch_xla.device()
        # copied before any hook is placed on `module`: a copied hook would keep what it saw on the first call
        # and make the first graph differ from later ones (measured: 9 graph outputs, then 7)
        super().__init__(copy.deepcopy(module).to(self.device))
        torch_xla.sync()  # the weights' transfer is pending until a sync: not part of the first call's graph
        self.eager = EagerLayer(module)
        self.own_internals = False  # seen through hooks, like a real module: the emulation's record is lazy tensors
        self.tracing = Tracing()
        self.rerun: int | None = None  # while a warm rerun runs: the compiles it has made so far
        self.step = ""

    set_feed = None  # a traced graph cannot be entered at a stage

    def _sinks(self):
        """Read from the eager copy: on the host, no graph."""
        return sinks(self.eager.module.attn, self.call_generation)

    def _counts(self) -> tuple[int, int]:
        compiles = self.metrics.counter_value("UncachedCompile") or 0
        executed = self.metrics.metric_data("ExecuteTime")
        return compiles, executed[0] if executed else 0

    def _traced(self, phase: str, inputs: tuple, eager_call) -> tuple:
        self.observed.start_call()
        compiles, executions = self._counts()
        with torch.no_grad(), debug_output() as said:
            outputs = self.module(*(t.to(self.device) for t in inputs))
            self.torch_xla.sync()  # one graph per NxDI call (the hooks' tensors are live: outputs of the same graph)
            outputs = tuple(t.cpu() for t in outputs)
            self.observed.values = {k: v.cpu() for k, v in self.observed.values.items()}
        now_compiles, now_executions = self._counts()
        if self.rerun is not None:
            self.rerun += now_compiles - compiles
        else:
            key = (phase, *(tuple(t.shape) for t in inputs))
            self.tracing.note(key, now_compiles - compiles, now_executions - executions, self.step or phase,
                              triggers(said.text))
            differ = ulps(outputs[0], eager_call(*inputs)[0])
            self.tracing.eager_max_ulps = max(self.tracing.eager_max_ulps or 0.0, differ)
        return outputs

    def context(self, x, mask, position_ids):
        self.call, self.call_generation, self.step = (mask,), False, "context encoding"
        return self._traced("context", (x, mask, position_ids), self.eager.context)

    def generation(self, x, mask, position_ids, k_cache, v_cache, active):
        self.call, self.call_generation = (mask, k_cache, active), True
        self.step = f"token generation at position {int(position_ids[0, 0])}"
        return self._traced("generation", (x, mask, position_ids, k_cache, v_cache, active), self.eager.generation)
