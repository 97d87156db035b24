"""What a golden holds and how it is laid out: the tensors of a case's expected layers, flattened into
named tensors for one safetensors file, and back.

Stored (names are "layer{i}.{producer}.{stage}" and "inputs.hidden"):
- inputs.hidden: the batch's input [B, S, hidden] in the case's dtype (layer{i}.inputs.hidden for the
  later layers of a teacher-forced stack, whose input is the oracle's previous output).
- inputs.prefix_sha256 (from_cache plans): the sha256 of the prefix's inputs as 32 uint8, instead of
  the inputs themselves (a 131,072-token prefix is 755 MB at full dims). The cache handed to the
  candidate is rebuilt from the seeds by the reference (harness/prefix.py) when the golden is loaded.
- reference tensors exactly as the reference produced them (the case's dtype, bfloat16 or float32).
- oracle tensors in float32 for bfloat16 cases (the rounding, 2^-24 relative, is 1/65536 of a bf16
  ulp and far below any bound) and in float64 for float32 cases (stored as computed).
Only the judged rows (batch.compare) are stored, [N, ...] for per-token stages, [N, Hq, keys] for
scores and [N, Hq, keys + 1] for probs; everything else is rebuilt as the producers leave it (NaN,
-inf for masked scores, 0 for masked probabilities). Scores are stored so that a run from goldens
names a stage as a computed run does: with dominant sinks the probabilities of keys are far below the
bound's floor (set by the sink column), and a wrong kv head shows at the scores only. Score and
probability taps larger than SCORE_TAP_LIMIT elements are left out, as the producers leave them out
of dense runs that are too large; a golden then judges every other stage.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import struct
import tokenize
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import harness.produce
import reference.gpt_oss
import reference.oracle
import reference.rows
import harness.prefix
from harness.batch import Batch
from harness.expected import Expected
from harness.weights import tensor_sha256, weights_sha256  # noqa: F401  (goldens use them from here)
from harness.rounding import RoundingCheck, check

FORMAT = "gpt-oss-parity golden"
VERSION = 2  # 2: entries record the platform; seeded tensors no longer come from torch.randn
# Elements of one stored probs tensor; larger ones are left out of the golden.
SCORE_TAP_LIMIT = 1 << 18
# The code whose output a golden holds (its fingerprint ignores comments and blank lines).
FINGERPRINTED = (reference.gpt_oss, reference.oracle, reference.rows, harness.produce, harness.prefix)
QUERY_MAJOR = ("scores", "probs")  # [B, Hq, S, keys]: the query is dim 2
PREFIX_HASH = "inputs.prefix_sha256"


def hash_tensor(hex_digest: str) -> torch.Tensor:
    return torch.tensor(list(bytes.fromhex(hex_digest)), dtype=torch.uint8)
FILL = {"scores": -float("inf"), "probs": 0.0}


def code_text(source: str) -> str:
    """Source without comments, trailing blanks and blank lines. Comments come from the tokenizer, which
    finds them the same way on every Python (a syntax-tree dump would not: 3.12 adds fields)."""
    lines = source.splitlines()
    for tok in reversed(list(tokenize.generate_tokens(io.StringIO(source).readline))):
        if tok.type == tokenize.COMMENT:
            row, col = tok.start
            lines[row - 1] = lines[row - 1][:col]
    return "\n".join(line.rstrip() for line in lines if line.strip())


def reference_fingerprint() -> str:
    """A hash of the reference's, the oracle's and the producers' code (comments and blank lines do not
    count): a golden written by other code is stale."""
    h = hashlib.sha256()
    for module in FINGERPRINTED:
        h.update(module.__name__.encode() + b"\0" + code_text(Path(module.__file__).read_text()).encode() + b"\0")
    return h.hexdigest()[:16]


def stats(t: torch.Tensor) -> dict:
    """Summary statistics (over finite elements) a reader can eyeball in the manifest."""
    x = t.double()
    finite = x[torch.isfinite(x)]
    out = {"finite": int(finite.numel()), "nan": int(torch.isnan(x).sum()), "inf": int(torch.isinf(x).sum())}
    if finite.numel():
        out.update(min=float(finite.min()), max=float(finite.max()), mean=float(finite.mean()),
                   rms=float(finite.pow(2).mean().sqrt()))
    return out


def oracle_dtype(case_dtype: torch.dtype) -> torch.dtype:
    return torch.float32 if case_dtype == torch.bfloat16 else torch.float64


def _rows(stage: str, t: torch.Tensor, compare: torch.Tensor) -> torch.Tensor:
    return (t.permute(0, 2, 1, 3) if stage in QUERY_MAJOR else t)[compare].contiguous()


def _unrows(stage: str, rows: torch.Tensor, compare: torch.Tensor) -> torch.Tensor:
    b, s = compare.shape
    if stage in QUERY_MAJOR:
        out = torch.full((b, rows.shape[1], s, rows.shape[2]), FILL[stage], dtype=rows.dtype)
        out.permute(0, 2, 1, 3)[compare] = rows
    else:
        out = torch.full((b, s, *rows.shape[1:]), float("nan"), dtype=rows.dtype)
        out[compare] = rows
    return out


def to_tensors(layers: list[Expected], teacher: bool) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The named tensors of a golden, and the stages left out for size."""
    first = layers[0]
    compare = first.batch.compare
    tensors = {"inputs.hidden": first.batch.hidden.contiguous()}
    if first.batch.cache is not None:
        tensors[PREFIX_HASH] = hash_tensor(first.batch.cache.inputs_sha256)
    omitted: set[str] = set()
    for i, e in enumerate(layers):
        if i and teacher:
            tensors[f"layer{i}.inputs.hidden"] = e.batch.hidden.contiguous()
        # the reference as it came (a change of its dtype is a change), the oracle at its storage precision
        for producer, values, dtype in (("reference", e.reference, None), ("oracle", e.oracle, oracle_dtype(e.spec.dtype))):
            for stage, t in values.items():
                rows = _rows(stage, t, compare)
                if stage in QUERY_MAJOR and rows.numel() > SCORE_TAP_LIMIT:
                    omitted.add(stage)
                    continue
                tensors[f"layer{i}.{producer}.{stage}"] = rows.to(dtype) if dtype else rows
    return tensors, sorted(omitted)


