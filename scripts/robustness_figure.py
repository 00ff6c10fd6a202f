#!/usr/bin/env python3
"""Draw the robustness curves of one ``vlwatch eval --degrade ...`` run as one small PNG (for docs/), and print the
numbers behind it as a Markdown table.

    .venv/bin/python scripts/robustness_figure.py REPORT_DIR/report.json docs/robustness_cpu.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from services.evaluation.degrade import LEVELS, UNITS  # noqa: E402
from services.evaluation.report import curves  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("report", type=Path)
    ap.add_argument("png", type=Path)
    args = ap.parse_args(argv)
    doc = json.loads(args.report.read_text())
    lines = curves(doc)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = 3
    rows = (len(lines) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.9 * rows), squeeze=False)
    for ax, (label, by_name) in zip(axes.flat, lines.items()):
        for name, points in by_name.items():
            ax.plot([s for s, _ in points], [v for _, v in points], marker="o", markersize=3, label=name)
        ax.set_title(label, fontsize=10)
        ax.set_xticks([0, 1, 2, 3], ["clean", "1", "2", "3"])
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(lines):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=8)
    fig.suptitle(f"{doc['set']['name']}: {doc['set']['images']} images, profile {doc['profile']} "
                 f"({', '.join(doc['analyzers'])}); strength 1-3 per degradation", fontsize=10)
    fig.tight_layout()
    args.png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.png, dpi=72, metadata={"Software": None})
    print(f"wrote {args.png} ({args.png.stat().st_size / 1000:.0f} kB)\n")
    print("| score | degradation | clean | 1 | 2 | 3 |\n| --- | --- | --- | --- | --- | --- |")
    for label, by_name in lines.items():
        for name, points in by_name.items():
            print(f"| {label} | {name} | " + " | ".join(f"{v:.3f}" for _, v in points) + " |")
    print("\nstrengths: " + "; ".join(f"{n} {', '.join(f'{v:g}' for v in LEVELS[n])} ({UNITS[n]})" for n in LEVELS))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
