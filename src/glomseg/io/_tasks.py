"""Run one task per slide, here or on a Dask client: the helper behind every ``client=``.

:func:`_run_tasks` runs a function once per slide, in this process in order or,
with a ``dask.distributed.Client``, one task per slide in the order they finish,
and yields each slide's result or error; export, evaluation and prediction of
many slides share it. Dask is imported only when a client is given.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

__all__: list[str] = []

logger = logging.getLogger(__name__)


def _check_client(client: object) -> None:
    """Raise TypeError unless ``client`` looks like a ``dask.distributed.Client``."""
    if not (callable(getattr(client, "submit", None)) and hasattr(client, "dashboard_link")):
        raise TypeError(f"client must be a dask.distributed.Client, got {type(client).__name__}")


def _run_tasks(
    function: Callable[..., Any],
    tasks: Mapping[str, tuple[Any, ...]],
    *,
    client: Any = None,
    resources: Mapping[str, float] | None = None,
    progress: bool = True,
    desc: str = "slides",
) -> Iterator[tuple[str, Any, BaseException | None]]:
    """Run ``function(*args)`` for each slide; yield ``(slide_id, result, error)`` as each ends.

    In this process, in order, without a client; with one, one task per slide
    (``pure=False``: every call runs), in the order they finish. A task whose
    workers kept dying comes back with the scheduler's error.
    """
    from tqdm import tqdm

    with tqdm(total=len(tasks), unit="slide", desc=desc, disable=not progress) as bar:
        if client is None:
            for slide_id, args in tasks.items():
                try:
                    result, error = function(*args), None
                except Exception as exc:
                    result, error = None, exc
                bar.update(1)
                yield slide_id, result, error
            return
        from distributed import as_completed

        link = getattr(client, "dashboard_link", None)
        if link:
            message = f"Dask dashboard: {link}"
            logger.info(message)
            if progress:
                bar.write(message)
        futures = {
            client.submit(
                function,
                *args,
                key=f"glomseg-{desc}-{slide_id}-{os.urandom(4).hex()}",
                pure=False,
                resources=dict(resources) if resources else None,
            ): slide_id
            for slide_id, args in tasks.items()
        }
        try:
            for future in as_completed(futures):  # type: ignore[no-untyped-call]
                slide_id = futures[future]
                try:
                    result, error = future.result(), None
                except Exception as exc:  # KilledWorker, or the task's own error
                    result, error = None, exc
                bar.update(1)
                yield slide_id, result, error
        finally:
            for future in futures:
                future.cancel()
