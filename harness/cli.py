"""The `parity` command line: run, replay, report (see README "Commands")."""

from __future__ import annotations

import argparse
import difflib
import json
import math
import os
import sys
import time
from dataclasses import asdict
from pathlib import Path

from harness import case as case_module
from harness.batch import with_checkpoint
from harness.candidates import BUILTIN, load_candidate
from harness.case import Case
from harness.cli_goldens import add_parser as add_goldens_parser
from harness.cli_history import add_parser as add_history_parser
from harness.compare import StageResult, Verdict
from harness.environment import run_environment
from harness.console import Progress, UsageError, row, run_notes
from harness.expected import compute_expected
from harness.goldens import GoldenError, GoldenSource
from harness.history import History, HistoryError, current_commit, history_path
from harness.interrupt import restore as restore_sigterm
from harness.interrupt import sigterm_as_interrupt
from harness.jsonfile import read_json, write_json
from harness.limits import CaseTooLarge, check_fits
from harness.quiet import stdout_handlers_to_stderr, third_party_output_to_stderr
from harness.report import load_results, record_of, write_report
from harness.repro import load_failure, replay_candidate, replay_command, save_failure
from harness.runner import run_case
from harness.sweep import default_cases
from harness.tolerances import Bounds, load_bounds


def load_case_file(path: str) -> list[Case]:
    try:
        return case_module.load_case_file(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _bounds(args) -> Bounds:
    for name in ("max_ratio", "rms_ratio"):
        value = getattr(args, name)
        if value is not None and not (value > 0 and math.isfinite(value)):
            raise UsageError(f"--{name.replace('_', '-')} must be a positive finite number, got {value}")
    try:
        base = load_bounds(args.bounds) if args.bounds else Bounds()
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    return base.overridden(args.max_ratio, args.rms_ratio)


def _candidates(names: list[str]):
    try:
        with third_party_output_to_stderr():  # importing and building a candidate imports its libraries
            return [load_candidate(c) for c in names]
    except (ValueError, TypeError) as exc:
        raise UsageError(str(exc)) from None


def expected_source(args, case_files: dict[str, str]):
    """Where a run's expected tensors come from: computed (default), or the golden stores."""
    if not (args.goldens or args.no_reference):
        return compute_expected
    if getattr(args, "checkpoint", None):
        raise UsageError("--goldens and --no-reference use goldens of seeded weights; leave them out with --checkpoint")
    try:
        return GoldenSource.stores(compute=not args.no_reference, case_files=case_files)
    except GoldenError as exc:  # e.g. $PARITY_GOLDEN_CACHE names a file
        raise UsageError(str(exc)) from None


def _neuron_variants(args, names: list[str]) -> list[str]:
    """The candidates, each Neuron one once per --neuron-config configuration ($PARITY_NEURON_CONFIG)."""
    from harness.neuron import config

    if args.neuron_mode:  # read where Neuron candidates are built (harness/neuron/environment.py, xla.py)
        os.environ["PARITY_NEURON_MODE"] = args.neuron_mode
    if args.xla_strict:
        os.environ["PARITY_XLA_STRICT"] = "1"
    given, strict = config.given(args.neuron_config, environment=args.func is cmd_run)
    if not given:  # as named (a replayed `nxdi-emulation@tp8` stays at tp 8 unless --neuron-config says)
        return names
    try:
        return config.expand(names, config.parse(given), strict=strict)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def cmd_run(args) -> int:
    names = _neuron_variants(args, args.candidate or list(BUILTIN))
    candidates = _candidates(names)
    specs = dict(zip((c.name for c in candidates), names))
    bounds = _bounds(args)
    case_files = {}
    if args.case_file:
        cases = []
        for f in args.case_file:
            loaded = load_case_file(f)
            case_files.update((c.id, f) for c in loaded)
            cases += loaded
    else:
        cases = default_cases(args.quick, long=args.long)
    expected = expected_source(args, case_files)
    history = open_history(args.history)
    for c in candidates:  # say where each Neuron candidate runs, before anything does
        if getattr(c, "mode", None):
            env = getattr(c, "environment", None)
            print(f"{c.name}: mode {c.mode}" + (f" ({env.reason})" if env else " (NxDI's conventions in pure torch: "
                                                                                 "an emulation, not a device result)"))
    if args.checkpoint:  # recorded in each case (path and hash), so that a repro file replays these weights
        try:
            cases = [with_checkpoint(c, args.checkpoint) for c in cases]
        except (OSError, KeyError, ValueError) as exc:
            raise UsageError(f"--checkpoint {args.checkpoint}: {exc}") from None
    for case in cases:  # every case must fit this machine before anything runs
        try:
            check_fits(case, reference=not args.no_reference)
        except CaseTooLarge as exc:
            raise UsageError(str(exc)) from None
    widths = (44, max(9, *(len(c.name) for c in candidates)), 9, 11, 20)
    print(row(("case", "candidate", "verdict", "worst ratio", "divergent stages"), widths))
    pairs: list[tuple[Case, Verdict]] = []
    records: list[dict] = []
    replays: dict = {}
    by_name = {c.name: c for c in candidates}
    environment = run_environment(["parity", *args.argv])
    planned = len(cases) * len(candidates)

    def save_json(complete: bool) -> None:
        """The results so far. Written before the first check and after every case, marked incomplete
        until every planned check has its verdict: a run that ends early (killed, a process ended by
        native code) leaves a file that says so, never one that looks like a success."""
        if args.json:
            failed = sum(1 for _, v in pairs if not v.passed and v.verdict != "unsupported")
            write_json(args.json, {"cases": records, "summary": {
                "checks": len(pairs), "failed": failed, "planned": planned, "complete": complete,
                "history_run": run_id}, "environment": environment})

    run_id = None
    save_json(complete=False)
    started = time.monotonic()
    from harness.work import case_work

    # time left from the work left, not the cases left: one 131,072-token row outweighs the sweep
    progress = Progress(len(cases), weights=[case_work(c, len(candidates)) for c in cases])
    interrupted = None
    sigterm = sigterm_as_interrupt()
    try:
        for i, case in enumerate(cases, 1):
            progress.show(i, case.id)
            try:
                with third_party_output_to_stderr():  # candidates' logging stays out of the table
                    verdicts = run_case(case, candidates, bounds, probes=not args.no_probes,
                                        strict_probes=args.strict_probes, expected=expected)
            except (OSError, KeyError, ValueError) as exc:  # unreadable checkpoint, missing layer, bad dims
                progress.clear()
                raise UsageError(f"case {case.id}: {exc}") from None
            progress.clear()
            for v in verdicts:
                pairs.append((case, v))
                ratio = f"{v.worst_ratio:.3g}" if v.worst_ratio is not None else "-"
                stages = ", ".join(v.divergent_stages) if not v.passed else "-"
                print((row((v.case_id, v.candidate, v.verdict.upper(), ratio, stages), widths)
                       + run_notes(v.info)).rstrip(), flush=True)
                if not v.passed and v.verdict != "unsupported":
                    replays[case.id, v.candidate] = replay_command(save_failure(case, specs[v.candidate], v))
                records.append(record_of(case, v, bounds.for_candidate(by_name[v.candidate]),
                                         replays.get((case.id, v.candidate))))
            save_json(complete=False)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM (harness/interrupt.py): keep what ran
        progress.clear()
        interrupted = str(exc) or "interrupted (Ctrl-C)"
    finally:
        restore_sigterm(sigterm)
    unsupported = [(c, v) for c, v in pairs if v.verdict == "unsupported"]
    failed = [(c, v) for c, v in pairs if not v.passed and v.verdict != "unsupported"]
    for _, v in unsupported:
        print(f"\nUNSUPPORTED (not run, not counted as passed): {v.message}")
    for case, v in failed:
        print(f"\n{v.verdict.upper()}: {v.message}\n  replay: {replays.get((case.id, v.candidate), '(not saved)')}")
        if v.traceback:
            print(_indent(v.traceback) if args.verbose else "  (the candidate's traceback is in the repro file; -v prints it)")
    print(f"\n{len(pairs) - len(failed) - len(unsupported)} checks passed, {len(failed)} failed"
          + (f", {len(unsupported)} unsupported by their candidate" if unsupported else "") + " "
          f"({len(cases)} cases x {len(candidates)} candidates, {time.monotonic() - started:.1f} s)")
    if interrupted:
        print(f"INTERRUPTED: {interrupted}; {len(pairs)} of {planned} planned checks ran (the rest have no verdict: "
              "this run proves nothing about them)", flush=True)
    if isinstance(expected, GoldenSource):
        print(f"expected tensors: {expected.loaded} case(s) from goldens, {expected.computed} computed"
              + (f" and cached in {expected.cache.root}" if expected.computed else ""))
    if history is not None and not interrupted:  # a partial run would read as checks that vanished
        run_id = history.append(records, "parity run", commit=current_commit())
        print(f"appended {len(records)} check(s) to history {history.path} as run {run_id}")
    complete = not interrupted and len(pairs) == planned
    save_json(complete=complete)
    if args.json:
        print(f"wrote {args.json}" + ("" if complete else " (marked incomplete)"))
    if args.report:
        print(f"wrote {write_report(records, args.report, environment, history=history and history.path, run=run_id)}")
    if interrupted:
        return 130
    return 1 if failed else 0


def open_history(given: str | None) -> History | None:
    """The history named by --history or $PARITY_HISTORY, checked writable before anything runs."""
    path = history_path(given)
    if path is None:
        return None
    try:
        history = History(path)
        history.check_writable()
    except (HistoryError, OSError) as exc:
        raise UsageError(f"--history: {exc}") from None
    return history


def cmd_replay(args) -> int:
    try:
        case, saved = load_failure(args.file)
        names = _neuron_variants(args, args.candidate or [replay_candidate(args.file, saved,
                                                                          trusted=args.trust_candidate)])
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    candidates = _candidates(names)
    print(f"case {case.id}: {json.dumps(case.to_dict())}")
    failed = 0
    try:
        with third_party_output_to_stderr():
            verdicts = run_case(case, candidates, _bounds(args), strict_probes=args.strict_probes,
                                expected=expected_source(args, {}))
    except (OSError, KeyError, ValueError) as exc:  # a missing golden, a changed checkpoint, a case too large
        raise UsageError(f"case {case.id}: {exc}") from None
    for v in verdicts:
        failed += not v.passed
        print(f"\ncandidate {v.candidate}: {v.verdict.upper()}"
              + (f", first divergent stage {v.first_divergent_stage}" if not v.passed else ""))
        print(stage_table(v.stages))
        entered = [d.result for d in v.divergences if d.located_by == "tap" and d.result]
        if entered:  # each fails on its own (harness/isolation.py)
            print(f"divergent stages {', '.join(v.divergent_stages)}; entered with the oracle's values of every earlier stage:")
            print(stage_table(entered))
        for p in v.probes:
            print(f"probe {p['name']:20} {'ok' if p['passed'] else 'FAILED'}{'' if p['binding'] else ' (not binding)'}: {p['detail']}")
        if v.message:
            print(v.message)
        if v.traceback:
            print(_indent(v.traceback) if args.verbose else "(-v prints the candidate's traceback)")
    return 1 if failed else 0


def _indent(text: str) -> str:
    return "\n".join("    " + line for line in text.rstrip().splitlines())


def stage_table(stages: list[StageResult]) -> str:
    widths = (6, 9, 10, 10, 8, 10, 10, 8, 9, 8, 5)
    head = ("layer", "stage", "cand max", "ref max", "ratio", "cand rms", "ref rms", "ratio", "cosine", "beyond", "ok")
    lines = [row(head, widths)]
    for s in stages:
        lines.append(row(("-" if s.layer is None else s.layer, s.stage, f"{s.cand_max:.3g}", f"{s.ref_max:.3g}",
                           f"{s.max_ratio:.3g}", f"{s.cand_rms:.3g}", f"{s.ref_rms:.3g}", f"{s.rms_ratio:.3g}",
                           f"{s.cand_cosine:.6f}", f"{s.beyond:.1%}", "yes" if s.passed else "NO"), widths))
    return "\n".join(lines)


def cmd_report(args) -> int:
    try:
        records, environment = load_results(args.results)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out} is a file; the report is a folder (index.html, img/, records/): name a folder")
    history = history_path(args.history)
    run = None
    if history is not None:
        try:
            History(history).runs()  # readable before anything is drawn
        except HistoryError as exc:
            raise UsageError(str(exc)) from None
        run = (read_json(args.results, "results file").get("summary") or {}).get("history_run")
    print(f"wrote {write_report(records, out, environment, history=history, run=run)}")
    return 0


