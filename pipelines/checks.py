"""Checks of a build's inputs that need no Dask, no Prefect and no decoding.

They run before any service starts (`tmkt build-dataset` calls them first), so that a path typed
wrong costs a second and one line instead of a Prefect server start and a task traceback. The plan
repeats the folder checks for callers that start elsewhere (deployments, the Python API).
"""

from __future__ import annotations

from pathlib import Path

from dask.utils import parse_bytes

from pipelines.build.config import BuildConfig, BuildError
from storage.repo import check_store_path


def check_build_inputs(config: BuildConfig) -> list[str]:
    """Raise `BuildError` (or `storage.repo.NotAStore`) for inputs that cannot build; return notes.

    A note is a line for the user about a build that will work but maybe not as meant: a source that
    has static images, built without them, makes an event-only store, on which methods that mix
    statics into event sequences (tmkt, finetune, he2024, ...) cannot train.
    """
    check_store_path(config.store)
    if config.workers < 1 or config.batch_size < 1:
        raise BuildError(
            f"--workers and --batch-size must be at least 1, got {config.workers} and {config.batch_size}"
        )
    try:
        if parse_bytes(config.worker_memory) < 1:
            raise ValueError(config.worker_memory)
    except ValueError:
        raise BuildError(
            f"--worker-memory {config.worker_memory!r}: not a size such as 4GiB or 500MB"
        ) from None
    try:
        source = config.source_adapter()
    except (TypeError, ValueError) as err:  # an unknown source, or an option it does not take
        raise BuildError(f"source {config.source!r}: {err}") from None
    raw = Path(config.raw)
    if config.source != "builtin":
        if not raw.exists():
            raise BuildError(f"raw folder not found: {raw}")
        if not raw.is_dir():
            raise BuildError(f"raw folder {raw} is a file, not a folder")
    notes = []
    if config.static:
        if not Path(config.static).exists():
            raise BuildError(f"static folder not found: {config.static}")
    elif source.has_statics and source.default_static(raw) is None:
        notes.append(
            f"no --static given: the store will be event-only; methods that mix static images "
            f"(tmkt, tsm*, finetune, he2024) need a store built with --static (source {config.source})"
        )
    return notes
