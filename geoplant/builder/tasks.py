"""Running a build's dask tasks: on local threads or on a dask.distributed cluster, with a
progress bar, and never leaving a write running once a run has returned or failed."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Final

__all__ = ["compute_and_wait", "run_tasks", "settle_zarr_writes"]

#: How long a failed build waits for zarr's chunk writes still in flight.
_SETTLE_S: Final = 30.0


def run_tasks(tasks: list[Any], scheduler: str | None, workers: int | None, desc: str,
              progress: bool) -> list[dict[str, Any]]:
    """Compute dask delayed tasks with a progress bar, locally or on a distributed cluster.

    Locally, the first failure stops the run: dask submits no more tasks, and the blocks
    already running are waited for, so nothing writes the store once this returns.

    Parameters
    ----------
    tasks
        Dask delayed objects.
    scheduler
        Address of a dask.distributed scheduler; ``None``: local threads.
    workers
        Local worker threads (default: all cores).
    desc
        Label of the progress bar.
    progress
        Show the progress bar.

    Returns
    -------
    list
        The tasks' results (in task order locally, in completion order on a cluster).
    """
    from dask.callbacks import Callback
    from tqdm.auto import tqdm

    if not tasks:
        return []
    if scheduler:
        return _run_distributed(tasks, scheduler, desc, progress)
    bar = tqdm(total=len(tasks), desc=desc, disable=not progress)
    keys = {t.key for t in tasks}

    class _Bar(Callback):
        def _posttask(self, key: Any, result: Any, dsk: Any, state: Any, id: Any) -> None:
            if key in keys:
                bar.update(1)

    try:
        with _Bar():
            return compute_and_wait(tasks, workers)
    finally:
        bar.close()


def compute_and_wait(tasks: Sequence[Any], workers: int | None) -> list[Any]:
    """Compute dask objects on local threads; return only once no task runs any more.

    On a failure dask raises at once while the other running tasks go on writing; waiting for
    them keeps writes from outliving the build (and its lock) or racing a clean-up.
    """
    import dask
    import dask.threaded

    # dask's own pool class where it has one (it hands contextvars to the workers)
    pool_type = getattr(dask.threaded, "ContextAwareThreadPoolExecutor", ThreadPoolExecutor)
    pool = pool_type(workers or os.cpu_count())
    try:
        return list(dask.compute(*tasks, scheduler="threads", pool=pool))
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _run_distributed(tasks: list[Any], scheduler: str, desc: str,
                     progress: bool) -> list[dict[str, Any]]:
    """Compute tasks on a dask.distributed cluster; the first failure cancels the rest."""
    from distributed import Client, as_completed
    from tqdm.auto import tqdm

    with Client(scheduler) as client:
        futures = client.compute(tasks)
        results = []
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc=desc,
                               disable=not progress):
                results.append(future.result())
        except BaseException:
            client.cancel(futures)
            raise
        return results


def settle_zarr_writes() -> None:
    """Wait for the chunk writes zarr still has in flight after one of them failed.

    zarr writes a region's chunks concurrently on its own event loop; when one fails (a full
    disk) the others run on. Waiting for them means nothing writes the store once the lock is
    released, and asyncio prints no "Task was destroyed but it is pending!" at exit.
    """
    with contextlib.suppress(Exception):  # zarr.core.sync is internal: best effort
        from zarr.core.sync import sync

        sync(_pending_writes_done())


async def _pending_writes_done() -> None:
    """Wait (at most :data:`_SETTLE_S`) for every other task of zarr's event loop."""
    me = asyncio.current_task()
    pending = [t for t in asyncio.all_tasks() if t is not me]
    if pending:
        await asyncio.wait(pending, timeout=_SETTLE_S)
