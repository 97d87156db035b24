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
from harness.presets import PRESETS
from harness.weights import SCALE_REGIMES, SINK_REGIMES

PLANS = ("prefill", "decode", "chunked")
PADDING = ("right", "left")
INPUTS = ("normal", "large", "outliers")
DTYPES = ("bfloat16", "float32")
STACK_MODES = ("teacher", "free")


@dataclass(frozen=True)
class Case:
    """One parity check. Every batch row is a sequence starting at position 0.

    plan "prefill": each row in one step. "decode": each row's prefill, then `decode_steps` single-token
    steps (the last decode_steps positions of every row). "chunked": positions [0, chunk_offset) in one
    step, the rest in a second step starting at chunk_offset.
    compare_last: 0 judges every valid row; k > 0 judges only each row's last k positions (long cases).
    pad_to: the padded length S of the batch (0: the longest row), e.g. a compiled bucket size.
    depth > 1: a stack of `depth` blocks at layers layer .. layer+depth-1, each with its own weights,
    compared layer by layer; stack_mode "teacher" feeds every layer the oracle's input (isolating
    per-layer error), "free" lets each producer's errors accumulate as in the real model.
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

    def __post_init__(self) -> None:
        object.__setattr__(self, "lengths", tuple(int(n) for n in self.lengths))
        problems = validate_case_fields(self)
        if problems:
            raise ValueError("invalid case: " + "; ".join(problems))

    @property
    def id(self) -> str:
        """Readable and stable: the main parameters, then a hash of the whole case."""
        plan = {"prefill": "prefill", "decode": f"decode{self.decode_steps}", "chunked": f"chunk@{self.chunk_offset}"}[self.plan]
        lens = "x".join(str(n) for n in self.lengths)
        digest = hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:6]
        extra = "" if self.dtype == "bfloat16" else "-f32"
        if self.depth > 1:
            extra += f"-stack{self.depth}{self.stack_mode[0]}"
        return f"{self.preset}-L{self.layer}-{plan}-n{lens}-{self.sinks}{extra}-{digest}"

    @property
    def batch_size(self) -> int:
        return len(self.lengths)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["lengths"] = list(self.lengths)
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


def validate_case_fields(case: Case) -> list[str]:
    p = []
    if case.preset not in PRESETS:
        p.append(f"preset={case.preset!r} must be one of {sorted(PRESETS)}")
    if not isinstance(case.layer, int) or case.layer < 0:
        p.append(f"layer={case.layer!r} must be a non-negative integer")
    if not case.lengths or any(n < 1 for n in case.lengths):
        p.append(f"lengths={list(case.lengths)} must be a non-empty list of positive token counts, one per row")
    if case.padding not in PADDING:
        p.append(f"padding={case.padding!r} must be one of {PADDING}")
    if case.plan not in PLANS:
        p.append(f"plan={case.plan!r} must be one of {PLANS}")
    if case.plan == "decode" and not (case.lengths and 1 <= case.decode_steps < min(case.lengths)):
        p.append(f"decode_steps={case.decode_steps} must be >= 1 and below the shortest row ({min(case.lengths, default=0)}) with plan 'decode'")
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
    if case.pad_to and case.lengths and case.pad_to < max(case.lengths):
        p.append(f"pad_to={case.pad_to} must be 0 or at least the longest row ({max(case.lengths)})")
    if not isinstance(case.depth, int) or case.depth < 1:
        p.append(f"depth={case.depth!r} must be a positive integer")
    if case.stack_mode not in STACK_MODES:
        p.append(f"stack_mode={case.stack_mode!r} must be one of {STACK_MODES}")
    if case.depth > 1 and case.compare_last:
        p.append("compare_last must be 0 for stacks (depth > 1): every row feeds the next layer")
    return p


def load_case_file(path: str | Path) -> list[Case]:
    """A JSON file holding one case object or a list of them. Errors name the file, the case index
    and the field."""
    p = Path(path)
    data = read_json(p, "case file")
    items = data if isinstance(data, list) else [data]
    return [Case.from_dict(item, source=f"{p} (case {i})") for i, item in enumerate(items)]


CASES_DIR = Path(__file__).resolve().parent.parent / "cases"


def curated_cases(directory: Path = CASES_DIR) -> list[Case]:
    """Every case in the checkout's cases/*.json, in file order."""
    return [c for f in sorted(directory.glob("*.json")) for c in load_case_file(f)]
