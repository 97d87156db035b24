"""The report's history pictures: each failing or drifting check's ratio across the runs of a history
store (harness/history.py), so a reader sees whether a failure came suddenly or crept up."""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from harness.history import DRIFT_FACTOR, DRIFT_FLOOR, History, Row, previous_rows
from harness.repro import safe_name


@dataclass
class Trend:
    image: str  # file name in the report's img/
    caption: str
    drift: float | None  # growth against the previous run where this check drifts, else None


def _is_drift(record: dict, before: Row | None) -> float | None:
    now = record.get("worst_ratio")
    if before is None or not before.passed or record["verdict"] != "pass" or now is None or before.worst_ratio is None:
        return None
    growth = now / max(before.worst_ratio, DRIFT_FLOOR)
    return growth if growth > DRIFT_FACTOR else None


def trends(records: list[dict], img: Path, history: str | Path, run: str | None) -> dict[str, Trend]:
    """Pictures for the records that fail or drift against their previous run, by record slug. `run`:
    the run these records were appended as (None: they are the history's latest rows, or not in it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    store = History(history)
    runs = store.runs()
    if not runs:
        return {}
    order = {r.id: i for i, r in enumerate(runs)}
    baseline = previous_rows(store, run or "")
    rows = store.rows()
    out = {}
    for r in records:
        drift = _is_drift(r, baseline.get((r["id"], r["candidate"])))
        if r["verdict"] == "pass" and drift is None:
            continue
        series = [x for x in rows if x.key == (r["id"], r["candidate"]) and x.worst_ratio is not None]
        if not series:
            continue
        slug = safe_name(f"{r['id']}--{r['candidate']}")
        fig, ax = plt.subplots(figsize=(8, 3))
        xs = [order[x.run] for x in series]
        ax.plot(xs, [max(x.worst_ratio, 1e-3) for x in series], "-", color="#888", lw=1)
        for verdict, colour in (("pass", "#080"), ("fail", "#b00")):
            pts = [(order[x.run], max(x.worst_ratio, 1e-3)) for x in series if (x.passed == (verdict == "pass"))]
            if pts:
                ax.scatter(*zip(*pts), color=colour, s=24, label=verdict, zorder=3)
        labels = {order[x.run]: f"{x.time[5:16]}\n{(x.commit or '')[:7]}" for x in series}
        ax.set_xticks(sorted(labels), [labels[i] for i in sorted(labels)], fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel("worst ratio")
        ax.set_title(f"{r['id']} / {r['candidate']} across runs", fontsize=10)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"{slug}-history.png"
        fig.savefig(img / name, dpi=90)
        plt.close(fig)
        caption = (f"Worst ratio of this check in each of the {len(series)} run(s) of {history} that checked it "
                   f"(x: run time, UTC, and commit).")
        if drift:
            caption += (f" It passes, but its ratio rose {drift:.2f}x against the previous run (drift: more than "
                        f"{DRIFT_FACTOR}x, from at least {DRIFT_FLOOR}).")
        out[slug] = Trend(name, caption, drift)
    return out


def figure(trend: Trend) -> str:
    return (f'<figure><img src="img/{trend.image}" alt="{html.escape(trend.caption)}">'
            f"<figcaption>{html.escape(trend.caption)}</figcaption></figure>")
