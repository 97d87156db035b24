"""Run one function on N rank processes, as NxD's CPU mode needs for tensor parallelism, without torchrun.

Why: NxD shards a module over tp ranks, one process per rank joined by torch.distributed (gloo on CPU;
see shared/notes/nxdi.md "tensor parallelism on CPU"). A parity run checks dozens of cases, so the ranks
are started once (imports, init_process_group, the caller's `setup`, e.g. NxD's initialize_model_parallel)
and reused: `RankGroup(world, setup)` starts them, `group.run("pkg.mod:fn", *args, time_limit=...)` calls
`fn(rank, world, *args)` on every rank and returns the results in rank order. Functions are named by
import path, never pickled. The spawn context of torch.multiprocessing passes tensors through shared
memory, so the ranks read one copy of a case's weights instead of one each (a tensor argument's storage is
moved to shared memory in place, as torch.multiprocessing does). Spawn re-imports the caller's main module
in every rank: a script must make its RankGroup under `if __name__ == "__main__":`. Each rank gets
the parent's torch threads divided among the ranks (tp 8 on 2 cores must not run 16 threads).

Guarantees: loopback only (127.0.0.1, gloo on `lo`), a free port per group, every rank's failure raised
with its rank and traceback (`RankFailed`), one time limit covering all ranks (`RankTimeout`), and no
process left behind: after any failure the group is stopped and closed (make a new RankGroup to go on),
`close()` also runs at exit, and each rank exits by itself within a second once its parent is gone.
One caller at a time: a group is not thread-safe.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime
import importlib
import math
import os
import signal
import sys
import threading
import time
import traceback
from multiprocessing.connection import wait

import torch
import torch.distributed as dist
import torch.multiprocessing as tmp

from harness.machine import free_port, usable_cpus

FAILURE_GRACE = 2.0  # seconds to collect the other ranks' answers once one rank failed
STOP_WAIT = 5.0  # seconds close() waits for ranks to stop by themselves before killing them
COLLECTIVE_TIMEOUT = 1800.0  # gloo's own limit on a collective; the parent's time limits act first
_SIGNALS = {s.value: s.name for s in signal.Signals}


class LaunchError(Exception):
    """Anything that went wrong running ranks."""


class RankFailed(LaunchError):
    """Ranks raised or died. `failures`: rank -> its full traceback, or how its process died."""

    def __init__(self, message: str, failures: dict[int, str]):
        super().__init__(message)
        self.failures = failures


class RankTimeout(LaunchError):
    """Ranks did not answer within the time limit. `ranks`: the ones that did not answer."""

    def __init__(self, message: str, ranks: list[int]):
        super().__init__(message)
        self.ranks = ranks


def _check_path(path: str, what: str) -> None:
    module, _, name = path.partition(":") if isinstance(path, str) else ("", "", "")
    if not (module and name and ":" not in name):
        raise ValueError(f"{what} must be an import path 'package.module:function', got {path!r}")


def _resolve(path: str):
    return getattr(importlib.import_module(path.partition(":")[0]), path.partition(":")[2])


def _watch_parent(parent_pid: int) -> None:
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    os._exit(1)  # the parent is gone (killed): nobody will ever call or stop this rank


def _rank_main(rank: int, world: int, port: int, parent_pid: int, setup: str | None, threads: int, conn) -> None:
    """One rank: the SDK's order (init_process_group, then setup), then calls until told to stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the parent decides
    # stdout is the parent's results table: whatever a rank prints or logs there (NxD logs its parallel
    # state at INFO on stdout, ~20 lines per rank) goes to stderr instead, down to the file descriptor
    sys.stdout.flush()
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()
    try:
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo" if sys.platform.startswith("linux") else "lo0")  # loopback
        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                          LOCAL_RANK=str(rank), LOCAL_WORLD_SIZE=str(world))  # what torchrun would set
        if threads:
            torch.set_num_threads(threads)
        dist.init_process_group("gloo", rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=COLLECTIVE_TIMEOUT))
        if setup:
            _resolve(setup)(rank, world)
        conn.send(("ready", os.getpid()))
    except BaseException:  # noqa: BLE001 (whatever start-up raises goes back to the parent with its traceback)
        with contextlib.suppress(OSError):
            conn.send(("error", traceback.format_exc()))
        return
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the parent closed its end
        if message[0] == "stop":
            break
        try:
            reply = ("ok", _resolve(message[1])(rank, world, *message[2]))
        except BaseException:  # noqa: BLE001 (SystemExit included: the parent reports it)
            reply = ("error", traceback.format_exc())
        try:
            conn.send(reply)
        except Exception:  # noqa: BLE001 (a result that cannot be pickled)
            conn.send(("error", f"the result of {message[1]} could not be sent back:\n{traceback.format_exc()}"))
    dist.destroy_process_group()


