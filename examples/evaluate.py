"""Step 4: score predicted slides against their polygons: per-slide and mean Dice.

    python examples/evaluate.py out/predictions --annotations DIR

Pairs every ``<id>.zarr`` mask in the predictions folder with ``<id>.json`` in the
annotations folder and prints each slide's Dice and the mean (the Kaggle score,
with Dice 1 when both masks are empty). Masks are compared window by window, so
two full-size masks are never in memory at once.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glomseg import SlideMask, evaluate_slides


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("predictions", type=Path, help="folder of <id>.zarr masks")
    parser.add_argument("--annotations", type=Path, required=True, help="folder of <id>.json")
    args = parser.parse_args()
    pairs = {
        store.stem: (SlideMask(store), args.annotations / f"{store.stem}.json")
        for store in sorted(args.predictions.glob("*.zarr"))
    }
    if not pairs:
        raise SystemExit(f"no <id>.zarr masks in {args.predictions}")
    report = evaluate_slides(pairs)
    for slide_id, score in report.per_slide.items():
        print(f"{slide_id}: Dice {score.dice:.4f}")
    print(f"mean Dice over {len(pairs)} slides: {report.mean:.4f}")


if __name__ == "__main__":
    main()
