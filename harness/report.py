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
from pathlib import Path

from harness import report_history
from harness.console import run_notes
from harness.jsonfile import read_json, write_json
from harness.repro import safe_name
from harness.stages import STAGES
from harness.tolerances import Bounds

W_DEFAULT = 128


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
    if not isinstance(cases, list):
        raise ValueError(f"results file {p}: expected {{\"cases\": [{{id, candidate, verdict, ...}}]}} as written by "
                         "`parity run --json`")
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
    kinds = {"stages": list, "layers": list, "probes": list, "maps": dict, "case": dict, "message": str}
    for key, kind in kinds.items():
        if r.get(key) is not None and not isinstance(r[key], kind):
            return f"field {key!r} must be {'a list' if kind is list else 'an object' if kind is dict else 'a string'}"
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
        out.append((name, "Per-stage error ratio against the bf16 reference, with the max-abs bound (dashes) and the "
                          "RMS bound (dots). Shaded stages fail on their own when the candidate is entered there with "
                          "the oracle's inputs (the triangle: their ratio then); unshaded failing stages carry an "
                          "earlier stage's error."))
    elif stages:
        notes.append("No per-stage chart: the candidate tapped only its output. Returning stage taps "
                     "(CandidateResult.taps, layouts in harness/stages.py) draws one and names each bug's stage.")

    if "attn_token_head" in maps:
        cand = np.array(maps["attn_token_head"]["candidate"])
        ref = np.array(maps["attn_token_head"]["reference"])
        if cand.size:
            out.append((_heatmap(r, cand, ref, img, plt),
                        "Attention-output error over token x head, each panel on its own colour scale. A band of heads "
                        "points at GQA order or sinks; a band of tokens at masks or positions."))
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
        rows.append(f"<tr><td>{part}</td><td>{e['cand_max']:.3g}</td><td>{e['ref_max']:.3g}</td>"
                    f"<td>{e['max_ratio']:.3g}x</td><td>{'-' if again is None else f'{again:.3g}x'}</td></tr>")
    return ("<p>probs, max-abs error by column (a sink bug shows in the sink column):</p><table><tr><th>columns</th>"
            "<th>candidate</th><th>reference</th><th>ratio end to end</th><th>ratio entered with the oracle's inputs</th></tr>"
            + "".join(rows) + "</table>")


def _environment_block(environment: dict | None) -> str:
    if not environment:
        return "<p>environment: not recorded (results saved before this report version).</p>"
    command = environment.get("command", "")
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in environment.items() if k != "command")
    return f"<p>command line:</p><pre>{html.escape(command)}</pre><table>{rows}</table>"


CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}.pass{color:#080}
.bad{color:#b00;font-weight:bold}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;font-size:12px}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}figure{margin:0 0 1em 0}.note{color:#555;font-style:italic}"""


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
    failing = {id(r) for r in failed}
    trends = report_history.trends(records, out / "img", history, run) if history else {}
    drifting = [r for r in records if r["verdict"] == "pass" and _slug(r) in trends]
    rows = []
    for r in records:
        slug = _slug(r)
        cls = "pass" if r["verdict"] == "pass" else "bad"
        ratio = f"{r['worst_ratio']:.3g}" if r.get("worst_ratio") is not None else "-"
        probes = ", ".join(p["name"] for p in r.get("probes", []) if not p["passed"] and p.get("binding")) or "-"
        link = f'<a href="#{slug}">{html.escape(r["id"])}</a>' if cls == "bad" or slug in trends else html.escape(r["id"])
        drift = f" (drift {trends[slug].drift:.2f}x)" if cls == "pass" and slug in trends else ""
        stages = ", ".join(r.get("divergent_stages") or [d["stage"] for d in _divergences(r)]) or "-"
        rows.append(f"<tr><td>{link}</td><td>{html.escape(r['candidate'])}</td><td class={cls}>{r['verdict'].upper()}{drift}</td>"
                    f"<td>{ratio}</td><td>{html.escape(stages)}</td><td>{html.escape(probes)}</td>"
                    f"<td>{html.escape(run_notes(r.get('info') or {}).strip()) or '-'}</td></tr>")
    sections = []
    for r in failed + drifting:
        slug = _slug(r)
        plots, notes = _plots(r, out / "img") if id(r) in failing else ([], [])
        figures = "".join(f'<figure><img src="img/{n}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
                          for n, c in plots)
        figures += "".join(f"<p class=note>{html.escape(n)}</p>" for n in notes)
        figures += report_history.figure(trends[slug]) if slug in trends else ""
        title = r["verdict"].upper() if id(r) in failing else f"PASS, drifting ({trends[slug].drift:.2f}x)"
        replay = f"<p>replay:</p><pre>{html.escape(r['replay'])}</pre>" if r.get("replay") else ""
        sections.append(f'<h2 id="{slug}">{html.escape(r["id"])} / {html.escape(r["candidate"])}: {title}</h2>'
                        f"<pre>{html.escape(r.get('message', ''))}</pre>{replay}"
                        f"<p>case: <code>{html.escape(json.dumps(r.get('case', {})))}</code></p>"
                        f"{_probs_split(r) if id(r) in failing else ''}{figures}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>parity report</title><style>{CSS}</style></head><body>"
            f"<h1>gpt-oss attention parity</h1><p>{len(records) - len(failed)} passed, {len(failed)} failed"
            f"{f', {len(drifting)} drifting' if history else ''}.</p>"
            f"{_environment_block(environment)}"
            "<table><tr><th>case</th><th>candidate</th><th>verdict</th><th>worst ratio</th><th>divergent stages</th>"
            f"<th>failed probes</th><th>run (Neuron: mode, buckets, builds)</th></tr>{''.join(rows)}</table>{''.join(sections)}</body></html>")
    index = out / "index.html"
    index.write_text(page)
    return index
