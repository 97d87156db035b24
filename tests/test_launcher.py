"""The rank launcher (harness/neuron/launcher.py): gloo across real rank processes, reused between calls,
tensors through shared memory, and every way a rank can go wrong (raises, hangs, is killed, fails its
setup, loses its parent) raised with the rank named and no process left behind."""

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from harness.neuron.launcher import LaunchError, RankFailed, RankGroup, RankTimeout

ROOT = Path(__file__).resolve().parent.parent


# --- functions the ranks run, named by path "tests.test_launcher:NAME" ---

def identity(rank, world):
    return rank, world, os.getpid()


def all_reduce_sum(rank, world, value):
    t = torch.tensor([float(value) * (rank + 1)])
    dist.all_reduce(t)
    return t.item()


def describe_tensor(rank, world, t):
    return t.clone(), t.is_shared()


def raise_on_rank_1(rank, world):
    if rank == 1:
        raise ValueError(f"broken shard on rank {rank}")
    return rank


def sleep_on_rank_1(rank, world, seconds):
    if rank == 1:
        time.sleep(seconds)
    return rank


def rank_1_sleeps_others_reduce(rank, world):
    if rank == 1:
        time.sleep(60)
    t = torch.ones(1)
    dist.all_reduce(t)
    return t.item()


def failing_setup(rank, world):
    raise RuntimeError(f"initialize_model_parallel refused on rank {rank}")


def hanging_setup(rank, world):
    time.sleep(60)


# --- helpers ---

