"""The `parity` command line. `parity run` checks candidates against the float64 oracle."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from harness.candidates import BUILTIN, load_candidate
from harness import case as case_module
from harness.case import Case
from harness.compare import Bounds, Verdict
from harness.repro import load_failure, replay_command, save_failure
from harness.runner import run_case
from harness.sweep import default_cases


def load_case_file(path: str) -> list[Case]:
    try:
        return case_module.load_case_file(path)
    except ValueError as exc:
        raise SystemExit(f"parity: {exc}")


def _row(cols, widths):
    return "  ".join(str(c).ljust(w) for c, w in zip(cols, widths))


def cmd_run(args) -> int:
    try:
        candidates = [load_candidate(c) for c in (args.candidate or list(BUILTIN))]
    except (ValueError, TypeError) as exc:
        print(f"parity: {exc}", file=sys.stderr)
        return 2
    bounds = Bounds().overridden(args.max_ratio, args.rms_ratio)
    cases = [c for f in args.case_file for c in load_case_file(f)] if args.case_file else default_cases(args.quick)
    widths = (44, 12, 10, 12, 20)
    print(_row(("case", "candidate", "verdict", "worst ratio", "first failing stage"), widths))
    verdicts: list[Verdict] = []
    started = time.monotonic()
    for case in cases:
        try:
            case_verdicts = run_case(case, candidates, bounds, args.checkpoint)
        except (OSError, KeyError, ValueError) as exc:  # unreadable checkpoint, missing layer, bad dims
            print(f"parity: case {case.id}: {exc}", file=sys.stderr)
            return 2
        for v in case_verdicts:
            verdicts.append(v)
            ratio = f"{v.worst_ratio:.3g}" if v.worst_ratio is not None else "-"
            stage = v.first_divergent_stage if not v.passed else "-"
            print(_row((v.case_id, v.candidate, v.verdict.upper(), ratio, stage), widths), flush=True)
    failed = [v for v in verdicts if not v.passed]
    specs = dict(zip((c.name for c in candidates), args.candidate or list(BUILTIN)))
    for case, v in _pair(cases, verdicts, len(candidates)):
        if not v.passed:
            path = save_failure(case, specs[v.candidate], v)
            print(f"\n{v.verdict.upper()}: {v.message}\n  replay: {replay_command(path)}")
    print(f"\n{len(verdicts) - len(failed)} checks passed, {len(failed)} failed "
          f"({len(cases)} cases x {len(candidates)} candidates, {time.monotonic() - started:.1f} s)")
    if args.json:
        out = {"cases": [dict(v.to_dict(), case=c.to_dict()) for c, v in _pair(cases, verdicts, len(candidates))],
               "summary": {"checks": len(verdicts), "failed": len(failed)}}
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")
    return 1 if failed else 0


def cmd_replay(args) -> int:
    try:
        case, candidate = load_failure(args.file)
        candidates = [load_candidate(c) for c in (args.candidate or [candidate])]
    except (ValueError, TypeError) as exc:
        print(f"parity: {exc}", file=sys.stderr)
        return 2
    bounds = Bounds().overridden(args.max_ratio, args.rms_ratio)
    print(f"case {case.id}: {json.dumps(case.to_dict())}")
    failed = 0
    for v in run_case(case, candidates, bounds):
        failed += not v.passed
        print(f"\ncandidate {v.candidate}: {v.verdict.upper()}"
              + (f", first divergent stage {v.first_divergent_stage}" if not v.passed else ""))
        print(stage_table(v))
        if v.message:
            print(v.message)
    return 1 if failed else 0


def stage_table(v: Verdict) -> str:
    widths = (6, 9, 10, 10, 8, 10, 10, 8, 5)
    lines = [_row(("layer", "stage", "cand max", "ref max", "ratio", "cand rms", "ref rms", "ratio", "ok"), widths)]
    for s in v.stages:
        lines.append(_row(("-" if s.layer is None else s.layer, s.stage, f"{s.cand_max:.3g}", f"{s.ref_max:.3g}",
                           f"{s.max_ratio:.3g}", f"{s.cand_rms:.3g}", f"{s.ref_rms:.3g}", f"{s.rms_ratio:.3g}",
                           "yes" if s.passed else "NO"), widths))
    return "\n".join(lines)


def _pair(cases, verdicts, per_case):
    for i, v in enumerate(verdicts):
        yield cases[i // per_case], v


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="parity", description="Numerical parity harness for gpt-oss attention.")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="check candidates against the float64 oracle and the bf16 reference",
                         description="Run cases against candidates and print a verdict table. Exit 1 if any check fails.")
    run.add_argument("--candidate", action="append", metavar="NAME|MODULE:ATTR",
                     help=f"candidate to check; repeatable. Built-ins: {', '.join(BUILTIN)} (default: all built-ins); "
                          "or an import path such as mypkg.attn:MyBlock")
    run.add_argument("--case-file", action="append", metavar="PATH",
                     help="JSON file with one case or a list of cases (default: the built-in sweep)")
    run.add_argument("--checkpoint", metavar="DIR",
                     help="take each case's weights from layer case.layer of this safetensors checkpoint "
                          "(original or HF format) instead of seeded weights")
    run.add_argument("--quick", action="store_true", help="a shorter built-in sweep without full-dims cases")
    run.add_argument("--json", metavar="PATH", help="also write the verdicts as JSON")
    run.add_argument("--max-ratio", type=float, metavar="X", help="override every stage's max-abs ratio bound")
    run.add_argument("--rms-ratio", type=float, metavar="X", help="override every stage's RMS ratio bound")
    run.set_defaults(func=cmd_run)

    replay = sub.add_parser("replay", help="rerun a saved failure with every stage tap and print the diagnosis",
                            description="Rerun the case saved in FILE (written by a failing `parity run` or "
                                        "`pytest -m parity`) against its candidate, and print every stage's errors.")
    replay.add_argument("file", metavar="FILE", help="repro file, e.g. .parity/failures/<case>--<candidate>.json")
    replay.add_argument("--candidate", action="append", metavar="NAME|MODULE:ATTR",
                        help="replay against these candidates instead of the saved one (repeatable)")
    replay.add_argument("--max-ratio", type=float, metavar="X", help="override every stage's max-abs ratio bound")
    replay.add_argument("--rms-ratio", type=float, metavar="X", help="override every stage's RMS ratio bound")
    replay.set_defaults(func=cmd_replay)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    for name in ("max_ratio", "rms_ratio"):
        value = getattr(args, name, None)
        if value is not None and not value > 0:
            print(f"parity: --{name.replace('_', '-')} must be positive, got {value}", file=sys.stderr)
            return 2
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
