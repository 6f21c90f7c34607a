"""Where a build runs: the caller's Dask client, a scheduler by address, or a local cluster."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import dask


def local_cluster(workers: int, memory: str = "auto") -> Any:
    """A LocalCluster of ``workers`` single-threaded worker processes, without a dashboard.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that they hand freed memory
    back to the kernel at once. That also turns off glibc's adaptive mmap threshold: every batch's
    megabyte-sized buffers are then mapped, page-faulted in and unmapped again, which made decoding
    and writing twice as slow as in a plain process. Builds free what they allocate within seconds,
    so the workers keep glibc's defaults.
    """
    from distributed import LocalCluster

    with dask.config.set(
        {
            "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
            "distributed.worker.memory.pause": False,
            "distributed.worker.memory.terminate": False,
        }
    ):
        return LocalCluster(
            n_workers=workers,
            memory_limit=memory,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # a failed task's error reaches the client, which reports it once (one line for a
            # user's mistake such as a full disk); the worker's own copy would repeat its traceback
            silence_logs=logging.CRITICAL,
        )


@contextlib.contextmanager
def dask_client(workers: int, address: str | None = None, client: Any = None) -> Iterator[Any]:
    """The client to use: ``client`` when given (left open), else one on the scheduler at
    ``address``, else one on a LocalCluster of ``workers`` processes; what is made here is closed."""
    if client is not None:
        yield client
        return
    from distributed import Client

    # distributed sets its loggers to INFO on import; its chatter would drown the progress lines
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with contextlib.ExitStack() as owned:
        if address:
            made = owned.enter_context(Client(address))
        else:
            cluster = owned.enter_context(local_cluster(workers))
            made = owned.enter_context(Client(cluster))
        yield made
