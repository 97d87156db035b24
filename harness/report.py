"""Reports: a JSON record per checked case and an offline HTML page with pictures of each failure.

A record is a verdict's dict plus its case, bounds and, for a failure, its replay command
(`record_of`). `write_report(records, DIR, environment)` writes DIR/index.html,
DIR/records/<case>--<candidate>.json and DIR/img/*.png (matplotlib, rendered to files; the page
references nothing outside DIR). Used by `parity run --report DIR`, `parity report FILE` (saved `--json`
results) and `pytest --parity-report DIR`.
"""

from __future__ import annotations

import html
import json
from dataclasses import dataclass
from pathlib import Path

from harness import report_history
from harness.case import Case
from harness.console import run_notes
from harness.jsonfile import read_json, write_json
from harness.repro import safe_name
from harness.stages import STAGES
from harness.tolerances import Bounds

W_DEFAULT = 128


def _h(value) -> str:
    """Every value from a records file reaches the page through here: a results file is input like any
    other, and markup in a verdict, a name or a message must show as text, never run."""
    return html.escape(str(value), quote=True)


def record_of(case, verdict, bounds: Bounds | None = None, replay: str | None = None) -> dict:
    r = verdict.to_dict()
    r["case"] = case.to_dict()
    b = bounds or Bounds()
    r["bounds"] = {s: [b.for_stage(s).max_ratio, b.for_stage(s).rms_ratio] for s in STAGES}
    if replay:
        r["replay"] = replay
    return r


def load_results(path: str | Path) -> tuple[list[dict], dict | None]:
    """Records and the run's environment (None in files written before it was saved) from a
    `parity run --json` file, each record checked for the fields the report reads, so that a hand-made
    or truncated file is an error naming the record, not a traceback."""
    p = Path(path)
    data = read_json(p, "results file")
    cases = data.get("cases") if isinstance(data, dict) else None
    if not isinstance(cases, list):  # bad file content, not a bad argument: ValueError, which callers make exit 2
        raise ValueError(f"results file {p}: expected {{\"cases\": [{{id, candidate, verdict, ...}}]}} as written "  # noqa: TRY004
                         "by `parity run --json`")
    for i, r in enumerate(cases):
        problem = _record_problem(r)
        if problem:
            raise ValueError(f"results file {p}, record {i}: {problem} (records are written by `parity run --json`)")
    return cases, data.get("environment")


def load_records(path: str | Path) -> list[dict]:
    """Records from a `parity run --json` file (its "cases" list)."""
    return load_results(path)[0]


def _record_problem(r) -> str | None:
    if not isinstance(r, dict):
        return f"expected an object, found {type(r).__name__}"
    for key in ("id", "candidate", "verdict"):
        if not isinstance(r.get(key), str):
            return f"field {key!r} must be a string, found {r.get(key)!r}"
    kinds = {"stages": list, "layers": list, "probes": list, "maps": dict, "case": dict, "message": str, "info": dict,
             "replay": str, "divergent_stages": list}
    for key, kind in kinds.items():
        if r.get(key) is not None and not isinstance(r[key], kind):
            return f"field {key!r} must be {'a list' if kind is list else 'an object' if kind is dict else 'a string'}"
    ratio = r.get("worst_ratio")
    if ratio is not None and (isinstance(ratio, bool) or not isinstance(ratio, (int, float))):
        return f"field 'worst_ratio' must be a number or null, found {ratio!r}"
    for s in r.get("stages") or []:
        if not (isinstance(s, dict) and isinstance(s.get("stage"), str)
                and all(isinstance(s.get(k), (int, float)) for k in ("max_ratio", "rms_ratio"))):
            return "each stage must be an object with 'stage', 'max_ratio' and 'rms_ratio'"
    for layer in r.get("layers") or []:
        if not (isinstance(layer, dict) and "layer" in layer):
            return "each layer must be an object with 'layer'"
    for probe in r.get("probes") or []:
        if not (isinstance(probe, dict) and isinstance(probe.get("name"), str) and "passed" in probe):
            return "each probe must be an object with 'name' and 'passed'"
    maps = r.get("maps") or {}
    for key in ("attn_token_head", "output_position"):
        if key in maps and not (isinstance(maps[key], dict) and {"candidate", "reference"} <= set(maps[key])):
            return f"maps.{key} must hold 'candidate' and 'reference'"
    return None


