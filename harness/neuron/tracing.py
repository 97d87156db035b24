"""What tracing does to a block, judged from counts (harness/neuron/xla.py supplies them): the graphs
compiled and executed per NxDI call. Pure Python, so that the rules are tested everywhere.

The rules, each a check of its own (name, passed, detail), the way a compiled NxDI model must behave:
- `one compile per graph`: each (phase, input shapes) compiles once, on its first call, and the total
  is the number of distinct graphs the case's buckets imply;
- `no recompile across token generation`: later calls of a graph compile nothing (a recompile at every
  step means the graph depends on a Python value that changes per step, e.g. the cache sliced with a
  Python int; PT_XLA_DEBUG_LEVEL=1 prints the line that caused each compile);
- `one execution per call`: more than one means the step was split into several graphs (Python control
  flow on a tensor's value, `.item()`, a print of a tensor);
- `first call traces the graph later calls use`: a graph whose second call compiles again, and never
  after, was changed by its first call (a buffer created lazily on the first forward); reported as a
  warning by default (it costs a compile, not correctness), a failure when strict;
- `warm rerun compiles nothing`: the same case run again in the same process compiles nothing.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Call:
    key: tuple  # (phase, input shapes...)
    compiles: int
    executions: int
    step: str  # what the driver was doing ("context", "generation at position 130")
    triggers: list[str] = field(default_factory=list)  # Python lines that ran a graph mid-call (torch-xla's debug output)


@dataclass
class Tracing:
    calls: list[Call] = field(default_factory=list)
    reruns: list[int] = field(default_factory=list)  # compiles of each warm rerun of the whole case
    eager_max_ulps: float | None = None  # traced output against the same module run eagerly (units in the last place)

    def note(self, key: tuple, compiles: int, executions: int, step: str, triggers: list[str] | None = None) -> None:
        self.calls.append(Call(key, compiles, executions, step, list(triggers or [])))

    def graphs(self) -> dict[str, int]:
        """Compiles per graph, for the report ("context 1x256x96: 1")."""
        out: dict[str, int] = {}
        for c in self.calls:
            out[describe(c.key)] = out.get(describe(c.key), 0) + c.compiles
        return out

    def checks(self, strict_first_call: bool = False) -> list[dict]:
        """Every rule of the module's docstring, judged on the calls noted."""
        by_key: dict[tuple, list[Call]] = {}
        for c in self.calls:
            by_key.setdefault(c.key, []).append(c)
        twice = [describe(k) for k, cs in by_key.items() if cs[0].compiles > 1]
        # a graph that compiles on its second call only was changed by its first (a lazy buffer); one that
        # compiles on any later call, or whenever the case runs again, depends on a value that changes
        lazy, recompiled = [], []
        for k, cs in by_key.items():
            later = [c for c in cs[1:] if c.compiles]
            if later == cs[1:2] and later:
                lazy.append(describe(k))
            else:
                recompiled += [f"{describe(k)} at {c.step}: {c.compiles} compile(s)" for c in later]
        first_rerun, *later_reruns = self.reruns or [0]
        if first_rerun and not lazy and not any(later_reruns):
            lazy.append("the case's first graphs, compiled again when it ran a second time")
        split = [f"{c.step}: {c.executions} executions" for c in self.calls if c.executions > 1]
        where = list(dict.fromkeys(t for c in self.calls if c.executions > 1 for t in c.triggers))
        first = _check("first call traces the graph later calls use", not lazy,
                       "no graph compiled again on its second call" if not lazy else
                       "compiled again on its second call and never after (its first call changed the module, e.g. "
                       "a buffer created on the first forward; that bucket compiles twice): " + ", ".join(lazy))
        first["binding"] = strict_first_call
        out = [
            _check("one compile per graph", not twice,
                   f"{len(by_key)} graph(s), {sum(c.compiles for c in self.calls)} compile(s) (0: found compiled "
                   "by an earlier case)" if not twice else "compiled more than once on its first call: " + ", ".join(twice)),
            _check("no recompile across token generation", not recompiled,
                   "later calls of each graph compiled nothing" if not recompiled else
                   "recompiled: " + "; ".join(recompiled[:5]) + (" ..." if len(recompiled) > 5 else "")
                   + " (the graph depends on a Python value that changes per call, e.g. the cache sliced with a "
                   "Python int; PT_XLA_DEBUG_LEVEL=1 prints the line that caused each compile)"),
            _check("one execution per call", not split,
                   f"{len(self.calls)} call(s), one graph each" if not split else
                   "a call ran several graphs (a graph break: Python control flow on a tensor's value, .item(), "
                   "a print of a tensor): " + "; ".join(split[:5])
                   + (f"; the graph was cut at {', '.join(where[:3])}" if where else "")),
            first,
        ]
        if self.reruns:
            out.append(_check("warm rerun compiles nothing", not any(later_reruns) and (not first_rerun or bool(lazy)),
                              f"compiles when the same case ran again in this process: {self.reruns}"))
        return out


def _check(name: str, passed: bool, detail: str) -> dict:
    return {"name": f"tracing: {name}", "passed": passed, "detail": detail, "binding": True}


def describe(key: tuple) -> str:
    """A graph by its phase and its first input's shape: "the generation graph [1x1x96]"."""
    phase, *shapes = key
    return f"the {phase} graph [{'x'.join(map(str, shapes[0]))}]" if shapes else f"the {phase} graph"