def _death(process) -> str:
    process.join(1.0)
    code = process.exitcode
    if code is None:
        return f"closed its connection without answering (pid {process.pid}, still running)"
    if code < 0:
        hint = " (the out-of-memory killer sends SIGKILL: check memory, use fewer ranks)" if -code == 9 else ""
        return f"died without answering (pid {process.pid}): killed by {_SIGNALS.get(-code, f'signal {-code}')}{hint}"
    return (f"died without answering (pid {process.pid}): exited with status {code} (its stderr says why; a script "
            "must start a RankGroup under `if __name__ == '__main__':`, as spawn re-imports the main module)")


def _tail(text: str, lines: int = 4) -> str:
    kept = [line for line in text.strip().splitlines() if line.strip(" ^~")][-lines:]  # no 3.11 caret lines
    return "\n".join("    " + line for line in kept)


def _failure_message(what: str, world: int, failures: dict[int, str], died: set[int], pending: set[int]) -> str:
    lines = [f"{what}: {len(failures)} of {world} rank(s) failed; every rank was stopped"]
    lines += [f"  rank {r}:\n{_tail(failures[r])}" for r in sorted(died) + sorted(set(failures) - died)]
    if died and len(failures) > len(died):  # deaths are listed first
        lines.append("  (a rank that dies breaks its peers' collectives: their errors may only follow from it)")
    lines += [f"  rank {r}: no answer {FAILURE_GRACE:g} s after the first failure (probably waiting in a collective "
              "for a failed rank)" for r in sorted(pending)]
    lines.append("Full tracebacks: the exception's .failures. Fix the failing rank, then make a new RankGroup.")
    return "\n".join(lines)


