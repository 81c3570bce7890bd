"""Draw the benchmark figures recorded in ``results.json`` as one PNG for the docs.

    python benchmarks/plot_results.py [--out docs/_static/benchmarks.png]

Each panel compares glomseg with the naive or common approach of its benchmark:
wall time in the top row, peak memory in the bottom row, on linear scales from 0. Needs
matplotlib (in the ``docs`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--results", type=Path, default=HERE / "results.json")
    parser.add_argument(
        "--out", type=Path, default=HERE.parent / "docs" / "_static" / "benchmarks.png"
    )
    args = parser.parse_args()

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    results = json.loads(args.results.read_text())
    cases = [
        (script, case, values)
        for script, table in results.items()
        if not script.startswith("_")
        for case, values in table.items()
        if case != "unit"
    ]
    fig, axes = plt.subplots(2, len(cases), figsize=(2.3 * len(cases), 5.2), squeeze=False)
    colors = {"glomseg": "#2a9d58", "naive": "#9a9a9a"}
    for column, (script, case, values) in enumerate(cases):
        units = results[script]["unit"]
        for row in range(2):
            ax = axes[row][column]
            names = list(values)
            heights = [values[name][row] for name in names]
            ax.bar(names, heights, color=[colors[n] for n in names])
            ax.set_ylim(0, max(heights) * 1.15)
            ax.set_ylabel(units[row], fontsize=8)
            ax.tick_params(labelsize=8)
            for x, height in enumerate(heights):
                ax.annotate(f"{height:g}", (x, height), ha="center", va="bottom", fontsize=7)
            if row == 0:
                ax.set_title(f"{script}\n{case}", fontsize=8)
    fig.tight_layout()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=110)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
