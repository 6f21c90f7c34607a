"""Where a build runs: the caller's Dask client, a scheduler by address, or a local cluster."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import dask
from dask.utils import parse_bytes

from pipelines.build.config import BuildConfig


def local_cluster(workers: int, memory: str = BuildConfig.worker_memory) -> Any:
    """A LocalCluster of ``workers`` single-threaded worker processes, without a dashboard, each
    with ``memory`` (at most the machine's memory over ``workers``).

    A build's worker holds a few batches and the shards being filled (`pipelines.build.stream`);
    past Dask's ``target`` share of that memory it would move the oldest results to its local
    folder. It is never paused or restarted for its memory, since both would stall or fail a build
    whose results are still to be written.

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
            # spill by the results' own sizes only (`target`): spilling by the process's RSS, which
            # glibc keeps high after frees (see above), made a worker read each result back and
            # spill it again at once, without end (a 70,000-file refresh ran for minutes so)
            "distributed.worker.memory.spill": False,
            "distributed.worker.memory.pause": False,
            "distributed.worker.memory.terminate": False,
        }
    ):
        return LocalCluster(
            n_workers=workers,
            memory_limit=min(parse_bytes(memory), system_memory() // workers),
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # a failed task's error reaches the client, which reports it once (one line for a
            # user's mistake such as a full disk); the worker's own copy would repeat its traceback
            silence_logs=logging.CRITICAL,
        )


def system_memory() -> int:
    from distributed.system import MEMORY_LIMIT

    return int(MEMORY_LIMIT)


@contextlib.contextmanager
def dask_client(config: BuildConfig, client: Any = None) -> Iterator[Any]:
    """The client to use: ``client`` when given (left open), else one on the scheduler at
    ``config.dask_address``, else one on a LocalCluster of ``config.workers`` processes; what is made
    here is closed."""
    if client is not None:
        yield client
        return
    from distributed import Client

    # distributed sets its loggers to INFO on import; its chatter would drown the progress lines
    logging.getLogger("distributed").setLevel(logging.WARNING)
    with contextlib.ExitStack() as owned:
        if config.dask_address:
            made = owned.enter_context(Client(config.dask_address))
        else:
            cluster = owned.enter_context(local_cluster(config.workers, config.worker_memory))
            made = owned.enter_context(Client(cluster))
        yield made