def _slug(r: dict) -> str:
    return safe_name(f"{r['id']}--{r['candidate']}")


def _save(fig, img: Path, name: str) -> str:
    import matplotlib.pyplot as plt

    fig.savefig(img / name, dpi=90)
    plt.close(fig)
    return name


def _save_plot(fig, ax, img: Path, name: str, xlabel: str, ylabel: str, title: str, legend: bool = True) -> str:
    """Label a single-axes figure and save it."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if legend:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, img, name)


def _divergences(r: dict) -> list[dict]:
    """The record's divergences; records written before they existed name only the first stage."""
    if r.get("divergences"):
        return r["divergences"]
    first = r.get("first_divergent_stage")
    return [{"stage": first, "result": None, "located_by": "end to end", "also": [], "layer": None}] if first else []


def _shown_layer(r: dict):
    """Stacks: the per-stage chart shows the layer of the first divergence (else the first layer)."""
    ds = _divergences(r)
    if ds and ds[0].get("layer") is not None:
        return ds[0]["layer"]
    return (r.get("layers") or [{}])[0].get("layer")


def _stage_chart(r: dict, stages: list[dict], img: Path, plt, np) -> str:
    """Per-stage ratios with both bounds; every divergent stage shaded, its label red, and a marker
    at its ratio when entered with the oracle's inputs."""
    fig, ax = plt.subplots(figsize=(8.5, 3.6))
    names = [s["stage"] for s in stages]
    x = np.arange(len(names))
    ax.bar(x - 0.2, [max(s["max_ratio"], 1e-3) for s in stages], 0.4, label="max-abs ratio")
    ax.bar(x + 0.2, [max(s["rms_ratio"], 1e-3) for s in stages], 0.4, label="RMS ratio")
    bounds = r.get("bounds", {})
    for i, n in enumerate(names):
        if n in bounds:
            ax.plot([i - 0.4, i], [bounds[n][0]] * 2, "k--", lw=1, label="max-abs bound" if i == 0 else None)
            ax.plot([i, i + 0.4], [bounds[n][1]] * 2, "k:", lw=1.5, label="RMS bound" if i == 0 else None)
    layer = _shown_layer(r)
    divergent = {d["stage"]: d for d in _divergences(r) if d.get("layer") == layer or d.get("layer") is None}
    marked = False
    for i, n in enumerate(names):
        d = divergent.get(n)
        if d is None:
            continue
        ax.axvspan(i - 0.5, i + 0.5, color="tab:red", alpha=0.12, lw=0)
        res = d.get("result") if d.get("located_by") == "tap" else None
        if res:
            ax.plot(i, max(res["max_ratio"], res["rms_ratio"], 1e-3), "v", color="tab:red", ms=9,
                    label=None if marked else "entered with the oracle's inputs")
            marked = True
    ax.set_yscale("log")
    ax.set_xticks(x, names, rotation=30)
    for label in ax.get_xticklabels():
        if label.get_text() in divergent:
            label.set_color("tab:red")
            label.set_fontweight("bold")
    title = "per-stage ratio (shaded, red: divergent stages)" + (f", layer {layer}" if r.get("layers") else "")
    return _save_plot(fig, ax, img, f"{_slug(r)}-stages.png", "", "error / reference's error", title)


