"""A case: a small, immutable, serialisable description from which every tensor is rebuilt exactly.

Tensors are never stored in a case; weights and inputs come from its seeds, so a case file (or a
failure message) reproduces a run bit for bit.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from dataclasses import asdict, dataclass, fields

from harness.jsonfile import read_json
from harness.locations import cases_dir
from harness.presets import PRESETS
from harness.weights import SCALE_REGIMES, SINK_REGIMES

PLANS = ("prefill", "decode", "chunked", "from_cache")
# Plans that hand the candidate every token of a row; "from_cache" hands it the KV cache of the prefix
# instead, and only candidates that declare `accepts_cache = True` run it (harness/candidates/protocol.py).
TOKEN_PLANS = PLANS[:3]
PADDING = ("right", "left")
INPUTS = ("normal", "large", "outliers")
DTYPES = ("bfloat16", "float32")
STACK_MODES = ("teacher", "free", "same_input")


@dataclass(frozen=True)
class Case:
    """One parity check. Every batch row is a sequence starting at position 0.

    plan "prefill": each row in one step. "decode": each row's prefill, then `decode_steps` single-token
    steps (the last decode_steps positions of every row). "chunked": positions [0, chunk_offset) in one
    step, the rest in a second step starting at chunk_offset. "from_cache": the candidate gets the KV
    cache of positions [0, n - decode_steps) of every row (k_rope and v as the bf16 reference computed
    them, in the case's dtype) and only the last `decode_steps` tokens, one generation step each: what a
    serving engine's token-generation step receives. It costs O(n), so rows may reach 131,072 tokens;
    its judged positions are the generated ones (compare_last stays 0).
    compare_last: 0 judges every valid row; k > 0 judges only each row's last k positions (long cases).
    pad_to: the padded length S of the batch (0: the longest row; from_cache: its generated tokens), e.g. a
    compiled bucket size.
    depth > 1: a stack of `depth` blocks at layers layer .. layer+depth-1, each with its own weights,
    compared layer by layer; stack_mode "teacher" feeds every layer the oracle's input (isolating
    per-layer error), "free" lets each producer's errors accumulate as in the real model, "same_input"
    feeds every layer the case's own inputs (each layer a block of its own: the only stack a from_cache
    plan can be, each layer with its own cache, since chaining layers would need every earlier layer's
    output at every cached position).
    checkpoint: a safetensors checkpoint directory whose layers give the weights instead of the seeds,
    with checkpoint_sha256, the hash of the weights taken from it (checked when the case is rebuilt).
    """

    preset: str = "small"
    layer: int = 0
    lengths: tuple[int, ...] = (16,)
    padding: str = "right"
    plan: str = "prefill"
    decode_steps: int = 0
    chunk_offset: int = 0
    sinks: str = "small"
    scale: str = "normal"
    inputs: str = "normal"
    weight_seed: int = 0
    input_seed: int = 0
    compare_last: int = 0
    dtype: str = "bfloat16"
    pad_to: int = 0
    depth: int = 1
    stack_mode: str = "teacher"
    checkpoint: str = ""
    checkpoint_sha256: str = ""

    def __post_init__(self) -> None:
        problems = field_type_problems(self)
        if not problems:
            object.__setattr__(self, "lengths", tuple(self.lengths))
            problems = validate_case_fields(self)
        if problems:
            raise ValueError("invalid case: " + "; ".join(problems))

    @property
    def id(self) -> str:
        """Readable and stable: the main parameters, then a hash of the whole case."""
        plan = {"prefill": "prefill", "decode": f"decode{self.decode_steps}", "chunked": f"chunk@{self.chunk_offset}",
                "from_cache": f"cache{self.decode_steps}"}[self.plan]
        lens = "x".join(str(n) for n in self.lengths)
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
        extra = "" if self.dtype == "bfloat16" else "-f32"
        if self.depth > 1:
            extra += f"-stack{self.depth}{self.stack_mode[0]}"
        if self.checkpoint:
            extra += "-ckpt"
        return f"{self.preset}-L{self.layer}-{plan}-n{lens}-{self.sinks}{extra}-{digest}"

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lengths"] = list(self.lengths)
        for name in OPTIONAL_FIELDS:  # left out when unused, so that ids of seeded cases never change
            if not d[name]:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, data: dict, source: str = "case") -> "Case":
        if not isinstance(data, dict):
            raise ValueError(f"{source}: expected a JSON object of case fields, found {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; expected fields are {sorted(known)}")
        try:
            return cls(**data)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{source}: {exc}") from None


OPTIONAL_FIELDS = ("checkpoint", "checkpoint_sha256")


def _kind(value) -> str:
    return {bool: "a boolean", str: "a string", float: "a number with a fraction", list: "a list", tuple: "a list",
            dict: "an object", int: "a single integer", type(None): "null"}.get(type(value), type(value).__name__)


def field_type_problems(case: Case) -> list[str]:
    """Each field has one type: integers are integers (not booleans, strings or 1.5), strings are
    strings, lengths is a list of integers. Nothing is coerced: "16" or [1.5] is an error."""
    p = []
    for f in fields(case):
        value = getattr(case, f.name)
        if f.name == "lengths":
            if not isinstance(value, (list, tuple)) or not all(type(n) is int for n in value):
                found = f"{_kind(value)} {value!r}" if not isinstance(value, (list, tuple)) else \
                    f"a list holding {', '.join(sorted({_kind(n) for n in value if type(n) is not int}))}"
                p.append(f"lengths={value!r}: expected a list of integers (tokens per row, e.g. [16] or [130, 7]), "
                         f"found {found}")
        elif f.type in ("int", int):
            if type(value) is not int:
                p.append(f"{f.name}={value!r}: expected an integer, found {_kind(value)}")
        elif f.type in ("str", str) and not isinstance(value, str):
            p.append(f"{f.name}={value!r}: expected a string, found {_kind(value)}")
    return p


def validate_case_fields(case: Case) -> list[str]:
    p = []
    if case.preset not in PRESETS:
        p.append(f"preset={case.preset!r} must be one of {sorted(PRESETS)}")
    if not isinstance(case.layer, int) or case.layer < 0:
        p.append(f"layer={case.layer!r} must be a non-negative integer")
    if not case.lengths or any(n < 1 for n in case.lengths):
        p.append(f"lengths={list(case.lengths)} must be a non-empty list of positive token counts, one per row")
    if len(case.lengths) > MAX_ROWS:
        p.append(f"lengths has {len(case.lengths)} rows; at most {MAX_ROWS} rows per batch are supported")
    longest = max(case.lengths, default=0)
    if max(longest, case.pad_to) > MAX_POSITIONS:
        p.append(f"a row of {max(longest, case.pad_to)} tokens (lengths or pad_to) is longer than gpt-oss's context of "
                 f"{MAX_POSITIONS} positions")
    if case.preset in PRESETS and not case.layer + case.depth <= PRESETS[case.preset].num_hidden_layers:
        p.append(f"layers {case.layer}..{case.layer + case.depth - 1} (layer and depth) go past the model's "
                 f"{PRESETS[case.preset].num_hidden_layers} layers")
    if case.padding not in PADDING:
        p.append(f"padding={case.padding!r} must be one of {PADDING}")
    if case.plan not in PLANS:
        p.append(f"plan={case.plan!r} must be one of {PLANS}")
    if case.plan in ("decode", "from_cache") and not (case.lengths and 1 <= case.decode_steps < min(case.lengths)):
        p.append(f"decode_steps={case.decode_steps} must be >= 1 and below the shortest row ({min(case.lengths, default=0)}) "
                 f"with plan {case.plan!r}")
    if case.plan == "from_cache" and (case.chunk_offset or case.compare_last):
        p.append("plan 'from_cache' judges exactly its generated tokens: chunk_offset and compare_last must be 0")
    if case.plan == "from_cache" and case.depth > 1 and case.stack_mode != "same_input":
        p.append(f"a from_cache stack (depth {case.depth}) must have stack_mode 'same_input' (each layer its own cache "
                 f"of the case's inputs), not {case.stack_mode!r}: chaining layers would need every earlier layer's "
                 "output at every cached position")
    if case.plan == "chunked" and not (case.lengths and 1 <= case.chunk_offset < max(case.lengths)):
        p.append(f"chunk_offset={case.chunk_offset} must be >= 1 and below the longest row ({max(case.lengths, default=0)}) with plan 'chunked'")
    if case.plan == "prefill" and (case.decode_steps or case.chunk_offset):
        p.append("decode_steps and chunk_offset must be 0 with plan 'prefill'")
    if case.sinks not in SINK_REGIMES:
        p.append(f"sinks={case.sinks!r} must be one of {SINK_REGIMES}")
    if case.scale not in SCALE_REGIMES:
        p.append(f"scale={case.scale!r} must be one of {SCALE_REGIMES}")
    if case.inputs not in INPUTS:
        p.append(f"inputs={case.inputs!r} must be one of {INPUTS}")
    if case.compare_last < 0:
        p.append(f"compare_last={case.compare_last} must be >= 0")
    if case.dtype not in DTYPES:
        p.append(f"dtype={case.dtype!r} must be one of {DTYPES}")
    slots = case.decode_steps if case.plan == "from_cache" else max(case.lengths, default=0)
    if case.pad_to and case.lengths and case.pad_to < slots:
        what = "the generated tokens per row" if case.plan == "from_cache" else "the longest row"
        p.append(f"pad_to={case.pad_to} must be 0 or at least {what} ({slots})")
    if not isinstance(case.depth, int) or case.depth < 1:
        p.append(f"depth={case.depth!r} must be a positive integer")
    if case.stack_mode not in STACK_MODES:
        p.append(f"stack_mode={case.stack_mode!r} must be one of {STACK_MODES}")
    if case.depth > 1 and case.compare_last:
        p.append("compare_last must be 0 for stacks (depth > 1): every row feeds the next layer")
    if bool(case.checkpoint) != bool(case.checkpoint_sha256):
        p.append("checkpoint and checkpoint_sha256 go together (both are set by `parity run --checkpoint`)")
    return p


# Structural limits, checked before anything is allocated (memory is checked by harness/limits.py).
MAX_POSITIONS = 131072  # gpt-oss's context: no position beyond it exists
MAX_ROWS = 64


def load_case_file(path: str | Path) -> list[Case]:
    """A JSON file holding one case object or a list of them. Errors name the file, the case index
    and the field."""
    p = Path(path)
    data = read_json(p, "case file")
    items = data if isinstance(data, list) else [data]
    if not items:
        raise ValueError(f"case file {p} holds an empty list: expected one case object or a non-empty list of them "
                         "(fields: README \"Cases\")")
    return [Case.from_dict(item, source=f"{p} (case {i})") for i, item in enumerate(items)]


# The checkout's cases/, or the copy installed with the package (harness/locations.py).
CASES_DIR = cases_dir()


def curated_cases(directory: Path = CASES_DIR) -> list[Case]:
    """Every curated case (cases/*.json), in file order."""
    return [c for f in sorted(directory.glob("*.json")) for c in load_case_file(f)]
