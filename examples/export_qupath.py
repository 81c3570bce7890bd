"""Export predicted masks as polygons that QuPath (and glomseg) open.

    python examples/export_qupath.py out/predictions [--min-area 400]

Turns every ``<id>.zarr`` mask in the folder into ``<id>.geojson``: a list of
GeoJSON Features classified "glomerulus", in full-resolution slide pixels, the
format of the HuBMAP annotation files. In QuPath: File > Import objects (or drag
the file onto the open slide). Regions smaller than ``--min-area`` pixels are
dropped as specks.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from glomseg import SlideMask


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("predictions", type=Path, help="folder of <id>.zarr masks")
    parser.add_argument("--min-area", type=float, default=400.0, help="square pixels")
    args = parser.parse_args()
    stores = sorted(args.predictions.glob("*.zarr"))
    if not stores:
        raise SystemExit(f"no <id>.zarr masks in {args.predictions}")
    for store in stores:
        target = store.with_suffix(".geojson")
        polygons = SlideMask(store).write_annotations(target, min_area=args.min_area)
        print(f"{target}: {len(polygons)} glomeruli")


if __name__ == "__main__":
    main()