def _heatmap(r: dict, cand, ref, img: Path, plt) -> str:
    """Token x head error of the attention output. Each panel has its own colour scale: on the
    candidate's scale the reference's error (hundreds of times smaller) would render black."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True, constrained_layout=True)
    for ax, data, title in ((axes[0], cand, "candidate"), (axes[1], ref, "bf16 reference")):
        im = ax.imshow(data.T, aspect="auto", interpolation="nearest", vmin=0, vmax=max(data.max(), 1e-12), cmap="magma")
        ax.set_title(f"{title}: attention-output error", fontsize=10)
        ax.set_xlabel("judged token (batch-row order)")
        fig.colorbar(im, ax=ax, shrink=0.8)
    axes[0].set_ylabel("query head")
    return _save(fig, img, f"{_slug(r)}-heatmap.png")


def _plots(r: dict, img: Path) -> tuple[list[tuple[str, str]], list[str]]:
    """Render the pictures of one failing record: (file name, caption) pairs, and notes on the
    pictures that could not be drawn and why."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    out, notes = [], []
    case = r.get("case", {})
    maps = r.get("maps") or {}
    layer = _shown_layer(r)
    stages = [s for s in r.get("stages", []) if s.get("layer") in (None, layer)]
    tapped = {s["stage"] for s in stages} - {"output"}

    if not maps:
        notes.append(f"No error maps: a {r['verdict']} verdict"
                     + (" from a probe" if str(r.get("first_divergent_stage", "")).startswith("probe") else "")
                     + " carries no stage errors to draw; the message says what failed.")
    if stages and tapped:
        name = _stage_chart(r, stages, img, plt, np)
        out.append((name, ("Per-stage error ratio against the bf16 reference, with the max-abs bound (dashes) and the "
                           "RMS bound (dots). Shaded stages fail on their own when the candidate is entered there with "
                           "the oracle's inputs (the triangle: their ratio then); unshaded failing stages carry an "
                           "earlier stage's error.")))
    elif stages:
        notes.append("No per-stage chart: the candidate tapped only its output. Returning stage taps "
                     "(CandidateResult.taps, layouts in harness/stages.py) draws one and names each bug's stage.")

    if "attn_token_head" in maps:
        cand = np.array(maps["attn_token_head"]["candidate"])
        ref = np.array(maps["attn_token_head"]["reference"])
        if cand.size:
            out.append((_heatmap(r, cand, ref, img, plt),
                        ("Attention-output error over token x head, each panel on its own colour scale. A band of heads "
                         "points at GQA order or sinks; a band of tokens at masks or positions.")))
    elif maps:
        notes.append("No token x head heatmap: the candidate did not tap attn (the attention output before the "
                     "out-projection).")

    if "output_position" in maps:
        pos = np.array(maps.get("positions", []))
        cand = np.array(maps["output_position"]["candidate"])
        ref = np.array(maps["output_position"]["reference"])
        if pos.size:
            fig, ax = plt.subplots(figsize=(8, 3.2))
            ax.scatter(pos, cand, s=6, label="candidate")
            ax.scatter(pos, ref, s=6, label="bf16 reference")
            window = W_DEFAULT if case.get("layer", 0) % 2 == 0 else 0
            if window and pos.max() >= window - 1:  # an edge beyond the judged positions would only squash the plot
                for edge in (window, 2 * window):
                    if pos.max() >= edge - 1:
                        ax.axvline(edge - 0.5, color="k", ls="--", lw=1)
                ax.text(window - 0.5, ax.get_ylim()[1] * 0.9, f" W={window}", fontsize=8)
            name = _save_plot(fig, ax, img, f"{_slug(r)}-position.png", "position", "|output - oracle| (max over hidden)",
                              "block-output error against position")
            out.append((name, "Output error against position; dashes mark the window edges. Errors that start at W or 2W are window or cache bugs."))

    layers = r.get("layers") or []
    if len(layers) > 1:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([l["layer"] for l in layers], [max(l["worst_ratio"] or 1e-3, 1e-3) for l in layers], "o-")
        ax.set_yscale("log")
        name = _save_plot(fig, ax, img, f"{_slug(r)}-layers.png", "layer", "worst ratio",
                          f"per-layer error ({case.get('stack_mode', '')})", legend=False)
        out.append((name, "Worst ratio per layer of the stack."))
    return out, notes


def _probs_split(r: dict) -> str:
    """The probs error of the sink column and of the key columns apart, end to end and (if probs is a
    divergent stage) entered with the oracle's inputs. A sink bug shows in the sink column."""
    layer = _shown_layer(r)
    probs = next((s for s in r.get("stages", []) if s["stage"] == "probs" and s.get("layer") in (None, layer)), None)
    if not probs or not probs.get("split"):
        return ""
    entered = next((d["result"] for d in _divergences(r) if d["stage"] == "probs" and d.get("result")
                    and d.get("layer") in (None, layer)), None)
    rows = []
    for part, e in probs["split"].items():
        again = entered["split"][part]["max_ratio"] if entered and entered.get("split") else None
        rows.append(f"<tr><td>{_h(part)}</td><td>{e['cand_max']:.3g}</td><td>{e['ref_max']:.3g}</td>"
                    f"<td>{e['max_ratio']:.3g}x</td><td>{'-' if again is None else f'{again:.3g}x'}</td></tr>")
    return ("<p>probs, max-abs error by column (a sink bug shows in the sink column):</p><table><tr><th>columns</th>"
            "<th>candidate</th><th>reference</th><th>ratio end to end</th><th>ratio entered with the oracle's inputs</th></tr>"
            + "".join(rows) + "</table>")