def from_tensors(tensors: dict[str, torch.Tensor], specs, batch: Batch, teacher: bool, caches=None) -> list[Expected]:
    """Expected layers from a golden's tensors; `specs` and `batch` are rebuilt from the case, and so are
    `caches`, each layer's own cache (a from_cache stack: one cache per layer, of the same inputs)."""
    layers = []
    batch = batch.with_hidden(tensors["inputs.hidden"])
    for i, spec in enumerate(specs):
        layer_batch = batch.with_hidden(tensors[f"layer{i}.inputs.hidden"]) if i and teacher else batch
        if caches:
            layer_batch = replace(layer_batch, cache=caches[i])
        values: dict[str, dict[str, torch.Tensor]] = {"reference": {}, "oracle": {}}
        for name, t in tensors.items():
            layer, _, rest = name.partition(".")
            producer, _, stage = rest.partition(".")
            if layer == f"layer{i}" and producer in values:
                t = _unrows(stage, t, batch.compare)
                values[producer][stage] = t.double() if producer == "oracle" else t
        layers.append(Expected(spec, layer_batch, values["oracle"], values["reference"]))
    return layers


def serialise(tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> bytes:
    from safetensors.torch import save

    return save(tensors, metadata=metadata)


def header_metadata(data: bytes) -> dict[str, str]:
    """The __metadata__ of a safetensors buffer (read without loading any tensor)."""
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8 : 8 + n]).get("__metadata__", {})


