"""`parity history`: the checks whose ratio grew most against a baseline run, and drift (README
"History")."""

from __future__ import annotations

import math

from harness.console import UsageError, row
from harness.history import DRIFT_FACTOR, DRIFT_FLOOR, History, HistoryError, compare_runs, history_path


def _history(args) -> History:
    path = history_path(args.history)
    if path is None:
        raise UsageError("no history named: give --history PATH or set $PARITY_HISTORY (runs write one with "
                         "`parity run --history PATH` or `pytest -m parity --parity-history PATH`)")
    try:
        return History(path)
    except HistoryError as exc:
        raise UsageError(str(exc)) from None


def print_runs(runs) -> None:
    widths = (24, 20, 8, 12, 7, 7)
    print(row(("run", "time (UTC)", "source", "commit", "checks", "failed"), widths))
    for r in runs:
        print(row((r.id, r.time[:19], r.source, (r.commit or "-")[:12], r.checks, r.failed), widths))


def cmd_history(args) -> int:
    if not (args.drift_factor > 1 and math.isfinite(args.drift_factor)):
        raise UsageError(f"--drift-factor must be a finite number above 1, got {args.drift_factor}")
    if args.top < 1:
        raise UsageError(f"--top must be at least 1, got {args.top}")
    store = _history(args)
    try:
        runs = store.runs()
        if args.runs:
            print_runs(runs)
            return 0
        run = store.find_run(args.run, runs)
        earlier = runs[:[r.id for r in runs].index(run.id)]
        if args.baseline == "previous":
            if not earlier:
                raise HistoryError(f"run {run.id} is the first run in {store.path}: there is no earlier run to compare "
                                   "with (--runs lists the runs; --baseline names one)")
            baseline = earlier[-1]
        else:
            baseline = store.find_run(args.baseline, runs)
        found = compare_runs(store, run, baseline)
    except HistoryError as exc:
        raise UsageError(str(exc)) from None
    if args.candidate:
        found = [c for c in found if c.now.candidate in args.candidate]
    print(f"run {run.id} ({run.time[:19]}, {run.source}, commit {(run.commit or '-')[:12]}) against baseline "
          f"{baseline.id} ({baseline.time[:19]}, commit {(baseline.commit or '-')[:12]}), {len(runs)} run(s) in "
          f"{store.path}\n")
    # the candidate column as wide as its longest name (mutant names run long)
    widths = (44, max([16] + [len(c.now.candidate) + 2 for c in found[:args.top]]), 10, 10, 8, 19, 22)
    print(row(("case", "candidate", "baseline", "now", "growth", "state", "stage grown most"), widths))
    drifting = [c for c in found if c.drifts(args.drift_factor)]
    for c in found[:args.top]:
        growth = "-" if c.growth is None else f"{c.growth:.2f}x"
        state = "DRIFT" if c in drifting else c.state
        stage = c.grown_stage()
        stage_text = "-" if stage is None else f"{stage[0]} {stage[1]:.2f}x"
        before = "-" if c.before is None or c.before.worst_ratio is None else f"{c.before.worst_ratio:.3g}"
        now = "-" if c.now.worst_ratio is None else f"{c.now.worst_ratio:.3g}"
        print(row((c.now.case_id, c.now.candidate, before, now, growth, state, stage_text), widths).rstrip())
    if len(found) > args.top:
        print(f"... {len(found) - args.top} more (--top N shows more)")
    failing = [c for c in found if not c.now.passed and c.now.verdict != "unsupported"]
    print(f"\n{len(found)} check(s) compared; {len(drifting)} drifting (passing, ratio up more than "
          f"{args.drift_factor:g}x from at least {DRIFT_FLOOR:g}); {len(failing)} failing")
    for c in drifting:
        print(f"DRIFT: {c.now.case_id} / {c.now.candidate}: worst ratio {c.before.worst_ratio:.3g} -> "
              f"{c.now.worst_ratio:.3g} ({c.growth:.2f}x), still passing: the early warning before a failure")
    return 1 if args.fail_on_drift and drifting else 0


def add_parser(sub) -> None:
    p = sub.add_parser(
        "history", help="list the checks whose ratio grew most against a baseline run, and flag drift",
        description="Compare one run of a history (written by `parity run --history` or `pytest --parity-history`) "
                    "with a baseline run: every check's worst ratio then and now, largest growth first. A check "
                    f"drifts when it passes in both but its ratio rose more than --drift-factor (default "
                    f"{DRIFT_FACTOR}) from at least {DRIFT_FLOOR}. Exit 0; 1 with --fail-on-drift when a check drifts; "
                    "2 on bad input.")
    p.add_argument("--history", metavar="PATH", help="the SQLite history file (default $PARITY_HISTORY)")
    p.add_argument("--run", default="last", metavar="RUN",
                   help="the run to look at: a run id, its start, a commit's start, or first/last/previous (default last)")
    p.add_argument("--baseline", default="previous", metavar="RUN",
                   help="the run to compare with, named the same way (default: the run before --run)")
    p.add_argument("--drift-factor", type=float, default=DRIFT_FACTOR, metavar="X",
                   help=f"growth of a passing check's worst ratio that counts as drift (default {DRIFT_FACTOR})")
    p.add_argument("--candidate", action="append", metavar="NAME", help="only these candidates (repeatable)")
    p.add_argument("--top", type=int, default=20, metavar="N", help="rows to print (default 20)")
    p.add_argument("--runs", action="store_true", help="list the runs in the history and stop")
    p.add_argument("--fail-on-drift", action="store_true", help="exit 1 when a check drifts")
    p.set_defaults(func=cmd_history)