# "What this looks like": shapes of the block-output error against position that point at a bug
# class (issue 19). Each is said only when the numbers show it; most failures match none.
BAD = 3  # a position is wrong when its error passes this times the reference's largest (the default bound)
EARLY = 8  # a peak at one of the first EARLY positions is "at the start"
DECAYED = 4  # decayed: below 1/DECAYED of the peak ...
DECAY_BY = 32  # ... from at most this position on
EDGE_SLACK = 8  # errors start "at" an edge E when the first wrong position is within E - 1 .. E + EDGE_SLACK


@dataclass(frozen=True)
class _Judged:
    row: int
    position: int
    error: float


def looks_like(r: dict) -> list[str]:
    """Sentences naming the pattern of a failing record's block-output error against position: a peak
    at the first positions that dies out (the signature of sinks), errors from the window's edge, only
    in padded rows, only in decode steps or the second chunk. Empty when none applies, or when the
    record has no readable error map or case."""
    judged = _judged_errors(r)
    case = _case_of(r)
    if not judged or case is None:
        return []
    floor = BAD * max(_reference_errors(r))
    wrong = [j for j in judged if j.error > floor]
    if not wrong:
        return []
    found = (_sinks_pattern(judged, floor), _window_pattern(case, judged, wrong), _padding_pattern(case, judged, wrong),
             _steps_pattern(case, judged, wrong))
    return [s for s in found if s]


def _case_of(r: dict) -> Case | None:
    """The record's case, or None when it is missing or not a valid case (a hand-made file)."""
    try:
        return Case.from_dict(r.get("case"))
    except ValueError:
        return None


def _numbers(values, kind=(int, float)) -> bool:
    return isinstance(values, list) and all(isinstance(v, kind) and not isinstance(v, bool) for v in values)


def _reference_errors(r: dict) -> list[float]:
    return r["maps"]["output_position"]["reference"]


def _judged_errors(r: dict) -> list[_Judged] | None:
    """(row, position, candidate's error) of every judged token, from the record's maps; None when
    they are missing or malformed (records written by `parity run --json` always hold them whole)."""
    maps = r.get("maps") or {}
    errors = maps.get("output_position") or {}
    positions, cand, ref = maps.get("positions"), errors.get("candidate"), errors.get("reference")
    if not (_numbers(positions, int) and _numbers(cand) and _numbers(ref)):
        return None
    rows = maps.get("rows", [0] * len(positions))  # records from before rows were kept: one row
    if not _numbers(rows, int):
        return None
    if not positions or not len(positions) == len(rows) == len(cand) == len(ref):
        return None
    return [_Judged(b, p, e) for b, p, e in zip(rows, positions, cand)]


def _sinks_pattern(judged: list[_Judged], floor: float) -> str | None:
    """Every row judged from position 0 (and long enough to tell) has its error peak, a wrong one, in
    its first EARLY positions and below 1/DECAYED of it from position DECAY_BY at most on."""
    rows = {}
    for j in judged:
        rows.setdefault(j.row, []).append(j)
    ordered = (sorted(row, key=lambda j: j.position) for row in rows.values())
    told = [_decay(row, floor) for row in ordered if _tells(row)]
    if not told or not all(told):
        return None
    peak, at, by = max(told)[0], max(told)[1], max(shape[2] for shape in told)
    where = "every row" if len(told) > 1 else "the row"
    return (f"The error is largest at the first positions (peak {peak:.3g} at position {at}) and dies out along {where} "
            f"(below a quarter of the peak from position {by} on): the signature of a sinks bug (early rows "
            "have few keys, so the sink's share of the softmax matters most there).")


def _tells(row: list[_Judged]) -> bool:
    """Whether a row (in position order) shows its start and enough after it to see a decay."""
    return row[0].position == 0 and row[-1].position >= 2 * EARLY


def _decay(row: list[_Judged], floor: float) -> tuple[float, int, int] | None:
    """(peak, its position, where it has decayed) for a row whose error decays from the start, else None."""
    top = max(row, key=lambda j: j.error)
    if top.position >= EARLY or top.error <= floor:
        return None
    by = None  # the first position of the longest tail below 1/DECAYED of the peak
    for j in reversed(row):
        if j.error >= top.error / DECAYED:
            break
        by = j.position
    if by is None or by > DECAY_BY or row[-1].position < 2 * by:
        return None
    return top.error, top.position, by