def cmd_summary(args) -> int:
    from harness.summary import destination, incomplete, markdown

    try:
        text = markdown(args.results)
        unfinished = incomplete(args.results) if args.require_complete else None
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    status = 0
    if unfinished:  # a gate fails closed: green only when every planned check ran
        print(f"parity summary: {args.results}: INCOMPLETE: {unfinished}", file=sys.stderr)
        status = 1
    target = destination(args.out)
    if target is None:
        print(text, end="")
        return status
    try:
        with open(target, "a", encoding="utf-8") as f:  # appended: a job's steps share one summary file
            f.write(text)
    except OSError as exc:
        raise UsageError(f"cannot append the summary to {target}: {exc}") from None
    print(f"appended the summary to {target}")
    return status


def cmd_doctor(args) -> int:
    from harness.doctor import gather, line, unmet

    findings = gather(lambda label, value: print(line(label, value), flush=True))
    required = args.require or []
    missing = unmet(findings, required)
    if not required:
        return 0
    if not missing:
        print(f"\nok: this machine can run what was required ({', '.join(required)})")
        return 0
    print(f"\nNOT READY for --require {' '.join(required)}; missing:", file=sys.stderr)
    for m in missing:
        print(f"  - {m}", file=sys.stderr)
    return 1


def cmd_selftest(args) -> int:
    from harness.mutants import ALL_MUTANTS, BENIGN, DRIVER_MUTANTS, FAST_BUGS, KILL_WITHIN, MULTI_BUG, MUTANTS, REGIME_MUTANTS
    from harness.neuron.bugs import SHARDING_MUTANTS
    from harness.selftest import ABLATIONS, run_selftest

    from harness.neuron.tracing_mutants import TRACING_MUTANTS

    if args.list:
        print("mutants:  " + ", ".join(MUTANTS))
        print("multi-bug mutants: " + ", ".join(MULTI_BUG))
        print("driver mutants (nxdi-emulation): " + ", ".join(DRIVER_MUTANTS))
        print("sharding mutants (nxdi-emulation@tpN, one process per rank): " + ", ".join(SHARDING_MUTANTS))
        print(f"plan and long-context bugs (killed within {KILL_WITHIN} examples on every seed): " + ", ".join(FAST_BUGS))
        print("regime mutants (must also fail the default sweep): " + ", ".join(REGIME_MUTANTS))
        print("tracing mutants (xla mode, where torch-xla is installed): " + ", ".join(TRACING_MUTANTS))
        print("benign:   " + ", ".join(BENIGN))
        print("ablations: " + ", ".join(ABLATIONS))
        return 0
    for name in ("max_examples", "benign_examples", "seeds"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1")
    progress = Progress(0)
    started = time.monotonic()

    def show(i: int, total: int, what: str) -> None:
        if total != progress.total:  # mutants, then benign examples: another cost per step
            progress.phase(total)
        progress.show(i, what)

    asked = args.mutant or [*ALL_MUTANTS, *TRACING_MUTANTS]
    traced = [name for name in asked if name in TRACING_MUTANTS]
    tracing, tracing_skipped = _tracing_selftest(traced, explicit=bool(args.mutant))
    numeric = [name for name in asked if name not in TRACING_MUTANTS]
    try:
        result = run_selftest(tuple(numeric), tuple(args.benign or BENIGN), args.max_examples,
                              args.benign_examples, tuple(args.without or ()), show, seeds=args.seeds)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    progress.clear()
    widths = (32, 7, 9, 14, 6, 30, 8, 44)
    print(row(("mutant", "killed", "examples", "by seed (max)", "named", "divergent stages", "sweep", "shrunk case"), widths))
    for m in result.mutants:
        shrunk = "-"
        if m.shrunk_case:
            c = m.shrunk_case
            plan = {"decode": f"decode{c['decode_steps']}", "chunked": f"chunk@{c['chunk_offset']}",
                    "from_cache": f"from cache x{c['decode_steps']}"}.get(c["plan"], "prefill")
            shrunk = f"layer {c['layer']}, lengths {c['lengths']}, {plan}, {c['padding']} pad, sinks {c['sinks']}"
        name = m.name
        if len(name) > widths[0]:  # a multi-bug mutant's long name gets a line of its own
            print(name)
            name = ""
        worst = "-" if m.worst_kill is None else f"{m.worst_kill}{' TOO SLOW' if not m.fast_enough else ''}"
        swept = ("killed" if m.sweep_case else "PASSED") if m.sweep_checked else "-"
        print(row((name, "yes" if m.killed else "NO", m.examples_to_kill or "-", worst, "yes" if m.named else "NO",
                   ", ".join(m.divergent_stages) or "-", swept, shrunk), widths))
        if m.killed and not m.named:
            print(f"    {m.message.splitlines()[0]}")
    if result.benign:
        widths = (32, 9, 13, 12)
        print("\n" + row(("benign variant", "examples", "false alarms", "worst ratio"), widths))
        for b in result.benign:
            print(row((b.name, b.examples, b.false_alarms, f"{b.worst_ratio:.3g}"), widths))
            for alarm in b.alarms[:3]:
                print(f"    {alarm}")
    summary = result.to_dict()["summary"]
    if summary["fast_bugs"]:
        print(f"\nplan and long-context bugs: {summary['fast_bugs_in_time']} of {summary['fast_bugs']} killed within "
              f"{KILL_WITHIN} examples on each of {summary['seeds']} seed(s); worst {summary['fast_bug_worst_kill']}")
    for m in result.mutants:
        if m.sweep_checked:
            print(f"default sweep vs {m.name}: " + (f"fails at {m.sweep_stage} in {m.sweep_case}" if m.sweep_case else
                                                    "PASSED every case (a regime the sweep does not reach)"))
    print(f"\n{summary['killed']} of {summary['mutants']} mutants killed (median {summary['median_examples_to_kill']} "
          f"examples to kill), {summary['named']} with every bug named at its own stage; "
          f"{summary['false_alarms']} false alarms in {summary['benign_examples']} benign examples "
          f"({time.monotonic() - started:.0f} s)")
    if tracing:
        widths = (32, 7, 50)
        print("\n" + row(("tracing mutant (xla mode)", "killed", "by the check"), widths))
        for t in tracing:
            print(row((t.name, "yes" if t.killed else "NO", t.check.removeprefix("tracing: ")), widths))
            print(f"    {t.detail[:200]}")
    if tracing_skipped:
        print(f"\ntracing mutants: not run ({tracing_skipped})")
    if args.json:
        write_json(args.json, {**result.to_dict(), "tracing_mutants": [asdict(t) for t in tracing],
                               "tracing_skipped": tracing_skipped})
        print(f"wrote {args.json}")
    return 0 if result.ok and all(t.killed for t in tracing) else 1


def _tracing_selftest(names: list[str], explicit: bool) -> tuple[list, str | None]:
    """The tracing mutants asked for, run in xla mode; or why not (torch-xla absent: an error when they
    were named, a line in the report when they came with the default set)."""
    from harness.neuron import tracing_mutants, xla

    if not names:
        return [], None
    problem = xla.xla_import_error()
    if problem:
        if explicit:
            raise UsageError(f"tracing mutants need the xla mode: torch-xla does not import here ({problem}); "
                             f"{xla.XLA_INSTALL}")
        return [], f"torch-xla does not import here; {xla.XLA_INSTALL}"
    return [tracing_mutants.run(name) for name in names], None


def cmd_bench(args) -> int:
    from harness.bench import run_bench

    started = time.monotonic()

    def show(what: str) -> None:
        print(f"[{time.monotonic() - started:.0f} s] {what}", file=sys.stderr, flush=True)

    r = run_bench(quick=args.quick, progress=show)
    m = r["machine"]
    print(f"machine: {m['processor']}, {m['cpus']} CPUs, {m['platform']}; dims {r['preset']}")
    d = r["default_sweep"]
    print(f"\ndefault sweep (`parity run`{' --quick' if r['quick'] else ''}, a fresh process, every built-in candidate): "
          + (d["error"] if "error" in d else f"{d['wall_s']} s wall, {d['checks']} checks, {d['failed']} failed"))
    o = r["overhead"]
    print(f"\noverhead: built-in sweep, {o['cases']} cases x {o['candidates']} candidates: wall {o['wall_s']} s, forward "
          f"passes {o['forward_s']} s (inputs made in {o['inputs_s']} s): {o['ratio']}x")
    print("\npeak memory (GiB, whole process; above imports in brackets)")
    for n, parts in r["memory"].items():
        cells = []
        for name, v in parts.items():
            cells.append(f"{name} " + (v["cannot run"] if "cannot run" in v else v.get("error") or
                                       f"{v['peak_gib']:.2f} ({v['above_imports_gib']:.2f}) in {v['seconds']} s"))
        print(f"  {n:>6} tokens: " + "; ".join(cells))
    p = r["oracle_prefill_8192"]
    print(f"  8192-token prefill through the oracle, every row: " + (p.get("error") or f"{p['peak_gib']:.2f} GiB in {p['seconds']} s"))
    print("\none 131,071 row end to end (reference, oracle, emulation):")
    for kind, v in r["row_131071"].items():
        print(f"  {kind:>7} layer: " + (v.get("error") or f"{v['seconds']} s, {v['peak_gib']:.2f} GiB, {v['verdict']}; {v['sections_s']}"))
    t = r["tp8"]
    print("\none case at tp 8 (nxdi-emulation@tp8, rank start-up included): "
          + (t.get("error") or f"{t['seconds']} s, {t['verdict']}"))
    h = r["hypothesis"]
    print(f"\ndefault hypothesis profile: {h['examples']} examples in {h['seconds']} s = {h['examples_per_second']} examples/s")
    print("\ngrowth with length (full layer, from a cache: reference, oracle, emulation end to end)")
    print(row(("tokens", "seconds", "peak GiB", "prefix s", "inputs s", "candidate s"), (8, 9, 9, 9, 9, 11)))
    for n, v in r["growth"].items():
        s = v.get("sections_s", {})
        print(row((n, v.get("seconds", "-"), v.get("peak_gib", "-"), s.get("prefix", "-"), s.get("inputs", "-"),
                   s.get("candidate", "-")), (8, 9, 9, 9, 9, 11)))
    print("\ntargets: " + "; ".join(f"{k}: {'met' if ok else 'NOT met'}" for k, ok in r["targets"].items()))
    if args.json:
        write_json(args.json, r)
        print(f"wrote {args.json}")
    return 0


def _run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("-v", "--verbose", action="store_true", help="print the whole traceback of a candidate that raised")
    p.add_argument("--time-limit", type=float, metavar="SECONDS",
                   help="time limit of each candidate call; past it the check's verdict is `timeout` (default: "
                        "$PARITY_TIME_LIMIT, else the candidate's time_limit attribute, else 600; 0: none)")


def _neuron_option(p: argparse.ArgumentParser) -> None:
    from harness.neuron.config import HELP

    p.add_argument("--neuron-config", metavar="JSON_OR_FILE", help=HELP)
    p.add_argument("--neuron-mode", choices=("device", "cpu", "xla"),
                   help="run Neuron candidates in this mode (default $PARITY_NEURON_MODE, else by machine: device where "
                        "there is one, else cpu); xla: traced by torch-xla on the CPU, with tracing checks (never "
                        "chosen unless asked; README \"Traced graphs on any CPU\")")
    p.add_argument("--xla-strict", action="store_true",
                   help="xla mode: a first call that traces another graph than later calls fails instead of warning "
                        "($PARITY_XLA_STRICT=1)")


def _bound_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bounds", metavar="FILE", help="tolerance policy file (JSON; see harness/tolerances.py)")
    p.add_argument("--max-ratio", type=float, metavar="X", help="override every stage's max-abs ratio bound")
    p.add_argument("--rms-ratio", type=float, metavar="X", help="override every stage's RMS ratio bound")
    p.add_argument("--strict-probes", action="store_true",
                   help="the NaN probes (NaN in padding / outside the window must not reach outputs) fail the check")


def _expected_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--goldens", action="store_true",
                   help="take expected tensors from the golden stores (committed, then the local cache); cases "
                        "without a golden are computed and cached")
    p.add_argument("--no-reference", action="store_true",
                   help="never run the CPU reference or oracle: every case must have a golden (device runners)")


