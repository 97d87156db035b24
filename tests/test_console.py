"""Progress estimates come from the work left, not the steps left (issue 19: a 131,072-token full-dims
row after 22 small cases showed "about 34 s left" for 13 minutes)."""

import io
import json

import pytest

from harness import cli, console
from harness.case import Case
from harness.compare import Verdict
from harness.console import Progress
from harness.work import case_work

BIG = Case(preset="full", layer=1, lengths=(131072,), plan="from_cache", decode_steps=1)
SMALL = Case(layer=0, lengths=(130,))


class FakeClock:
    """Stands in for the time module in harness.console: time moves only when a test says so."""

    def __init__(self):
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    monkeypatch.setenv("CI", "true")  # one line per step, with its estimate
    fake = FakeClock()
    monkeypatch.setattr(console, "time", fake)
    return fake


def _steps(progress: Progress, seconds: list[float], stream: io.StringIO) -> list[str]:
    """Show each step, letting it take its seconds; the lines printed."""
    for i, s in enumerate(seconds, 1):
        progress.show(i, f"step {i}")
        console.time.now += s
    return stream.getvalue().splitlines()


def test_estimate_before_a_costly_step_reflects_its_cost(clock):
    stream = io.StringIO()
    lines = _steps(Progress(3, stream, weights=[1, 1, 100]), [1, 1, 100], stream)
    # two steps of one unit took 2 s: the 100 units left take 100 s (the average step said 1 s)
    assert lines[2] == "[3/3] step 3 (2 s elapsed, about 2 min left)", lines


def test_no_estimate_before_any_work_is_done(clock):
    stream = io.StringIO()
    lines = _steps(Progress(3, stream, weights=[0, 5, 5]), [1, 1, 1], stream)
    assert "left" not in lines[0] and "left" not in lines[1], lines  # step 1 weighed nothing
    assert lines[2].endswith("about 2 s left)"), lines  # the phase took 2 s for the 5 units done


def test_no_estimate_from_uneven_steps_without_weights(clock):
    stream = io.StringIO()
    lines = _steps(Progress(4, stream), [1, 1, 60, 1], stream)
    assert lines[2].endswith("about 2 s left)"), lines  # even so far: the average step
    assert lines[3] == "[4/4] step 4 (62 s elapsed)", lines  # 1 s and 60 s steps: their average means nothing


def test_weights_must_match_the_steps():
    with pytest.raises(ValueError, match="2 step weights for 3 steps"):
        Progress(3, io.StringIO(), weights=[1, 2])


def test_a_long_full_dims_row_is_far_more_work_than_a_small_prefill():
    assert case_work(BIG, 5) > 100 * case_work(SMALL, 5)
    # a sliding layer's long row from a cache computes only the last 2W keys, but its taps span them all
    sliding = Case(preset="full", layer=0, lengths=(131072,), plan="from_cache", decode_steps=1)
    assert case_work(SMALL, 5) < case_work(sliding, 5) < case_work(BIG, 5)
    assert case_work(SMALL, 5) > case_work(SMALL, 1)
    assert case_work(Case(layer=0, lengths=(16,), depth=2)) > case_work(Case(layer=0, lengths=(16,)))


def test_run_estimates_a_long_row_after_small_ones_from_its_work(clock, tmp_path, monkeypatch, capsys):
    """`parity run` over small cases then the 131,072-token full-dims row: the line that starts the long
    row promises minutes, not the seconds that the small cases took each."""
    monkeypatch.delenv("PARITY_HISTORY", raising=False)

    def run_case(case, candidates, *args, **kwargs):
        clock.now += 0.5  # each small case takes half a second (the long one's time is never seen)
        return [Verdict(case.id, c.name, "pass", 1.0) for c in candidates]

    monkeypatch.setattr(cli, "run_case", run_case)
    cases = tmp_path / "cases.json"
    cases.write_text(json.dumps([SMALL.to_dict(), Case(layer=1, lengths=(130,)).to_dict(), BIG.to_dict()]))
    assert cli.main(["run", "--candidate", "reference", "--case-file", str(cases), "--no-probes"]) == 0
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith(f"[3/3] {BIG.id} (1 s elapsed, about ") and last.endswith(" min left)"), last
    minutes = float(last.split("about ")[1].split(" min")[0])
    assert minutes >= 2, last  # the average case so far would have said "about 0 s left"
