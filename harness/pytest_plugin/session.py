"""The session's outputs: the HTML report, the JSON results, the history rows and the terminal lines.

Under pytest-xdist each worker checks its share of the tests in its own process; a worker sends its
records (and what --regen-goldens changed) to the controller when it finishes (xdist's workeroutput),
and only the controller writes the report, the JSON results and the history, once, with every
record. Golden stores and repro files are safe to share between workers on their own (locked and
atomic writes, harness/goldens.py and harness/jsonfile.py).
"""

from __future__ import annotations

import json
import sys

import pytest

from harness.pytest_plugin.checker import ParityChecker

CHECKER = pytest.StashKey[ParityChecker]()
OUTPUT_KEY = "gpt_oss_parity"  # in xdist's workeroutput


def checker(config: pytest.Config) -> ParityChecker:
    if CHECKER not in config.stash:
        config.stash[CHECKER] = ParityChecker(config)
    return config.stash[CHECKER]


def is_worker(config: pytest.Config) -> bool:
    return hasattr(config, "workerinput")


@pytest.fixture(scope="session")
def parity(pytestconfig) -> ParityChecker:
    """Checks cases against candidates with this session's options: `parity.check(case, candidate_name)`
    (see harness/pytest_plugin/checker.py)."""
    return checker(pytestconfig)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_call(item):
    if CHECKER in item.config.stash:
        item.config.stash[CHECKER].records.current = item.nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
    """pytest-xdist, on the controller: a worker finished; keep what it checked."""
    sent = getattr(node, "workeroutput", {}).get(OUTPUT_KEY)
    if sent:
        data = json.loads(sent)
        own = checker(node.config)
        own.records.extend(data["records"])
        own.golden_changes.update(data["golden_changes"])


def _outcomes(config) -> dict[str, int]:
    """pytest's counts (a skipped or deselected check has no record, and a gate must see them)."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    stats = getattr(reporter, "stats", {}) if reporter else {}
    return {k: len(stats.get(k, [])) for k in ("passed", "failed", "skipped", "error", "deselected", "xfailed")}


def pytest_sessionfinish(session, exitstatus):
    config = session.config
    if CHECKER not in config.stash:
        return
    own = config.stash[CHECKER]
    if is_worker(config):
        config.workeroutput[OUTPUT_KEY] = json.dumps({"records": list(own.records),
                                                      "golden_changes": own.golden_changes})
        return
    config.stash[SUMMARY_LINES] = write_outputs(session, config, exitstatus)


def when_stuck(config: pytest.Config):
    """What the time limit's watchdog does before it ends a run whose candidate is stuck in native code
    (harness/timelimit.py): pytest's capture swallowed its message and the hard exit left no JUnit XML
    or JSON. So: the message on the real stderr, then the JUnit XML and the plugin's outputs of what
    ran (the JSON marked incomplete)."""
    def callback(message: str) -> None:
        capture = config.pluginmanager.getplugin("capturemanager")
        if capture is not None:
            capture.suspend_global_capture(in_=False)  # back to the real stdout and stderr
        print(message, file=sys.stderr, flush=True)
        if is_worker(config):
            return  # pytest-xdist's controller reports the crashed worker and writes the outputs
        from _pytest.junitxml import xml_key

        junit = config.stash.get(xml_key, None)
        if junit is not None:
            junit.pytest_sessionfinish()
        for line in write_outputs(None, config, pytest.ExitCode.INTERRUPTED):
            print(line, file=sys.stderr, flush=True)
    return callback


def write_outputs(session, config: pytest.Config, exitstatus) -> list[str]:
    """The history rows, JSON results and report of every record so far; the lines that say so."""
    own = config.stash[CHECKER]
    records = list(own.records)
    lines = []
    run_id = None
    history = config.getoption("--parity-history")
    if history and records and exitstatus != pytest.ExitCode.INTERRUPTED:  # a partial run reads as vanished checks
        from harness.history import History, HistoryError, current_commit

        try:
            run_id = History(history).append(records, "pytest", commit=current_commit(config.rootpath))
            lines.append(f"parity history: {len(records)} check(s) appended to {history} as run {run_id}")
        except (HistoryError, OSError) as exc:  # checked at start-up, so a full disk or the like
            lines.append(f"parity history NOT written: {exc}")
            if exitstatus == 0 and session is not None:
                session.exitstatus = pytest.ExitCode.INTERNAL_ERROR
    path = config.getoption("--parity-json")
    if path:
        from harness.jsonfile import write_json

        outcomes = _outcomes(config)
        failed = sum(1 for r in records if r["verdict"] not in ("pass", "unsupported"))
        from harness.environment import run_environment

        # interrupted (Ctrl-C, SIGTERM): what ran is written, and said to be incomplete
        complete = exitstatus not in (pytest.ExitCode.INTERRUPTED, pytest.ExitCode.INTERNAL_ERROR)
        write_json(path, {"cases": records, "summary": {"checks": len(records), "failed": failed, "pytest": outcomes,
                                                         "history_run": run_id, "complete": complete},
                          "environment": run_environment()})
        lines.append(f"parity results: {path}")
    directory = config.getoption("--parity-report")
    if directory:
        from harness.environment import run_environment
        from harness.report import write_report

        index = write_report(records, directory, run_environment(), history=history, run=run_id)
        lines.append(f"parity report: {index}")
    return lines


SUMMARY_LINES = pytest.StashKey[list]()


def pytest_terminal_summary(terminalreporter, config):
    changes = config.stash[CHECKER].golden_changes if CHECKER in config.stash else {}
    if changes:
        terminalreporter.section("goldens regenerated")
        for case_id, change in changes.items():
            terminalreporter.write_line(f"{case_id}: {change}")
    for line in config.stash.get(SUMMARY_LINES, []):
        terminalreporter.write_line(line)
