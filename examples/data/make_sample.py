"""Rebuild the bundled sample slides from the HuBMAP tiles they come from.

    python examples/data/make_sample.py /path/to/hubmap_tiles

Each chosen 1600x1200 JPEG tile becomes a small HuBMAP-style slide: a tiled,
JPEG-compressed TIFF (``<id>.tif``) beside its polygon JSON (``<id>.json``, copied
unchanged). See ``ATTRIBUTION.md`` for the source and licence.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

HERE = Path(__file__).resolve().parent / "sample"

#: Tiles with many glomeruli, spread over the slide; the last four are held out.
TRAIN = [17, 31, 34, 61, 63, 79, 92, 95, 107, 121, 124, 136, 249, 267, 279, 282]
HELD_OUT = [306, 323, 337, 338]
#: Held-out slides use other layouts than the training slides, to exercise the reader.
LAYOUTS = {306: "planar", 323: "pages", 337: "interleaved", 338: "interleaved"}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("tiles", type=Path, help="folder of van0013_train_<n>.jpg/.json")
    args = parser.parse_args()
    HERE.mkdir(parents=True, exist_ok=True)
    for n in TRAIN + HELD_OUT:
        name = f"van0013_train_{n}"
        rgb = np.asarray(Image.open(args.tiles / f"{name}.jpg").convert("RGB"))
        layout = LAYOUTS.get(n, "interleaved")
        options = {"tile": (256, 256), "compression": "jpeg", "compressionargs": {"level": 80}}
        if layout == "interleaved":
            tifffile.imwrite(HERE / f"{name}.tif", rgb, photometric="rgb", **options)
        elif layout == "planar":
            planar = np.ascontiguousarray(rgb.transpose(2, 0, 1))
            tifffile.imwrite(
                HERE / f"{name}.tif", planar, photometric="rgb", planarconfig="separate", **options
            )
        else:  # one page per colour
            planar = np.ascontiguousarray(rgb.transpose(2, 0, 1))
            tifffile.imwrite(
                HERE / f"{name}.tif", planar, photometric="minisblack", metadata=None, **options
            )
        shutil.copyfile(args.tiles / f"{name}.json", HERE / f"{name}.json")
        print(name, layout)


if __name__ == "__main__":
    main()