def alive(pid: int) -> bool:
    """A running process (a zombie nobody reaped counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def assert_all_gone(pids, within: float = 0.0):
    end = time.monotonic() + within
    while any(alive(pid) for pid in pids) and time.monotonic() < end:
        time.sleep(0.1)
    assert not [pid for pid in pids if alive(pid)], "rank processes left behind"


@pytest.fixture(scope="module")
def pair():
    with RankGroup(2) as group:
        yield group


def test_two_ranks_answer_reduce_and_are_reused(pair):
    first = pair.run("tests.test_launcher:identity", time_limit=30)
    assert [(r, w) for r, w, _ in first] == [(0, 2), (1, 2)]
    assert [pid for _, _, pid in first] == pair.pids
    assert pair.run("tests.test_launcher:all_reduce_sum", 2.5, time_limit=30) == [7.5, 7.5]  # 2.5*1 + 2.5*2
    again = pair.run("tests.test_launcher:identity", time_limit=30)
    assert [pid for _, _, pid in again] == pair.pids  # the same processes: imports once per rank


def test_tensor_argument_arrives_identical_through_shared_memory(pair):
    weights = torch.randn(64, 32, dtype=torch.bfloat16)
    for received, shared in pair.run("tests.test_launcher:describe_tensor", weights, time_limit=30):
        assert shared
        assert received.dtype == weights.dtype and torch.equal(received, weights)


def test_four_ranks_then_close_twice_and_use_after_close():
    group = RankGroup(4)
    pids = group.pids
    try:
        assert [r[:2] for r in group.run("tests.test_launcher:identity", time_limit=60)] == [(r, 4) for r in range(4)]
        assert group.run("tests.test_launcher:all_reduce_sum", 1, time_limit=60) == [10.0] * 4
    finally:
        group.close()
    group.close()
    assert_all_gone(pids)
    with pytest.raises(LaunchError, match="was closed.*make a new RankGroup"):
        group.run("tests.test_launcher:identity", time_limit=10)


def test_a_rank_that_raises_is_named_with_its_traceback():
    group = RankGroup(2)
    pids = group.pids
    with pytest.raises(RankFailed) as caught:
        group.run("tests.test_launcher:raise_on_rank_1", time_limit=30)
    message = str(caught.value)
    assert "rank 1:" in message and "ValueError: broken shard on rank 1" in message
    assert "rank 0:" not in message
    assert list(caught.value.failures) == [1] and "Traceback" in caught.value.failures[1]
    assert_all_gone(pids)
    with pytest.raises(LaunchError, match="failed"):
        group.run("tests.test_launcher:identity", time_limit=10)


def test_a_hung_rank_times_out_naming_it():
    group = RankGroup(2)
    pids = group.pids
    start = time.monotonic()
    with pytest.raises(RankTimeout) as caught:
        group.run("tests.test_launcher:sleep_on_rank_1", 60, time_limit=2)
    assert time.monotonic() - start < 2 + 5
    assert caught.value.ranks == [1]
    assert "rank(s) [1] did not answer within 2 s" in str(caught.value) and "--time-limit" in str(caught.value)
    assert_all_gone(pids)


def test_a_rank_killed_from_outside_is_named_with_its_signal():
    group = RankGroup(2)
    pids = group.pids
    killer = threading.Timer(1.0, os.kill, (pids[1], signal.SIGKILL))
    killer.start()
    try:
        with pytest.raises(RankFailed) as caught:
            group.run("tests.test_launcher:rank_1_sleeps_others_reduce", time_limit=30)
    finally:
        killer.cancel()
    assert 1 in caught.value.failures
    assert f"rank 1:\n    died without answering (pid {pids[1]}): killed by SIGKILL" in str(caught.value)
    assert_all_gone(pids)


def test_a_failing_setup_is_a_start_up_failure_with_its_traceback():
    with pytest.raises(RankFailed) as caught:
        RankGroup(2, setup="tests.test_launcher:failing_setup", start_timeout=60)
    message = str(caught.value)
    assert message.startswith("starting 2 rank(s)") and "setup tests.test_launcher:failing_setup" in message
    assert sorted(caught.value.failures) == [0, 1]
    assert "RuntimeError: initialize_model_parallel refused on rank 1" in caught.value.failures[1]


def test_a_hanging_start_up_times_out():
    start = time.monotonic()
    with pytest.raises(RankTimeout, match=r"rank\(s\) \[0, 1\] did not answer within 8 s.*start_timeout") as caught:
        RankGroup(2, setup="tests.test_launcher:hanging_setup", start_timeout=8)
    assert time.monotonic() - start < 8 + 5
    assert caught.value.ranks == [0, 1]


PARENT = """
import os, sys
from harness.neuron.launcher import RankGroup
group = RankGroup(2)
print(*group.pids, flush=True)
os._exit(0)  # like a killed parent: no atexit, no close()
"""


def test_ranks_exit_when_their_parent_is_gone():
    out = subprocess.run([sys.executable, "-c", PARENT], check=False, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    pids = [int(p) for p in out.stdout.split()]
    assert len(pids) == 2
    assert_all_gone(pids, within=5)


@pytest.mark.parametrize("world, error", [(0, ValueError), (-1, ValueError), (2.0, TypeError), (True, TypeError),
                                          ((os.cpu_count() or 1) * 8 + 1, ValueError)])
def test_bad_world_is_refused_before_anything_starts(world, error):
    with pytest.raises(error, match="world|too many processes"):
        RankGroup(world)


def test_bad_function_paths_are_refused():
    with pytest.raises(ValueError, match="package.module:function"):
        RankGroup(1, setup="no_colon")


def print_and_log(rank, world):
    import logging

    print(f"PRINTED by rank {rank}")
    os.write(1, f"NATIVE by rank {rank}\n".encode())  # below Python, as a C library writes
    logger = logging.getLogger("a_library")
    logger.addHandler(logging.StreamHandler(sys.stdout))  # as NxD's logger does, in the rank's process
    logger.warning(f"LOGGED by rank {rank}")
    return rank


def test_ranks_never_write_to_the_parents_stdout(tmp_path):
    """The parent's stdout is the results table: a rank's prints and logging (NxD logs ~20 INFO lines per
    rank on stdout) go to stderr."""
    code = ("import sys\nsys.path.insert(0, %r)\nfrom harness.neuron.launcher import RankGroup\n"
            "if __name__ == '__main__':\n"
            "    with RankGroup(2) as g:\n"
            "        print('TABLE', g.run('tests.test_launcher:print_and_log', time_limit=60))\n") % str(ROOT)
    script = tmp_path / "table.py"
    script.write_text(code)
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "TABLE [0, 1]", out.stdout
    assert "PRINTED by rank 1" in out.stderr and "LOGGED by rank 0" in out.stderr and "NATIVE by rank 1" in out.stderr