def _window_pattern(case: Case, judged: list[_Judged], wrong: list[_Judged]) -> str | None:
    """On a sliding layer: the first wrong position is at W (or 2W), and many positions before it were
    judged right."""
    if case.layer % 2 or case.depth > 1:
        return None
    first = min(j.position for j in wrong)
    before = sum(j.position < first for j in judged)
    for edge, name in ((W_DEFAULT, f"the sliding window's edge (W={W_DEFAULT})"),
                       (2 * W_DEFAULT, f"twice the sliding window (2W={2 * W_DEFAULT})")):
        if edge - 1 <= first <= edge + EDGE_SLACK and before >= edge // 2:
            return (f"Errors start at position {first}, at {name}: none of the {before} judged positions before it "
                    f"is beyond {BAD}x the reference's largest error.")
    return None


def _padding_pattern(case: Case, judged: list[_Judged], wrong: list[_Judged]) -> str | None:
    """Every wrong token is in a row shorter than the batch, and some full-length row was judged."""
    handed = [case.decode_steps if case.plan == "from_cache" else n for n in case.lengths]
    slots = case.pad_to or max(handed)
    padded = {b for b, n in enumerate(handed) if n < slots}
    full = {j.row for j in judged} - padded
    if not full or not {j.row for j in wrong} <= padded:
        return None
    bad = sorted({j.row for j in wrong})
    rows = ("rows " if len(bad) > 1 else "row ") + ", ".join(str(b) for b in bad)
    return (f"Errors appear only in padded rows ({rows}, shorter than the batch's {slots} slots, padded on the "
            f"{case.padding}); the rows that fill the batch are within {BAD}x the reference's largest error.")


def _steps_pattern(case: Case, judged: list[_Judged], wrong: list[_Judged]) -> str | None:
    """Every wrong token is in a decode step (or the second chunk), and earlier positions were judged."""
    if case.plan == "decode":
        def later(j: _Judged) -> bool:
            return j.position >= case.lengths[j.row] - case.decode_steps
        what = f"the decode steps (the last {case.decode_steps} positions of each row, one token a step)"
        rest = "the prefill's positions"
    elif case.plan == "chunked":
        def later(j: _Judged) -> bool:
            return j.position >= case.chunk_offset
        what, rest = f"the second chunk (positions from {case.chunk_offset} on)", "the first chunk's"
    else:
        return None
    if not all(later(j) for j in wrong) or all(later(j) for j in judged):
        return None
    return f"Errors appear only in {what}; {rest} are within {BAD}x the reference's largest error."


def _environment_section(environment: dict | None) -> str:
    """What the run ran on, in its own section: it describes the run, not any one check."""
    if not environment:
        body = "<p>environment: not recorded (results saved before this report version).</p>"
    else:
        rows = "".join(f"<tr><th>{_h(k)}</th><td>{_h(v)}</td></tr>" for k, v in environment.items() if k != "command")
        body = f"<p>command line:</p><pre>{_h(environment.get('command', ''))}</pre><table>{rows}</table>"
    return f'<section id="environment"><h2>Environment</h2>{body}</section>'


CHECK_COLUMNS = ("case", "candidate", "verdict", "worst ratio", "divergent stages", "failed probes")
NEURON_COLUMN = "run (Neuron: mode, buckets, builds)"


def _run_notes(r: dict) -> str:
    """What the record's candidate said about its run (a Neuron candidate: mode, buckets, builds)."""
    return run_notes(r.get("info") or {}).strip()


