"""Reading and decoding the tiles or strips of a TIFF page, and a cache of decoded ones."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import tifffile

from glomseg.errors import SlideReadError

if TYPE_CHECKING:
    from pathlib import Path

    from numpy.typing import NDArray

    from glomseg.io._tiff_layout import Plane

__all__: list[str] = []

#: Bytes of encoded segments read from the file at once.
_READ_BYTES = 32 * 2**20


class SegmentCache:
    """A byte-bounded LRU cache of decoded segments, safe across threads."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.nbytes = 0
        self._items: OrderedDict[tuple[int, int], NDArray[Any]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[int, int]) -> NDArray[Any] | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: tuple[int, int], value: NDArray[Any]) -> None:
        if value.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._items:
                return
            self._items[key] = value
            self.nbytes += value.nbytes
            while self.nbytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self.nbytes -= old.nbytes

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.nbytes = 0


def decode_segments(
    tif: tifffile.TiffFile,
    plane: Plane,
    indices: Sequence[int],
    *,
    path: Path,
    max_workers: int,
) -> Iterator[tuple[int, NDArray[Any]]]:
    """Decode segments ``indices`` of ``plane``, yielding ``(index, pixels)`` as each is ready.

    Encoded segments are read in batches of about ``_READ_BYTES`` and decoded by
    ``max_workers`` threads; any failure is a :class:`SlideReadError` naming
    ``path`` and the segment.
    """
    if not indices:
        return
    fh = tif.filehandle
    idx = np.asarray(indices, dtype=np.int64)
    samples = 1 if plane.separate else plane.samples

    def decode(item: tuple[bytes | None, int]) -> tuple[int, NDArray[Any]]:
        data, index = item
        where = f"segment {index} ({plane.segment_kind}) of {plane.name}"
        seg_window = plane.window_of(index)
        if data is None or len(data) == 0:  # pragma: no cover - missing ones are not read
            raise SlideReadError(f"{path}: {where}: no data")
        try:
            raw, _, _ = plane.decode(data, index, **plane.decode_args)
            raw = np.asarray(raw)
            decoded: NDArray[Any] = raw.reshape(raw.shape[-3:])
        except NotImplementedError as exc:
            raise SlideReadError(
                f"{path}: cannot decode {where}: unsupported by the decoder ({exc})"
            ) from exc
        except Exception as exc:
            raise SlideReadError(
                f"{path}: cannot decode {where} (corrupt or truncated data: "
                f"{type(exc).__name__}: {exc})"
            ) from exc
        if (
            decoded.shape[0] < seg_window.height
            or decoded.shape[1] < seg_window.width
            or decoded.shape[2] != samples
        ):
            raise SlideReadError(
                f"{path}: {where} decodes to {decoded.shape}, "
                f"not the {(*seg_window.shape, samples)} its tags promise (corrupt data)"
            )
        return index, decoded[: seg_window.height, : seg_window.width]

    pool = ThreadPoolExecutor(max_workers) if max_workers > 1 else None
    try:
        # Encoded segments come in batches of about _READ_BYTES, so memory stays bounded.
        batches: Iterator[Any] = fh.read_segments(
            plane.offsets[idx].tolist(),
            plane.bytecounts[idx].tolist(),
            indices=idx.tolist(),
            sort=True,
            lock=fh.lock,
            buffersize=_READ_BYTES,
            flat=False,
        )
        for batch in batches:
            if pool is not None and len(batch) > 1:
                yield from pool.map(decode, batch)
            else:
                yield from map(decode, batch)
    except SlideReadError:
        raise
    except Exception as exc:  # reading the file failed (changed or cut since opening?)
        raise SlideReadError(
            f"{path}: cannot read the data of {plane.name} ({type(exc).__name__}: {exc})"
        ) from exc
    finally:
        if pool is not None:
            pool.shutdown()
