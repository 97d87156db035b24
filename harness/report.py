"""Reports: a JSON record per checked case and an offline HTML page with pictures of each failure.

A record is a verdict's dict plus its case (`records_for`). `write_report(records, DIR)` writes
DIR/index.html, DIR/records/<case>--<candidate>.json and DIR/img/*.png (matplotlib, rendered to files;
the page references nothing outside DIR). Used by `parity run --report DIR`, `parity report FILE`
(saved `--json` results) and `pytest --parity-report DIR`.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

from harness import report_history
from harness.jsonfile import read_json, write_json
from harness.repro import safe_name
from harness.stages import STAGES
from harness.tolerances import Bounds

W_DEFAULT = 128


def record_of(case, verdict, bounds: Bounds | None = None) -> dict:
    r = verdict.to_dict()
    r["case"] = case.to_dict()
    b = bounds or Bounds()
    r["bounds"] = {s: [b.for_stage(s).max_ratio, b.for_stage(s).rms_ratio] for s in STAGES}
    return r


def load_records(path: str | Path) -> list[dict]:
    """Records from a `parity run --json` file (its "cases" list), each checked for the fields the report
    reads, so that a hand-made or truncated file is an error naming the record, not a traceback."""
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
    return cases


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


def _plots(r: dict, img: Path) -> list[tuple[str, str]]:
    """Render the pictures of one failing record; returns (file name, caption) pairs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    slug, out = _slug(r), []
    case = r.get("case", {})
    maps = r.get("maps") or {}

    stages = [s for s in r.get("stages", []) if s.get("layer") in (None, (r.get("layers") or [{}])[0].get("layer"))]
    if stages:
        fig, ax = plt.subplots(figsize=(8, 3.2))
        names = [s["stage"] for s in stages]
        x = np.arange(len(names))
        ax.bar(x - 0.2, [max(s["max_ratio"], 1e-3) for s in stages], 0.4, label="max-abs ratio")
        ax.bar(x + 0.2, [max(s["rms_ratio"], 1e-3) for s in stages], 0.4, label="RMS ratio")
        bounds = r.get("bounds", {})
        for i, n in enumerate(names):
            if n in bounds:
                ax.plot([i - 0.4, i + 0.4], [bounds[n][0]] * 2, "k--", lw=1)
        ax.set_yscale("log")
        ax.set_xticks(x, names, rotation=30)
        name = _save_plot(fig, ax, img, f"{slug}-stages.png", "", "error / reference's error",
                          "per-stage ratio (dashes: bound)")
        out.append((name, "Per-stage error ratio against the bf16 reference; the first bar above its dash is where it breaks."))

    if "attn_token_head" in maps:
        cand = np.array(maps["attn_token_head"]["candidate"])
        ref = np.array(maps["attn_token_head"]["reference"])
        if cand.size:
            vmax = max(cand.max(), ref.max(), 1e-12)
            fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True, constrained_layout=True)
            for ax, data, title in ((axes[0], cand, "candidate"), (axes[1], ref, "bf16 reference")):
                im = ax.imshow(data.T, aspect="auto", interpolation="nearest", vmin=0, vmax=vmax, cmap="magma")
                ax.set_title(f"{title}: attention-output error", fontsize=10)
                ax.set_xlabel("judged token (batch-row order)")
            axes[0].set_ylabel("query head")
            fig.colorbar(im, ax=axes, shrink=0.8)
            name = _save(fig, img, f"{slug}-heatmap.png")
            out.append((name, "Attention-output error over token x head. A band of heads points at GQA order or sinks; a band of tokens at masks or positions."))

    if "output_position" in maps:
        pos = np.array(maps.get("positions", []))
        cand = np.array(maps["output_position"]["candidate"])
        ref = np.array(maps["output_position"]["reference"])
        if pos.size:
            fig, ax = plt.subplots(figsize=(8, 3.2))
            ax.scatter(pos, cand, s=6, label="candidate")
            ax.scatter(pos, ref, s=6, label="bf16 reference")
            window = W_DEFAULT if case.get("layer", 0) % 2 == 0 else 0
            if window:
                for edge in (window, 2 * window):
                    if pos.max() >= edge - 1:
                        ax.axvline(edge - 0.5, color="k", ls="--", lw=1)
                ax.text(window - 0.5, ax.get_ylim()[1] * 0.9, f" W={window}", fontsize=8)
            name = _save_plot(fig, ax, img, f"{slug}-position.png", "position", "|output - oracle| (max over hidden)",
                              "block-output error against position")
            out.append((name, "Output error against position; dashes mark the window edges. Errors that start at W or 2W are window or cache bugs."))

    layers = r.get("layers") or []
    if len(layers) > 1:
        fig, ax = plt.subplots(figsize=(6, 3))
        ax.plot([l["layer"] for l in layers], [max(l["worst_ratio"] or 1e-3, 1e-3) for l in layers], "o-")
        ax.set_yscale("log")
        name = _save_plot(fig, ax, img, f"{slug}-layers.png", "layer", "worst ratio",
                          f"per-layer error ({case.get('stack_mode', '')})", legend=False)
        out.append((name, "Worst ratio per layer of the stack."))
    return out


CSS = """body{font-family:sans-serif;margin:2em;color:#222}table{border-collapse:collapse}
td,th{border:1px solid #ccc;padding:3px 8px;font-size:13px}th{background:#eee}.pass{color:#080}
.bad{color:#b00;font-weight:bold}pre{background:#f6f6f6;padding:8px;white-space:pre-wrap;font-size:12px}
img{max-width:100%;border:1px solid #ddd;margin:4px 0}figure{margin:0 0 1em 0}"""


def write_report(records: list[dict], directory: str | Path, history: str | Path | None = None,
                 run: str | None = None) -> Path:
    """`history`: a history store (harness/history.py); each failing or drifting check then gets a picture
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
        rows.append(f"<tr><td>{link}</td><td>{html.escape(r['candidate'])}</td><td class={cls}>{r['verdict'].upper()}{drift}</td>"
                    f"<td>{ratio}</td><td>{html.escape(str(r.get('first_divergent_stage') or '-'))}</td><td>{html.escape(probes)}</td></tr>")
    sections = []
    for r in failed + drifting:
        slug = _slug(r)
        figures = "".join(f'<figure><img src="img/{n}" alt="{html.escape(c)}"><figcaption>{html.escape(c)}</figcaption></figure>'
                          for n, c in (_plots(r, out / "img") if id(r) in failing else []))
        figures += report_history.figure(trends[slug]) if slug in trends else ""
        title = r["verdict"].upper() if id(r) in failing else f"PASS, drifting ({trends[slug].drift:.2f}x)"
        sections.append(f'<h2 id="{slug}">{html.escape(r["id"])} / {html.escape(r["candidate"])}: {title}</h2>'
                        f"<pre>{html.escape(r.get('message', ''))}</pre>"
                        f"<p>case: <code>{html.escape(json.dumps(r.get('case', {})))}</code></p>{figures}")
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>parity report</title><style>{CSS}</style></head><body>"
            f"<h1>gpt-oss attention parity</h1><p>{len(records) - len(failed)} passed, {len(failed)} failed"
            f"{f', {len(drifting)} drifting' if history else ''}.</p>"
            "<table><tr><th>case</th><th>candidate</th><th>verdict</th><th>worst ratio</th><th>first divergent stage</th>"
            f"<th>failed probes</th></tr>{''.join(rows)}</table>{''.join(sections)}</body></html>")
    index = out / "index.html"
    index.write_text(page)
    return index