class RankGroup:
    """`world` rank processes joined by a gloo process group on 127.0.0.1; a context manager."""

    def __init__(self, world: int, setup: str | None = None, start_timeout: float = 180):
        if isinstance(world, bool) or not isinstance(world, int):
            raise TypeError(f"world must be an int (the number of ranks), got {world!r}")
        cpus = usable_cpus()
        if world < 1:
            raise ValueError(f"world must be at least 1 rank, got {world}")
        if world > cpus * 8:
            raise ValueError(f"{world} ranks is too many processes for this machine ({cpus} CPUs, at most "
                             f"{cpus * 8} ranks): use a smaller tensor-parallel degree")
        if setup is not None:
            _check_path(setup, "setup")
        self.world, self.setup = world, setup
        self._closed, self._reason = False, ""
        self._processes, self._conns = [], []
        atexit.register(self.close)
        # the parent's threads shared among its ranks (they reflect $OMP_NUM_THREADS, an xdist worker's
        # share and the CPU affinity): tp 8 on 2 cores must not run 16 spinning threads
        threads = max(1, torch.get_num_threads() // world)
        context, port = tmp.get_context("spawn"), free_port()
        try:
            for rank in range(world):
                parent_end, child_end = context.Pipe()
                process = context.Process(target=_rank_main, name=f"rank-{rank}", daemon=False,
                                          args=(rank, world, port, os.getpid(), setup, threads, child_end))
                process.start()
                child_end.close()
                self._processes.append(process)
                self._conns.append(parent_end)
            what = f"starting {world} rank(s) (imports, init_process_group" + (f", setup {setup})" if setup else ")")
            self._collect(what, start_timeout, "raise start_timeout (RankGroup(..., start_timeout=SECONDS))")
        except BaseException:
            self._fail("start-up failed")
            raise

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self._processes]

    def run(self, fn_path: str, *args, time_limit: float | None) -> list:
        """fn(rank, world, *args) on every rank; the results in rank order. time_limit (seconds, all ranks
        together; None or 0: none) is keyword-only. Any failure stops and closes the group."""
        if self._closed:
            raise LaunchError(f"this RankGroup of {self.world} rank(s) cannot run {fn_path}: {self._reason}; "
                              "make a new RankGroup")
        _check_path(fn_path, "fn_path")
        try:
            for conn in self._conns:
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # a dead rank: _collect says so
                    conn.send(("call", fn_path, args))  # tensors in args move to shared memory, once
            return self._collect(f"{fn_path} on {self.world} rank(s)", time_limit,
                                 "raise the time limit (parity run --time-limit SECONDS, $PARITY_TIME_LIMIT)")
        except BaseException:
            self._fail(f"an earlier call of {fn_path} failed")
            raise

    def _collect(self, what: str, limit: float | None, advice: str) -> list:
        deadline = time.monotonic() + limit if limit else math.inf
        answers, failures, died, pending, first_failure = {}, {}, set(), set(range(self.world)), None
        while pending:
            end = deadline if first_failure is None else min(deadline, first_failure + FAILURE_GRACE)
            timeout = end - time.monotonic()
            if timeout <= 0:
                break
            owners = {}
            for rank in pending:
                owners[self._conns[rank]] = owners[self._processes[rank].sentinel] = rank
            for ready in wait(list(owners), None if math.isinf(timeout) else timeout):
                rank = owners[ready]
                if rank not in pending:
                    continue
                conn, process = self._conns[rank], self._processes[rank]
                try:
                    kind, payload = conn.recv() if conn.poll() else ("dead", None)
                except (EOFError, OSError):
                    kind, payload = "dead", None
                except Exception:  # noqa: BLE001 (an answer that cannot be unpickled)
                    kind, payload = "error", f"its answer could not be read:\n{traceback.format_exc()}"
                pending.discard(rank)
                if kind in ("ok", "ready"):
                    answers[rank] = payload
                    continue
                failures[rank] = _death(process) if kind == "dead" else payload
                died |= {rank} if kind == "dead" else set()
                first_failure = first_failure or time.monotonic()
        if failures:
            self._fail(f"rank(s) {sorted(failures)} failed in {what}")
            raise RankFailed(_failure_message(what, self.world, failures, died, pending), failures)
        if pending:
            self._fail(f"{what} ran past its time limit")
            raise RankTimeout(
                f"{what}: rank(s) {sorted(pending)} did not answer within {limit:g} s (answered: "
                f"{sorted(answers) or 'none'}); every rank was stopped. A rank waiting in a collective may be "
                f"waiting for a slower or stuck rank. If the work is only slow, {advice}.", sorted(pending))
        return [answers[rank] for rank in range(self.world)]

    def _fail(self, reason: str) -> None:
        self.close(polite=False, reason=f"it was closed because {reason}")

    def close(self, polite: bool = True, reason: str = "it was closed") -> None:
        """Stop every rank (asked to stop when polite, then SIGTERM, then SIGKILL) and reap it. Idempotent."""
        if self._closed:
            return
        self._closed, self._reason = True, reason
        atexit.unregister(self.close)
        if polite:
            for conn in self._conns:
                with contextlib.suppress(OSError):
                    conn.send(("stop",))
            end = time.monotonic() + STOP_WAIT
            for process in self._processes:
                process.join(max(0.0, end - time.monotonic()))
        for step, wait_s in (("terminate", 1.0), ("kill", None)):
            alive = [p for p in self._processes if p.is_alive()]
            for process in alive:
                getattr(process, step)()
            for process in alive:
                process.join(wait_s)
        for conn in self._conns:
            conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()
