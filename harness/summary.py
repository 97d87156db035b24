"""`parity summary RESULTS_JSON`: the markdown a CI job summary shows ($GITHUB_STEP_SUMMARY).

Reads the results of `parity run --json` or `pytest --parity-json` (one record per check), or the
matrix of `parity selftest --json`. For checks: one row each, failures first, with the case, the
candidate, the verdict, the worst ratio, the first divergent stage, and what the candidate reported
of its run (Neuron: mode, buckets, compiles), then each failure's message folded under its title.
"""

from __future__ import annotations

import os
from pathlib import Path

from harness.jsonfile import read_json

MAX_MESSAGES = 20  # failures whose whole message is shown; a job summary holds 1 MiB at most
MAX_MESSAGE_CHARS = 4000
ICON = {"pass": "✅", "unsupported": "⚪"}


def _cell(value) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def _ratio(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def bucket_text(info: dict) -> str:
    buckets = info.get("buckets") or {}
    return ", ".join(f"{phase} {size}" for phase, size in buckets.items()) or "-"


def compiles_text(info: dict) -> str:
    if "builds" not in info:
        return "-"
    return f"{info['builds']} ({info.get('build_seconds', 0):.0f} s)"


def checks_markdown(data: dict, source: str) -> str:
    records = data.get("cases")
    if not isinstance(records, list):
        raise ValueError(f"results file {source}: expected {{\"cases\": [...]}} as written by `parity run --json` or "
                         "`pytest --parity-json`, or a `parity selftest --json` matrix")
    bad = [r for r in records if r.get("verdict") not in ("pass", "unsupported")]
    unsupported = [r for r in records if r.get("verdict") == "unsupported"]
    summary = data.get("summary") or {}
    title = f"{len(records) - len(bad) - len(unsupported)} checks passed, {len(bad)} failed"
    if unsupported:
        title += f", {len(unsupported)} unsupported"
    incomplete = summary.get("complete") is False
    lines = [f"## {'❌' if bad or incomplete else '✅'} gpt-oss attention parity: {title}", ""]
    if incomplete:
        lines += [f"**INCOMPLETE: the run ended before every planned check had a verdict** "
                  f"({summary.get('checks', len(records))} of {summary.get('planned', '?')} planned); "
                  "green here proves nothing about the rest.", ""]
    outcomes = summary.get("pytest")
    if outcomes:
        lines += ["pytest: " + ", ".join(f"{n} {k}" for k, n in outcomes.items() if n), ""]
        if outcomes.get("skipped"):
            lines += [f"**{outcomes['skipped']} test(s) skipped**: a skipped parity test checked nothing "
                      "(the pytest log says why).", ""]
    if not records:
        lines += ["No parity check ran.", ""]
        return "\n".join(lines) + "\n"
    lines += ["| case | candidate | verdict | worst ratio | first divergent stage | mode | bucket | compiles |",
              "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in sorted(records, key=lambda r: r.get("verdict") == "pass"):
        info = r.get("info") or {}
        verdict = r.get("verdict", "?")
        stage = r.get("first_divergent_stage") if verdict != "pass" else None
        lines.append("| " + " | ".join(_cell(c) for c in (
            r.get("id"), r.get("candidate"), f"{ICON.get(verdict, '❌')} {verdict}", _ratio(r.get("worst_ratio")),
            stage or "-", info.get("mode", "-") + (f", tp {info['tp_degree']}" if info.get("tp_degree", 1) > 1 else ""),
            bucket_text(info), compiles_text(info))) + " |")
    for r in bad[:MAX_MESSAGES]:
        message = (r.get("message") or "")[:MAX_MESSAGE_CHARS]
        lines += ["", f"<details><summary>{_cell(r.get('verdict', '?')).upper()}: {_cell(r.get('id'))} / "
                      f"{_cell(r.get('candidate'))}</summary>", "", "```", message, "```", "</details>"]
    if len(bad) > MAX_MESSAGES:
        lines += ["", f"... and {len(bad) - MAX_MESSAGES} more failures (the report and the JSON hold every one)"]
    return "\n".join(lines) + "\n"


def selftest_markdown(data: dict) -> str:
    s = data.get("summary") or {}
    ok = s.get("ok")
    lines = [f"## {'✅' if ok else '❌'} parity self-test: {s.get('killed')} of {s.get('mutants')} mutants killed, "
             f"{s.get('false_alarms')} false alarms in {s.get('benign_examples')} benign examples", "",
             "| mutant | killed | examples to kill | first divergent stage |", "| --- | --- | --- | --- |"]
    for m in data.get("mutants") or []:
        lines.append("| " + " | ".join(_cell(c) for c in (
            m.get("name"), "yes" if m.get("killed") else "**NO**", m.get("examples_to_kill") or "-",
            m.get("first_divergent_stage") or "-")) + " |")
    if data.get("benign"):
        lines += ["", "| benign variant | examples | false alarms | worst ratio |", "| --- | --- | --- | --- |"]
        for b in data["benign"]:
            lines.append("| " + " | ".join(_cell(c) for c in (
                b.get("name"), b.get("examples"), b.get("false_alarms"), _ratio(b.get("worst_ratio")))) + " |")
    return "\n".join(lines) + "\n"


def markdown(path: str | Path) -> str:
    """The summary of a results or self-test file; ValueError naming the file when it is neither."""
    data = read_json(path, "results file")
    if isinstance(data, dict) and isinstance(data.get("mutants"), list):
        return selftest_markdown(data)
    if not isinstance(data, dict):
        raise ValueError(f"results file {path}: expected a JSON object written by `parity run --json`, "
                         "`pytest --parity-json` or `parity selftest --json`")
    return checks_markdown(data, str(path))


def destination(out: str | None) -> Path | None:
    """Where the summary goes: --out, else $GITHUB_STEP_SUMMARY (appended, as GitHub expects), else stdout."""
    value = out or os.environ.get("GITHUB_STEP_SUMMARY")
    return Path(value) if value else None


def incomplete(path: str | Path) -> str | None:
    """Why the results in `path` do not prove every planned check ran (None when they do): the
    completion record a run writes last (`summary.complete`), which a run that ended early (killed,
    or a process ended by native code) never sets. A file without one is not trusted either."""
    data = read_json(path, "results file")
    if isinstance(data, dict) and isinstance(data.get("mutants"), list):
        return None if (data.get("summary") or {}).get("ok") is not None else "a self-test matrix without its summary"
    summary = data.get("summary") if isinstance(data, dict) else None
    complete = summary.get("complete") if isinstance(summary, dict) else None
    if complete is True:
        return None
    if complete is False:
        return (f"the run ended before every planned check had a verdict ({summary.get('checks')} of "
                f"{summary.get('planned', 'the planned')} checks recorded)")
    return "the file holds no completion record (summary.complete); it was not written by a run that finished"
