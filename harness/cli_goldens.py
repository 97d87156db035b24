"""`parity goldens regenerate | verify | list` (see README "Goldens")."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from harness import case as case_module
from harness import cpu
from harness.case import Case, curated_cases
from harness.console import Progress, UsageError, row
from harness.expected import compute_expected
from harness.golden_format import case_of_file, diff_tensors, to_tensors
from harness.goldens import GoldenError, GoldenStore, cache_dir, committed_dir


def target_store(args) -> GoldenStore:
    if args.cache and args.dir:
        raise UsageError("--cache and --dir both name the store; give one of them")
    try:
        if args.cache:
            return GoldenStore.cache()
        if args.dir and Path(args.dir).resolve() != committed_dir().resolve():
            return GoldenStore(args.dir)
        return GoldenStore.committed()
    except GoldenError as exc:
        raise UsageError(str(exc)) from None


def _entries(store: GoldenStore) -> dict[str, dict]:
    try:
        return store.entries()
    except GoldenError as exc:
        raise UsageError(str(exc)) from None


def _stored_cases(store: GoldenStore) -> list[Case]:
    """The cases of the store's entries, those of hand-edited entries too where the store still says what
    they were (so that `regenerate --case ID` repairs them); verify and list report the others."""
    found = (store.filed_case(cid, entry) for cid, entry in _entries(store).items())
    return [c for c in found if c is not None]


def select_cases(args, store: GoldenStore, default: list[Case]) -> list[Case]:
    """--case-file cases, else `default`; narrowed by each --case ID (an id or the start of one) over
    those, the curated cases and the store's own."""
    if args.case_file:
        try:
            pool = [c for f in args.case_file for c in case_module.load_case_file(f)]
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    else:
        pool = default
    if not args.case:
        return list(dict.fromkeys(pool))
    from harness.sweep import default_cases

    # the built-in sweep too: `parity run --no-reference` names its cases by id in its advice
    known = list(dict.fromkeys(pool if args.case_file else [*pool, *curated_cases(), *_stored_cases(store),
                                                            *default_cases(long=True)]))
    chosen = []
    for wanted in args.case:
        matches = [c for c in known if c.id == wanted] or [c for c in known if c.id.startswith(wanted)]
        if not matches:
            ids = ", ".join(c.id for c in known[:12]) + (" ..." if len(known) > 12 else "")
            raise UsageError(f"--case {wanted}: no known case has that id or id prefix; known cases: {ids or 'none'} "
                             "(`parity goldens list` shows them; --case-file adds others)")
        chosen += matches
    return list(dict.fromkeys(chosen))


def recovered_cases(folder: Path) -> list[Case]:
    """The cases of the tensor files in `folder` (a store moved aside by --rebuild), read from their headers."""
    found = []
    for f in sorted(folder.glob("*.safetensors")):
        try:
            found.append(Case.from_dict(case_of_file(f)))
        except (ValueError, TypeError):
            print(f"{f}: no readable case in its header; not rebuilt (kept where it is)")
    return list(dict.fromkeys(found))


def cmd_regenerate(args) -> int:
    store = target_store(args)
    try:
        store.check_writable()  # before anything is computed
    except GoldenError as exc:
        raise UsageError(str(exc)) from None
    if args.rebuild:
        try:
            aside = store.move_aside() if store.root.is_dir() else None
        except OSError as exc:
            raise UsageError(f"cannot move the files of {store.label} aside for --rebuild: {exc}") from None
        if aside:
            print(f"moved the old manifest and tensor files of {store.label} to {aside} (nothing deleted)")
        default = curated_cases() if store.is_committed else recovered_cases(aside) if aside else []
    else:
        _entries(store)  # an unreadable manifest stops here, with the fix (--rebuild), before anything is computed
        default = curated_cases() if store.is_committed else _stored_cases(store)
    cases = select_cases(args, store, default)
    if not cases:
        raise UsageError(f"nothing to regenerate in {store.label}: it holds no goldens yet; "
                         "name cases with --case-file")
    print(f"regenerating {len(cases)} golden(s) in {store.label}")
    progress = Progress(len(cases))
    failed = 0
    started = time.monotonic()
    counts: dict[str, int] = {}
    try:
        for i, case in enumerate(cases, 1):
            progress.show(i, f"computing {case.id}")
            try:
                change = store.write(case, compute_expected(case), force=args.force)
            except (GoldenError, OSError) as exc:  # over budget, unreadable manifest, unwritable folder
                progress.clear()
                print(f"{case.id}: NOT WRITTEN: {exc}")
                failed += 1
                continue
            progress.clear()
            counts[change.status] = counts.get(change.status, 0) + 1
            print(f"{case.id}: {change.describe()}", flush=True)
    except KeyboardInterrupt:
        progress.clear()
        print("\ninterrupted: every golden is either the one just written or the one it replaced")
        return 130
    if args.prune:
        keep = {c.id for c in cases}
        gone = [cid for cid in _entries(store) if cid not in keep]
        if gone:
            store.remove(gone)
            print(f"pruned {len(gone)} golden(s) of cases not selected: {', '.join(gone)}")
    summary = ", ".join(f"{n} {status}" for status, n in sorted(counts.items())) or "nothing written"
    budget = f" of its {store.budget / 2**20:.0f} MiB budget" if store.budget else ""
    print(f"\n{summary}{f', {failed} not written' if failed else ''}; {store.label} holds "
          f"{store.size() / 2**20:.1f} MiB{budget} ({time.monotonic() - started:.1f} s)")
    return 1 if failed else 0


