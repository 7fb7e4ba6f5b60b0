"""Plot fan-out and aggregate latency against fleet size from bench_operator.py's JSON lines.

    python benchmarks/bench_operator.py --devices 1000 2000 5000 10000 --json scale.jsonl
    python benchmarks/plot_scale.py scale.jsonl [--out docs/benchmarks-scale.png]

One figure, four panels against the number of devices, each point labelled with its value: the
seconds from applying a Deployment to every desired-state key written (fan-out), from the last
device report to the Deployment's status counting every device (aggregate), and the batched
rollout's start -> paused on the injected failures and resume -> complete.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import matplotlib as mpl

mpl.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

PANELS = (
    ("fanout_s", "fan-out: Deployment -> all keys written"),
    ("aggregate_s", "aggregate: last report -> status complete"),
    ("batched_pause_s", "batched (10 %): start -> paused on failures"),
    ("batched_resume_to_complete_s", "batched: resume -> complete"),
)


def main(source: Path, out: Path) -> None:
    rows = [json.loads(line) for line in source.read_text().splitlines() if line.strip()]
    rows.sort(key=lambda r: r["devices"])
    mirroring = all(r.get("mirroring") for r in rows)
    fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), constrained_layout=True)
    for ax, (key, title) in zip(axes.flat, PANELS, strict=True):
        points = [(r["devices"], r[key]) for r in rows if key in r]
        sizes = [x for x, _ in points]
        values = [y for _, y in points]
        ax.plot(sizes, values, marker="o")
        for x, y in points:
            ax.annotate(f"{y:.2f}s", (x, y), textcoords="offset points", xytext=(0, 6),
                        ha="center", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("simulated devices")
        ax.set_ylabel("seconds")
        ax.set_xticks(sizes)
        ax.set_ylim(bottom=0, top=(max(values) * 1.25 if values else 1) or 1)
        ax.grid(alpha=0.3)
    loads = ", ".join(f"{r['load_1m']:g}" + (f"-{r['load_1m_end']:g}" if "load_1m_end" in r
                                              else "") for r in rows)
    fig.suptitle("fleet-operator at scale (Device mirroring "
                 f"{'on' if mirroring else 'off'}; 1-min load at start-end: {loads})",
                 fontsize=11)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path)
    parser.add_argument("--out", type=Path, default=Path("docs/benchmarks-scale.png"))
    ns = parser.parse_args()
    main(ns.source, ns.out)