def _check_row(r: dict, trends: dict, neuron: bool) -> str:
    """One check's row of the checks table; a failing or drifting check links to its section."""
    slug = _slug(r)
    cls = "pass" if r["verdict"] == "pass" else "bad"
    ratio = f"{r['worst_ratio']:.3g}" if r.get("worst_ratio") is not None else "-"
    probes = ", ".join(p["name"] for p in r.get("probes", []) if not p["passed"] and p.get("binding")) or "-"
    link = f'<a href="#{slug}">{_h(r["id"])}</a>' if cls == "bad" or slug in trends else _h(r["id"])
    drift = f" (drift {trends[slug].drift:.2f}x)" if cls == "pass" and slug in trends else ""
    stages = ", ".join(map(str, r.get("divergent_stages") or [d["stage"] for d in _divergences(r)])) or "-"
    cells = [f"<td>{link}</td>", f"<td>{_h(r['candidate'])}</td>", f"<td class={cls}>{_h(r['verdict'].upper())}{drift}</td>",
             f"<td>{ratio}</td>", f"<td>{_h(stages)}</td>", f"<td>{_h(probes)}</td>"]
    if neuron:
        cells.append(f"<td>{_h(_run_notes(r)) or '-'}</td>")
    return "<tr>" + "".join(cells) + "</tr>"


def _checks_section(records: list[dict], trends: dict) -> str:
    """The table of every check. The Neuron column only when some candidate said how it ran: without
    one it would be a column of dashes."""
    neuron = any(_run_notes(r) for r in records)
    head = "".join(f"<th>{c}</th>" for c in CHECK_COLUMNS + ((NEURON_COLUMN,) if neuron else ()))
    rows = "".join(_check_row(r, trends, neuron) for r in records)
    return f'<section id="checks"><h2>Checks</h2><table><tr>{head}</tr>{rows}</table></section>'


def _figures(r: dict, img: Path, failing: bool, trend) -> str:
    plots, notes = _plots(r, img) if failing else ([], [])
    figures = "".join(f'<figure><img src="img/{n}" alt="{_h(c)}"><figcaption>{_h(c)}</figcaption></figure>'
                      for n, c in plots)
    figures += "".join(f"<p class=note>{_h(n)}</p>" for n in notes)
    return figures + (report_history.figure(trend) if trend else "")


def _check_section(r: dict, img: Path, failing: bool, trend) -> str:
    """A failing or drifting check: its message, replay, case, what its errors look like, pictures."""
    title = _h(r["verdict"].upper()) if failing else f"PASS, drifting ({trend.drift:.2f}x)"
    replay = f"<p>replay:</p><pre>{_h(r['replay'])}</pre>" if r.get("replay") else ""
    sentences = looks_like(r) if failing else []
    looks = f"<p class=looks><b>What this looks like:</b> {_h(' '.join(sentences))}</p>" if sentences else ""
    return (f'<h2 id="{_slug(r)}">{_h(r["id"])} / {_h(r["candidate"])}: {title}</h2>'
            f"<pre>{_h(r.get('message', ''))}</pre>{looks}{replay}"
            f"<p>case: <code>{_h(json.dumps(r.get('case', {})))}</code></p>"
            f"{_probs_split(r) if failing else ''}{_figures(r, img, failing, trend)}")


CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}.pass{color:#080}
.bad{color:#b00;font-weight:bold}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;font-size:12px}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}figure{margin:0 0 1em 0}.note{color:#555;font-style:italic}
.looks{background:#fff8e0;padding:6px 8px}"""


def write_report(records: list[dict], directory: str | Path, environment: dict | None = None,
                 history: str | Path | None = None, run: str | None = None) -> Path:
    """`environment`: what the run ran on (harness.environment.run_environment), shown at the top.
    `history`: a history store (harness/history.py); each failing or drifting check then gets a picture
    of its ratio across the store's runs. `run`: the run these records were appended to it as."""
    out = Path(directory)
    (out / "img").mkdir(parents=True, exist_ok=True)
    (out / "records").mkdir(exist_ok=True)
    for r in records:
        write_json(out / "records" / f"{_slug(r)}.json", r)
    failed = [r for r in records if r["verdict"] != "pass"]
    trends = report_history.trends(records, out / "img", history, run) if history else {}
    drifting = [r for r in records if r["verdict"] == "pass" and _slug(r) in trends]
    sections = "".join(_check_section(r, out / "img", r["verdict"] != "pass", trends.get(_slug(r)))
                       for r in failed + drifting)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>parity report</title><style>{CSS}</style></head><body>"
            f"<h1>gpt-oss attention parity</h1><p>{len(records) - len(failed)} passed, {len(failed)} failed"
            f"{f', {len(drifting)} drifting' if history else ''}.</p>"
            f"{_environment_section(environment)}{_checks_section(records, trends)}{sections}</body></html>")
    index = out / "index.html"
    index.write_text(page)
    return index