def case_of_file(path: Path) -> dict | None:
    """The case a golden's tensor file was written for (from its header), or None if unreadable."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            meta = json.loads(f.read(n)).get("__metadata__", {})
        return json.loads(meta.get("golden", "{}")).get("case")
    except (OSError, ValueError, struct.error):
        return None


def deserialise(data: bytes) -> dict[str, torch.Tensor]:
    from safetensors.torch import load

    return load(data)


@dataclass
class TensorDiff:
    """How one stored tensor compares with another version of it."""

    name: str
    change: str  # "same", "values", "shape", "dtype", "added", "removed"
    detail: str = ""
    elements: int = 0  # elements that differ
    max_abs: float = 0.0
    # the new values are the old ones rounded differently: the oracle within the precision it is
    # stored at, a reference (or a stack's stored input) within platform rounding (harness/rounding.py)
    accepted: bool = False
    rounding: RoundingCheck | None = None  # a reference's comparison under the platform-rounding policy

    @property
    def changed(self) -> bool:
        return self.change != "same"


def _same(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Elementwise equal, NaN equal to NaN (not-computed slots) and infinities equal by sign."""
    return (a == b) | (torch.isnan(a) & torch.isnan(b))


def diff_tensors(old: dict[str, torch.Tensor], new: dict[str, torch.Tensor]) -> list[TensorDiff]:
    """Tensor by tensor. A change of values is given in units of the reference's own max error at that
    stage (from `old`), the scale on which a change matters, and judged: the oracle is accepted within
    its storage precision, a reference within platform rounding (measured against `old`'s oracle)."""
    out = []
    for name in sorted(set(old) | set(new)):
        if name not in old:
            out.append(TensorDiff(name, "added", f"{tuple(new[name].shape)} {str(new[name].dtype)[6:]}"))
            continue
        if name not in new:
            out.append(TensorDiff(name, "removed"))
            continue
        a, b = old[name], new[name]
        if a.dtype != b.dtype:
            out.append(TensorDiff(name, "dtype", f"dtype {str(a.dtype)[6:]} -> {str(b.dtype)[6:]}"))
        elif a.shape != b.shape:
            out.append(TensorDiff(name, "shape", f"shape {tuple(a.shape)} -> {tuple(b.shape)}"))
        else:
            differ = ~_same(a, b)
            n = int(differ.sum())
            if not n:
                out.append(TensorDiff(name, "same"))
                continue
            da, db = a[differ].double(), b[differ].double()
            both = torch.isfinite(da) & torch.isfinite(db)
            gap = (da[both] - db[both]).abs()
            max_abs = float(gap.max()) if gap.numel() and bool(both.all()) else math.inf
            detail = f"{n} of {a.numel()} elements differ, max |diff| {max_abs:.3g}"
            unit = reference_error(old, name)
            if unit:
                detail += f", {max_abs / unit:.2g}x the reference's own max error there"
            if name == PREFIX_HASH:  # another prefix: never platform rounding
                out.append(TensorDiff(name, "values", "the prefix's inputs changed (their sha256 differs)", n, math.inf,
                                      False))
                continue
            if ".oracle." in name:
                accepted = bool(both.all()) and bool((gap <= 4 * torch.finfo(a.dtype).eps * db[both].abs()).all())
                if not accepted:
                    detail += "; beyond the oracle's storage precision"
            else:
                oracle = old.get(name.replace(".reference.", ".oracle.")) if ".reference." in name else None
                rounding = check(name, a, b, oracle)
                accepted = rounding.accepted
                detail += ("; platform rounding: " if accepted else "; not platform rounding: ") + rounding.describe()
            out.append(TensorDiff(name, "values", detail, n, max_abs, accepted, None if ".oracle." in name else rounding))
    return out


def reference_error(tensors: dict[str, torch.Tensor], name: str) -> float | None:
    """The reference's own max error against the oracle at the stage of tensor `name`, from a golden:
    the unit in which a change of that stage is worth reporting."""
    layer, _, rest = name.partition(".")
    _, _, stage = rest.partition(".")
    ref, orc = tensors.get(f"{layer}.reference.{stage}"), tensors.get(f"{layer}.oracle.{stage}")
    if ref is None or orc is None or ref.shape != orc.shape:
        return None
    gap = (ref.double() - orc.double()).abs()
    gap = gap[torch.isfinite(gap)]
    return float(gap.max()) if gap.numel() else None