def verify_one(store: GoldenStore, case: Case) -> tuple[bool, str]:
    """(ok, what to print) for one golden: integrity, freshness, then a recomputation compared
    tensor by tensor: the oracle within its storage precision, the reference within platform rounding
    (harness/rounding.py; bit-identity is reported where it holds)."""
    try:
        stored, _, _ = store.check(case)
    except GoldenError as exc:
        return False, str(exc)
    fresh, _ = to_tensors(compute_expected(case), teacher=case.stack_mode == "teacher")
    diffs = [d for d in diff_tensors(stored, fresh) if d.changed]
    drift = [d for d in diffs if not d.accepted]
    written = store.entries()[case.id].get("platform")
    here = cpu.describe()
    where = ""
    if cpu.kernels(written) != cpu.kernels(here):
        where = f"\n    written on {cpu.summary(written)}\n    verified on {cpu.summary(here)}"
    if not drift:
        rounded = [d for d in diffs if ".oracle." not in d.name]
        if not rounded:
            note = f" (the oracle within its storage precision in {len(diffs)} tensor(s))" if diffs else ""
            return True, "ok: bit-identical to the stored tensors" + note + where
        checks = [d.rounding for d in rounded if d.rounding]
        return True, (f"ok: within platform rounding: {len(rounded)} reference tensor(s) differ, by at most "
                      f"{max(d.elements for d in rounded)} elements, {max(c.max_ulps for c in checks):.3g} ulps of "
                      f"magnitude, and a change of the reference's RMS error of "
                      f"{max(abs(c.error_change) for c in checks):.2%}" + where)
    lines = [f"    {d.name}: {d.change}: {d.detail}" for d in drift]
    return False, (f"DRIFT in {len(drift)} tensor(s): the reference now computes something else, beyond platform "
                   f"rounding (torch {_stored_torch(store, case)} wrote it); if that is expected, run "
                   f"`{store.regenerate_command(case)}`" + where + "\n" + "\n".join(lines))


def _stored_torch(store: GoldenStore, case: Case) -> str:
    return store.entries()[case.id].get("versions", {}).get("torch", "?")


def stored_case(store: GoldenStore, case_id: str, entry) -> Case:
    """The case of the entry filed under `case_id`; GoldenError if the entry does not describe exactly
    that case (a hand edit that makes it alias another case, or an unreadable one), with a command that
    repairs the store."""
    try:
        case = Case.from_dict(entry.get("case") if isinstance(entry, dict) else entry)
    except (ValueError, TypeError) as exc:
        problem = f"its manifest entry holds no valid case ({exc})"
    else:
        if case.id == case_id:
            return case
        problem = (f"its manifest entry describes case {case.id}, not the case it is filed under (the entry was "
                   f"edited; regenerating {case.id} does not repair it)")
    raise GoldenError(f"{problem}; {store.repair_advice(case_id, entry)}")


def cmd_verify(args) -> int:
    store = target_store(args)
    entries = _entries(store)
    problems = corrupt = 0
    if args.case_file or args.case:
        cases = select_cases(args, store, [])
    else:
        cases = []
        for cid, entry in entries.items():
            try:
                cases.append(stored_case(store, cid, entry))
            except GoldenError as exc:
                print(f"{cid}: CORRUPT: {exc}")
                corrupt += 1
        if store.is_committed:
            cases += [c for c in curated_cases() if c.id not in entries]
    problems = corrupt
    if not cases and not problems:
        raise UsageError(f"nothing to verify: {store.label} holds no goldens (create them with "
                         f"`parity goldens regenerate`{' and --dir or --cache' if not store.is_committed else ''})")
    print(f"verifying {len(cases)} golden(s) in {store.label} against the reference, here on {cpu.summary(cpu.describe())}")
    progress = Progress(len(cases))
    started = time.monotonic()
    verified = 0
    for i, case in enumerate(cases, 1):
        progress.show(i, f"recomputing {case.id}")
        ok, message = verify_one(store, case)
        progress.clear()
        verified += ok
        problems += not ok
        print(f"{case.id}: {message}", flush=True)
    print(f"\n{verified} of {len(cases) + corrupt} golden(s) verified, {problems} problem(s) "
          f"({time.monotonic() - started:.1f} s)")
    return 1 if problems else 0