class Parser(argparse.ArgumentParser):
    """Every `parity` parser, subcommands' too (add_subparsers makes them of the parent's class): option
    names are never abbreviated (argparse silently took `--candidat` as `--candidate`), and an unknown
    option's error names the nearest option of that subcommand (it used to get the top-level usage only)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **{**kwargs, "allow_abbrev": False})

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        unknown = [a for a in extras if a.startswith("-") and len(a) > 1 and not a[1].isdigit()]  # not "-1"
        if unknown:  # here, not at the top level, where this parser's options are known
            self.error(self.unknown_option(unknown[0]))
        return namespace, extras

    def unknown_option(self, arg: str) -> str:
        name = arg.split("=", 1)[0]
        known = [option for action in self._actions for option in action.option_strings]
        near = difflib.get_close_matches(name, known, n=1)
        return f"unrecognized option {name}; " + (f"did you mean {near[0]}?" if near else
                                                  f"`{self.prog} --help` lists the options")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="parity", description="Numerical parity harness for gpt-oss attention.",
                    epilog="Exit status: 0 success, 1 a check failed (or what the command names), "
                           "2 bad input, 124 a candidate stuck past its time limit (README "
                           "\"Exit codes and outputs\").")
    parser.add_argument("--version", action="version", version=version_text())
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="check candidates against the float64 oracle and the bf16 reference",
                         description="Run cases against candidates and print a verdict table. Exit 1 if any check fails, 2 on bad input.")
    run.add_argument("--candidate", action="append", metavar="NAME|MODULE:ATTR",
                     help=f"candidate to check; repeatable. Built-ins: {', '.join(BUILTIN)} (default: all built-ins); "
                          "or an import path such as mypkg.attn:MyBlock")
    run.add_argument("--case-file", action="append", metavar="PATH",
                     help="JSON file with one case or a list of cases (default: the built-in sweep); repeatable")
    run.add_argument("--checkpoint", metavar="DIR",
                     help="take each case's weights from layer case.layer of this safetensors checkpoint "
                          "(original or HF format) instead of seeded weights")
    run.add_argument("--quick", action="store_true", help="a shorter built-in sweep without full-dims cases")
    run.add_argument("--long", action="store_true",
                     help="add the long tier to the built-in sweep: position 131,071 at full dims on both layer kinds "
                          "(minutes on 2 cores; the default checks it at small dims)")
    run.add_argument("--json", metavar="PATH", help="also write the verdicts as JSON")
    run.add_argument("--report", metavar="DIR", help="also write an HTML report with pictures of every failure")
    run.add_argument("--no-probes", action="store_true", help="skip the tolerance-free probes (faster)")
    run.add_argument("--history", metavar="PATH",
                     help="append every check to this SQLite history (default $PARITY_HISTORY; see `parity history`)")
    _expected_options(run)
    _neuron_option(run)
    _bound_options(run)
    _run_options(run)
    run.set_defaults(func=cmd_run)

    replay = sub.add_parser("replay", help="rerun a saved failure with every stage tap and print the diagnosis",
                            description="Rerun the case saved in FILE (written by a failing `parity run` or "
                                        "`pytest -m parity`) against its candidate, and print every stage's errors.")
    replay.add_argument("file", metavar="FILE", help="repro file, e.g. .parity/failures/<case>--<candidate>.json")
    replay.add_argument("--candidate", action="append", metavar="NAME|MODULE:ATTR",
                        help="replay against these candidates instead of the saved one (repeatable)")
    replay.add_argument("--trust-candidate", action="store_true",
                        help="import the saved candidate even when it is not one of the harness's own (a "
                             "MODULE:ATTR in the file is code: without this, or --candidate naming it, it is "
                             "not imported)")
    _bound_options(replay)
    _expected_options(replay)
    _neuron_option(replay)
    _run_options(replay)
    replay.set_defaults(func=cmd_replay)

    report = sub.add_parser("report", help="render the HTML report of saved results",
                            description="Render DIR/index.html (offline, with pictures) from a `parity run --json` file.")
    report.add_argument("results", metavar="RESULTS_JSON", help="file written by `parity run --json`")
    report.add_argument("--out", metavar="DIR", default="parity-report", help="output folder (default: parity-report)")
    report.add_argument("--history", metavar="PATH",
                        help="a history (default $PARITY_HISTORY): failing and drifting checks get a picture of their "
                             "ratio across its runs")
    report.set_defaults(func=cmd_report)

    summary = sub.add_parser("summary", help="write the markdown job summary of saved results",
                             description="Write a markdown summary (a table of every check, failures first, with "
                                         "the failure messages) of a `parity run --json`, `pytest --parity-json` or "
                                         "`parity selftest --json` file. Appended to --out, else to "
                                         "$GITHUB_STEP_SUMMARY when set (a GitHub job summary), else printed. Exit 0; "
                                         "2 on an unreadable file (the verdicts' exit status is the run's).")
    summary.add_argument("results", metavar="RESULTS_JSON", help="file written by --json / --parity-json")
    summary.add_argument("--out", metavar="PATH", help="append the summary to this file")
    summary.add_argument("--require-complete", action="store_true",
                         help="exit 1 unless the file's completion record says every planned check ran "
                              "(a run that was killed, or ended by native code, never writes it)")
    summary.set_defaults(func=cmd_summary)

    doctor = sub.add_parser("doctor", help="print what the harness sees here; check a machine can run a gate",
                            description="Print Python, torch, transformers, the Neuron SDK's packages, Neuron devices, "
                                        "the Neuron mode a candidate would run in, the compile caches, the golden "
                                        "stores and their state. With --require, exit 1 naming what is missing and "
                                        "the fix when this machine cannot run it.")
    doctor.add_argument("--require", action="append", choices=("neuron", "device", "goldens"),
                        help="neuron: the Neuron SDK imports (device or CPU mode); device: a Neuron device in device "
                             "mode; goldens: every committed golden present, fresh and intact (repeatable)")
    doctor.set_defaults(func=cmd_doctor)

    add_history_parser(sub)

    selftest = sub.add_parser("selftest", help="prove the harness catches every known bug class and passes benign variants",
                              description="Run every mutant (one real bug class each) and benign variant (correct, other "
                                          "numerics) through the case generators and comparisons. Exit 1 if a mutant "
                                          "survives or a benign variant is flagged.")
    selftest.add_argument("--mutant", action="append", metavar="NAME", help="only these mutants (repeatable; see --list)")
    selftest.add_argument("--benign", action="append", metavar="NAME", help="only these benign variants (repeatable)")
    selftest.add_argument("--max-examples", type=int, default=100, metavar="N",
                          help="examples a mutant may survive before it counts as surviving (default 100)")
    selftest.add_argument("--benign-examples", type=int, default=100, metavar="N",
                          help="generated cases each benign variant is run on (default 100)")
    selftest.add_argument("--without", action="append", metavar="ABLATION",
                          help="remove one ingredient of the generators (see --list) to see which mutants then survive")
    selftest.add_argument("--seeds", type=int, default=1, metavar="N",
                          help="count examples to kill on N draws: the derandomised one, then hypothesis seeds "
                               "1..N-1 (default 1); every plan bug must die within 10 examples on each")
    selftest.add_argument("--json", metavar="PATH", help="also write the matrix as JSON")
    selftest.add_argument("--list", action="store_true", help="list mutants, benign variants and ablations")
    selftest.set_defaults(func=cmd_selftest)

    bench = sub.add_parser("bench", help="measure the harness's overhead, memory and speed on this machine",
                           description="Measure, in one run: the harness's overhead (a parity run's wall time over "
                                       "its forward passes), peak memory of the references and the oracle up to "
                                       "131,072 tokens, one 131,071 row per layer parity end to end, examples per "
                                       "second of the default hypothesis profile, and how costs grow with length. "
                                       "Full dims take about five minutes.")
    bench.add_argument("--quick", action="store_true", help="small dims and lengths up to 16k (seconds; for tests)")
    bench.add_argument("--json", metavar="PATH", help="also write every figure as JSON")
    bench.set_defaults(func=cmd_bench)

    add_goldens_parser(sub)
    return parser


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        own = version("gpt-oss-parity")
    except PackageNotFoundError:
        own = "unknown (not installed: run it from a `pip install`ed package)"
    return f"parity (gpt-oss-parity) {own}"


def main(argv: list[str] | None = None) -> int:
    stdout_handlers_to_stderr()  # any that importing the harness's libraries made: stdout is for our output
    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)  # the command line, for reports
    limit = getattr(args, "time_limit", None)
    if limit is not None:
        if not (limit >= 0 and math.isfinite(limit)):
            print(f"parity: --time-limit must be a number of seconds >= 0 (0: no limit), got {limit}", file=sys.stderr)
            return 2
        os.environ["PARITY_TIME_LIMIT"] = str(limit)  # read by harness/timelimit.py, in this process and children
    try:
        return args.func(args)
    except UsageError as exc:
        print(f"parity: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
