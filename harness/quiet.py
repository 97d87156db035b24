"""Stdout is the harness's own (tables, summaries): third-party logging and prints go to stderr.

Why: NxD logs about 15 INFO lines per module build through a logging handler on sys.stdout, and they
landed in `parity run`'s table (issue 19), which scripts and CI logs read. Libraries make such handlers
when they are imported, which happens inside a candidate's build, so moving handlers afterwards is too
late for the first build: while third-party code runs, sys.stdout itself is stderr."""

from __future__ import annotations

import contextlib
import logging
import os
import sys


def stdout_handlers_to_stderr() -> None:
    """Point every logging handler that writes to stdout at stderr (the real stdout at the real stderr)."""
    moves = {id(sys.__stdout__): sys.__stderr__, id(sys.stdout): sys.stderr}
    loggers = [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]
    for logger in loggers:
        for handler in getattr(logger, "handlers", ()):  # placeholders in loggerDict have none
            if not isinstance(handler, logging.StreamHandler) or handler.stream is None:
                continue
            target = moves.get(id(handler.stream))
            if target is not None and handler.stream is not target:
                handler.setStream(target)


@contextlib.contextmanager
def third_party_output_to_stderr():
    """Run third-party code (a candidate's import, build and calls; an NxDI module build) with its print()
    and every logging handler it makes on sys.stdout writing to stderr; handlers made earlier are moved.
    Native code's writes to file descriptor 1 go to 2 as well (torch 2.9's gloo prints "[Gloo] Rank 0 is
    connected to 0 peer ranks" there whenever NxD's one-process fallback group starts)."""
    stdout_handlers_to_stderr()
    with _native_stdout_to_stderr():
        try:
            with contextlib.redirect_stdout(sys.stderr):
                yield
        finally:
            stdout_handlers_to_stderr()  # one made on sys.__stdout__ meanwhile


@contextlib.contextmanager
def _native_stdout_to_stderr():
    with descriptor_redirected(1, 2, sys.__stdout__):
        yield


@contextlib.contextmanager
def descriptor_redirected(fd: int, to_fd: int, stream=None):
    """While the block runs, writes to file descriptor `fd` (native code's too) go to `to_fd`; `stream`,
    the Python stream on `fd`, is flushed on the way in and out. Where `fd` cannot be duplicated, nothing
    native can reach it either: the block runs as it is."""
    def flush():
        try:
            if stream is not None:
                stream.flush()
        except (AttributeError, OSError, ValueError):
            pass

    flush()
    try:
        saved = os.dup(fd)
    except OSError:
        yield
        return
    try:
        os.dup2(to_fd, fd)
        yield
    finally:
        flush()
        os.dup2(saved, fd)
        os.close(saved)
