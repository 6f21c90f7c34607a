"""Raw recordings and static images in, one new store snapshot out.

A build runs in stages that pass paths and ids, never arrays, so an orchestrator can wrap each:

1. `plan_build` (`plan`): list the source, read the previous snapshot's manifest, assign splits,
   and cut the work into batches.
2. `process_batch` (`process`, on Dask workers): hash, decode or reuse, bin to frames, quarantine
   bad files.
   A refresh stats first: `noop_refresh` answers "nothing changed" from sizes and mtimes alone,
   before any cluster starts.
3. `execute_plan` (`write`): write whole shards from the workers into one transaction, attach
   manifest and report (`report`), and commit once.

`config` holds what a build is asked to do; `cluster` where it runs.
"""

from pipelines.build.cluster import dask_client, local_cluster
from pipelines.build.config import (
    DEFAULT_SIZES,
    DEFAULT_STATIC_FITS,
    BuildConfig,
    BuildError,
    add_build_arguments,
    build_config_from_args,
)
from pipelines.build.plan import BuildPlan, Work, plan_build
from pipelines.build.process import (
    BatchResult,
    hash_batch,
    load_static_rows,
    probe_statics,
    process_batch,
    stat_batch,
)
from pipelines.build.write import (
    STATIC_STORE_SIZE,
    BuildResult,
    execute_plan,
    noop_refresh,
    run_as_writer,
    run_build,
)

__all__ = [
    "DEFAULT_SIZES",
    "DEFAULT_STATIC_FITS",
    "STATIC_STORE_SIZE",
    "BatchResult",
    "BuildConfig",
    "BuildError",
    "BuildPlan",
    "BuildResult",
    "Work",
    "add_build_arguments",
    "build_config_from_args",
    "dask_client",
    "execute_plan",
    "hash_batch",
    "load_static_rows",
    "local_cluster",
    "noop_refresh",
    "plan_build",
    "probe_statics",
    "process_batch",
    "run_as_writer",
    "run_build",
    "stat_batch",
]
