"""Quickstart: open the bundled sample slides and draw their glomeruli.

    python examples/quickstart.py [--sample examples/data/sample] [--out out/quickstart]

Opens every sample slide with :class:`glomseg.SlideReader` (whatever its TIFF
layout), reads it at 4x downsample, outlines the glomerulus polygons of its JSON,
and writes a contact sheet ``overview.png`` a person can look at.
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.draw import line

from glomseg import SlideReader

HERE = Path(__file__).resolve().parent


def outline(image: np.ndarray, features: list[dict], scale: float) -> None:
    """Draw each polygon's outer ring in green; GeoJSON is [x, y] = [col, row]."""
    for feature in features:
        geometry = feature["geometry"]
        polygons = geometry["coordinates"]
        if geometry["type"] == "Polygon":
            polygons = [polygons]
        for polygon in polygons:
            ring = np.rint(np.asarray(polygon[0], dtype=float) / scale).astype(int)
            for (c0, r0), (c1, r1) in itertools.pairwise(ring):
                rr, cc = line(r0, c0, r1, c1)
                keep = (rr >= 0) & (rr < image.shape[0]) & (cc >= 0) & (cc < image.shape[1])
                image[rr[keep], cc[keep]] = (0, 200, 0)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--sample", type=Path, default=HERE / "data" / "sample")
    parser.add_argument("--out", type=Path, default=Path("out") / "quickstart")
    parser.add_argument("--downsample", type=float, default=4.0)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    thumbs = []
    for path in sorted(args.sample.glob("*.tif")):
        with SlideReader(path) as slide:
            image = slide.read(downsample=args.downsample)
            features = json.loads(path.with_suffix(".json").read_text())
            outline(image, features, args.downsample)
            print(
                f"{path.name}: {slide.shape[0]}x{slide.shape[1]} px, {slide.layout}, "
                f"{len(features)} glomeruli"
            )
        thumbs.append(image)
    columns = 5
    h, w = thumbs[0].shape[:2]
    rows = -(-len(thumbs) // columns)
    sheet = np.full((rows * h, columns * w, 3), 255, dtype=np.uint8)
    for i, thumb in enumerate(thumbs):
        r, c = divmod(i, columns)
        sheet[r * h : r * h + thumb.shape[0], c * w : c * w + thumb.shape[1]] = thumb
    target = args.out / "overview.png"
    Image.fromarray(sheet).save(target)
    print(f"wrote {target}")


if __name__ == "__main__":
    main()