def list_store(store: GoldenStore) -> int:
    """Print one store's table; the number of unusable goldens."""
    entries = _entries(store)
    print(f"{store.label}: {len(entries)} golden(s), {store.size() / 2**20:.1f} MiB"
          + (f" of {store.budget / 2**20:.0f} MiB budget" if store.budget else ""))
    if not entries and not store.is_committed:
        return 0
    widths = (44, 6, 6, 20, 12, 22, 10)
    print(row(("case", "layers", "KiB", "created (UTC)", "torch", "kernels (ATen/oneDNN)", "threads  state"), widths))
    bad = 0
    curated = {c.id for c in curated_cases()}
    here = cpu.kernels(cpu.describe())
    for cid, entry in sorted(entries.items()):
        try:
            store.check(stored_case(store, cid, entry))
            state = "ok"
        except GoldenError as exc:
            state = type(exc).__name__.replace("Golden", "").lower() or "corrupt"
            state = "corrupt" if state == "error" else state
            bad += 1
        if store.is_committed and cid not in curated:
            state += " (not a curated case; --prune removes it)"
        p = entry.get("platform") if isinstance(entry, dict) else None
        kernels = f"{p.get('aten_capability', '?')}/{p.get('onednn_isa', '?')}" if p else "unrecorded"
        if p and cpu.kernels(p) != here:
            state += " (other kernels than here)"
        print(row((cid, entry.get("layers", "?"), f"{entry.get('bytes', 0) / 1024:.0f}",
                   str(entry.get("created", "?"))[:19], (entry.get("versions") or {}).get("torch", "?"), kernels,
                   f"{p.get('threads', '?') if p else '?':<9}{state}"), widths))
    if store.is_committed:
        for c in curated_cases():
            if c.id not in entries:
                print(row((c.id, "-", "-", "-", "-", "-", "-        missing"), widths))
                bad += 1
    strays = store.stray_files()
    if strays:
        print(f"{len(strays)} stray file(s) left by an interrupted write; the next regenerate removes them")
    print(f"here: {cpu.summary(cpu.describe())}")
    return bad


def cmd_list(args) -> int:
    if args.dir or args.cache:
        stores = [target_store(args)]
    else:
        stores = [GoldenStore.committed(), GoldenStore.cache()]
    bad = 0
    for i, store in enumerate(stores):
        if i:
            print()
        bad += list_store(store)
    if bad:
        print(f"\n{bad} golden(s) missing, stale or corrupt: `parity goldens verify` says why")
    return 0


def add_parser(sub) -> None:
    goldens = sub.add_parser(
        "goldens", help="regenerate, verify or list the golden-tensor store",
        description="Goldens are the oracle's and the reference's tensors for a case, stored so that a run can "
                    f"judge candidates without computing them. The committed store is {committed_dir()} (the curated "
                    f"cases; $PARITY_GOLDEN_DIR); the local cache is {cache_dir()} ($PARITY_GOLDEN_CACHE).")
    gsub = goldens.add_subparsers(dest="goldens_command", required=True)

    def store_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--dir", metavar="DIR", help="the store to use (default: the committed store cases/goldens)")
        p.add_argument("--cache", action="store_true", help="use the local cache instead ($PARITY_GOLDEN_CACHE)")
        p.add_argument("--case", action="append", metavar="ID",
                       help="only the case with this id, or whose id starts with it (repeatable)")
        p.add_argument("--case-file", action="append", metavar="PATH", help="cases from this JSON file (repeatable)")

    regen = gsub.add_parser("regenerate", help="compute goldens from the reference and store them",
                            description="Compute each selected case's oracle and reference tensors and store them; "
                                        "prints what changed and by how much. Default selection: every curated case "
                                        "(cases/*.json) for the committed store, every stored golden for another store. "
                                        "Exit 1 if a golden could not be written (e.g. over the size budget).")
    store_options(regen)
    regen.add_argument("--prune", action="store_true", help="also remove goldens of cases not selected")
    regen.add_argument("--force", action="store_true",
                       help="rewrite goldens whose recomputation differs from them by platform rounding only (by default "
                            "they are kept, so that regenerating on another CPU changes nothing)")
    regen.add_argument("--rebuild", action="store_true",
                       help="start the store afresh: move its manifest and tensor files into replaced-<time>/ (nothing is "
                            "deleted) and write every golden anew (the curated cases for the committed store, the cases "
                            "of the moved files for another); the fix for a damaged manifest or one of another format "
                            "version")
    regen.set_defaults(func=cmd_regenerate)

    verify = gsub.add_parser("verify", help="recompute goldens and compare with what is stored",
                             description="Check every golden's integrity and fingerprint, recompute it from the "
                                         "reference and compare tensor by tensor (the reference bit for bit, the oracle "
                                         "within its storage precision). Exit 1 on any drift, stale, corrupt or missing "
                                         "golden, with a per-golden report.")
    store_options(verify)
    verify.set_defaults(func=cmd_verify)

    lister = gsub.add_parser("list", help="list stored goldens and their state",
                             description="List the committed store and the local cache (or the one store named): "
                                         "size, creation time, torch version and state of every golden, and curated "
                                         "cases that have none.")
    lister.add_argument("--dir", metavar="DIR", help="only this store")
    lister.add_argument("--cache", action="store_true", help="only the local cache")
    lister.set_defaults(func=cmd_list)
