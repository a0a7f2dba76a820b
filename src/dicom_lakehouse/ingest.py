"""The bronze ingest job: list the lake, land new file versions, quarantine bad files.

Every listed file ends in exactly one of: ingested (bronze_instances),
unchanged (that version landed before), quarantined (bronze_quarantine),
ignored (service files) or foreign (reported in ``lake_files``). Each batch
is one Delta commit per table, written with an idempotent transaction id, and
a re-run skips every file version already committed, so a killed run re-run
ends with no duplicates and nothing missing.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dicom_lakehouse.config import LakeConfig, Settings
from dicom_lakehouse.extract import ExtractOptions
from dicom_lakehouse.io.delta import DeltaTables, commit_mark
from dicom_lakehouse.io.lease import LeaseHandle, LeaseHeldError, job_lease
from dicom_lakehouse.lake.backend import BackendSpec, open_backend
from dicom_lakehouse.lake.walker import plan_listing
from dicom_lakehouse.phases import timed
from dicom_lakehouse.spark import get_spark

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = [
    "BRONZE_INSTANCES",
    "BRONZE_QUARANTINE",
    "INGEST_RUNS",
    "LAKE_FILES",
    "IngestSummary",
    "RunContext",
    "run_ingest",
]

logger = logging.getLogger(__name__)

BRONZE_INSTANCES = "bronze_instances"
BRONZE_QUARANTINE = "bronze_quarantine"
LAKE_FILES = "lake_files"
INGEST_RUNS = "ingest_runs"
_VERSION_KEY = ["file_path", "file_size", "last_modified", "etag"]
_RETRYABLE = ("read_error",)
# the Hadoop path broadcasts the listing of at most this many new files to its scan
_BROADCAST_FILES = 500_000


@dataclass(frozen=True, slots=True)
class RunContext:
    """Run identity and clock, injectable so tests can compare whole tables."""

    run_id: str = field(default_factory=lambda: uuid.uuid4().hex)
    started_at: datetime = field(default_factory=lambda: datetime.now(UTC))


@dataclass(slots=True)
class IngestSummary:
    """What one ingest run did; ``as_dict`` is the CLI's JSON summary."""

    run_id: str
    files_listed: int = 0
    files_ingested: int = 0
    files_unchanged: int = 0
    files_quarantined: int = 0
    files_ignored: int = 0
    files_foreign: int = 0
    files_vanished: int = 0
    bytes_read: int = 0
    lake_bytes: int = 0
    batches: int = 0
    seconds: float = 0.0
    quarantine_reasons: dict[str, int] = field(default_factory=dict)
    foreign_reasons: dict[str, int] = field(default_factory=dict)
    partitions: dict[str, int] = field(default_factory=dict)
    phase_seconds: dict[str, float] = field(default_factory=dict)
    skipped_reason: str | None = None

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Time a phase of the run into ``phase_seconds``."""
        return timed(self.phase_seconds, name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def accounted(self) -> int:
        return (
            self.files_ingested
            + self.files_unchanged
            + self.files_quarantined
            + self.files_ignored
            + self.files_foreign
        )


def backend_spec(settings: Settings) -> BackendSpec:
    return BackendSpec(settings.lake.root, tuple(sorted(settings.lake.storage.items())))


def extract_options(settings: Settings) -> ExtractOptions:
    cfg = settings.ingest
    return ExtractOptions(
        header_bytes=cfg.header_bytes,
        max_header_bytes=cfg.max_header_bytes,
        defer_size=cfg.defer_size,
        bulk_data_threshold=cfg.bulk_data_threshold,
        io_threads=cfg.io_threads,
    )


# Per-file min/max statistics only where readers filter: refine reads new rows by
# run_id (the 42nd column, past Delta's default of the first 32), cohorts and audits
# by keys and dates. Patient names, ids and birth dates stay out of the log's stats.
_PROPERTIES: dict[str, dict[str, str]] = {
    BRONZE_INSTANCES: {
        "delta.dataSkippingStatsColumns": ",".join(
            (
                "file_path",
                "partition_name",
                "watermark",
                "study_instance_uid",
                "series_instance_uid",
                "sop_instance_uid",
                "sop_class_uid",
                "modality",
                "study_date",
                "ingested_at",
                "run_id",
            )
        )
    },
}


def ensure_bronze_tables(tables: DeltaTables) -> set[str]:
    """Create the ingest's tables if missing; return the names created now."""
    from dicom_lakehouse import schemas

    specs = (
        (BRONZE_INSTANCES, schemas.BRONZE_INSTANCES, "One row per DICOM file version"),
        (BRONZE_QUARANTINE, schemas.BRONZE_QUARANTINE, "Files that could not be read as DICOM"),
        (LAKE_FILES, schemas.LAKE_FILES, "The latest listing of the lake, every file"),
        (INGEST_RUNS, schemas.INGEST_RUNS, "One row per completed ingest run"),
    )
    # side by side: each is one driver-side commit (job_leases is made by the lease)
    with ThreadPoolExecutor(len(specs), thread_name_prefix="dl-tables") as pool:
        made = {
            name: pool.submit(
                tables.ensure, name, schema, comment=note, properties=_PROPERTIES.get(name)
            )
            for name, schema, note in specs
        }
        return {name for name, done in made.items() if done.result()}


def _sql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@dataclass(frozen=True, slots=True)
class _Listing:
    files: int
    fingerprint: str


@dataclass(frozen=True, slots=True)
class _State:
    """What the last completed runs left: the scope's listing (when nothing is
    pending) and the last run of the service (it held the ingest lease)."""

    listing: _Listing | None = None
    last_run_id: str | None = None


def run_ingest(
    settings: Settings,
    spark: SparkSession | None = None,
    *,
    run: RunContext | None = None,
    progress: Callable[[str], None] | None = None,
) -> IngestSummary:
    """Run one ingest of ``settings.lake`` into the bronze tables."""
    from pyspark import StorageLevel

    from dicom_lakehouse.bronze import list_on_driver, listing_dataframe, listing_from_arrow

    started = time.perf_counter()
    run = run or RunContext()
    say = progress or (lambda message: logger.info("%s", message))
    spark = get_spark(settings.spark, spark)
    lake = settings.lake
    tables = DeltaTables(spark, settings.tables)
    spec = backend_spec(settings)
    summary = IngestSummary(run_id=run.run_id)
    scope = f"workspace = {_sql_str(lake.workspace)} AND service = {_sql_str(lake.service)}"
    if lake.partitions is not None:
        folders = ", ".join(_sql_str(p) for p in sorted(set(lake.partitions) | {""}))
        scope += f" AND partition_folder IN ({folders})"

    hadoop = lake.access == "hadoop"
    if hadoop:
        from dicom_lakehouse.lake.hadoop import qualified_root

        # the spec carries the root as Hadoop qualifies it; it is never opened
        spec, tasks = BackendSpec(qualified_root(spark, lake.root)), []
        say(f"listing {lake.workspace}/{lake.service} through Hadoop's filesystem")
    else:
        tasks = plan_listing(
            open_backend(spec),
            lake.workspace,
            lake.service,
            partitions=lake.partitions,
            digits=lake.shard_digits,
        )
        say(f"listing {len(tasks)} shard task(s) of {lake.workspace}/{lake.service}")
    lease_name = f"ingest/{lake.workspace}/{lake.service}"
    ttl = timedelta(minutes=settings.ingest.lease_minutes)
    # A first run always lands files: its lease is taken while the lake is listed.
    # Later runs take it only once the listing shows work (a re-run that finds the
    # lake unchanged makes no commit at all).
    first_run = not tables.exists(INGEST_RUNS)
    # nothing has landed yet: the headers are read while the tables are still made
    all_new = (
        first_run and not tables.exists(BRONZE_INSTANCES) and not tables.exists(BRONZE_QUARANTINE)
    )
    with contextlib.ExitStack() as stack:
        held: LeaseHandle | None = None
        if first_run:
            held = stack.enter_context(job_lease(tables, lease_name, run.run_id, ttl=ttl))
        # the lake is listed while the tables are made and the last run's state is read
        prep = ThreadPoolExecutor(1, thread_name_prefix="dl-prep")
        ready = prep.submit(_prepare, summary, tables, lake, scope)
        prep.shutdown(wait=False)
        where = (lake.workspace, lake.service, lake.verify_name_prefix)
        with summary.phase("list"):
            if hadoop:
                from dicom_lakehouse.lake.hadoop import hadoop_listing

                listing = hadoop_listing(spark, lake, spec.root)
            elif (
                small := list_on_driver(spec, tasks, *where, limit=lake.driver_listing_limit)
            ) is not None:
                listing = listing_from_arrow(spark, small)
            else:
                listing = listing_dataframe(spark, spec, tasks, *where)
            listing = listing.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            with summary.phase("list"):
                listed = _count_listing(listing, summary)
            # a first run's state is known: nothing has landed
            previous = _State() if all_new else ready.result()[1]
            instances = summary.files_listed - summary.files_ignored - summary.files_foreign
            unchanged = previous.listing == listed and settings.ingest.skip_unchanged_listing
            if unchanged and held is None:
                # the last completed run saw exactly this listing and left nothing to retry
                summary.files_unchanged = instances
                say(f"listed {summary.files_listed} files: unchanged since the last run")
            else:
                # The run's record in ingest_runs is its release: the next run takes
                # the lease of a recorded run at once, so a recorded run skips the
                # release commit (a failed one releases; a killed one expires).
                if held is None:
                    held = stack.enter_context(
                        job_lease(
                            tables,
                            lease_name,
                            run.run_id,
                            ttl=ttl,
                            finished=[previous.last_run_id] if previous.last_run_id else [],
                        )
                    )
                _land(
                    spark,
                    settings,
                    tables,
                    spec,
                    run,
                    listing,
                    scope,
                    all_new,
                    ready,
                    summary,
                    say,
                    held,
                )
                with summary.phase("record"):
                    _record_run(spark, tables, lake, scope, run, listed, summary)
                held.recorded()
        except LeaseHeldError as exc:
            # an overlapping scheduled run is still landing files: leave it to it
            summary.skipped_reason = "lease_held"
            say(f"skipped: {exc}")
        finally:
            listing.unpersist()
    summary.seconds = round(time.perf_counter() - started, 3)
    if settings.mlflow.tracking_uri:
        from dicom_lakehouse.tracking import lake_params, log_job

        log_job(settings, "ingest", lake_params(settings), summary.as_dict())
    return summary


def _land(
    spark: SparkSession,
    settings: Settings,
    tables: DeltaTables,
    spec: BackendSpec,
    run: RunContext,
    listing: DataFrame,
    scope: str,
    all_new: bool,
    ready: Future[tuple[set[str], _State]],
    summary: IngestSummary,
    say: Callable[[str], None],
    held: LeaseHandle,
) -> None:
    """Replace the listing in lake_files and land every new file version.

    Read-only work (comparing, reading headers) starts while the lease is still
    being acquired, and on a first run (``all_new``) while the tables are still
    being made; every write waits for both (``held.wait()``, ``ready``)."""
    from pyspark.sql import functions as F

    lake = settings.lake
    stamped = listing.select(
        F.lit(lake.workspace).alias("workspace"),
        F.lit(lake.service).alias("service"),
        "*",
        F.lit(run.started_at).cast("timestamp").alias("listed_at"),
        F.lit(run.run_id).alias("run_id"),
    )

    def write_listing() -> None:
        held.wait()
        made, _ = ready.result()
        with summary.phase("lake_files"):
            if LAKE_FILES in made:
                tables.append(stamped, LAKE_FILES)
            else:
                tables.replace_where(stamped, LAKE_FILES, scope)

    # the listing's commit is independent of the bronze work: run them side by side
    with ThreadPoolExecutor(1, thread_name_prefix="dl-listing") as pool:
        listing_written = pool.submit(write_listing)
        _land_instances(
            spark, settings, tables, spec, run, listing, all_new, ready, summary, say, held
        )
        listing_written.result()


def _land_instances(
    spark: SparkSession,
    settings: Settings,
    tables: DeltaTables,
    spec: BackendSpec,
    run: RunContext,
    listing: DataFrame,
    all_new: bool,
    ready: Future[tuple[set[str], _State]],
    summary: IngestSummary,
    say: Callable[[str], None],
    held: LeaseHandle,
) -> None:
    from pyspark.sql import functions as F

    instances = listing.where(F.col("kind") == "instance")
    instance_count = summary.files_listed - summary.files_ignored - summary.files_foreign
    if all_new or {BRONZE_INSTANCES, BRONZE_QUARANTINE} <= ready.result()[0]:
        # nothing has landed yet: every listed instance (the listing is persisted)
        candidates, todo = instances, instance_count
    else:
        with summary.phase("compare"):
            # Checkpoint: Delta reads the latest snapshot on every action, so a lazy
            # anti-join would shrink as the batches commit.
            candidates = _new_versions(instances, tables).localCheckpoint(eager=True)
            todo = candidates.count()
    summary.files_unchanged = instance_count - todo
    say(
        f"listed {summary.files_listed} files: {todo} new file versions, "
        f"{summary.files_unchanged} unchanged"
    )
    if todo:
        _ingest_candidates(
            spark, settings, tables, spec, run, candidates, todo, ready, summary, say, held
        )


def _count_listing(listing: DataFrame, summary: IngestSummary) -> _Listing:
    """Count the listing by kind and fingerprint it, in one Spark job."""
    from pyspark.sql import functions as F

    version = F.xxhash64("file_path", "file_size", "last_modified", "etag", "kind", "reason")
    rows = (
        listing.groupBy("kind", "reason", "partition_name")
        .agg(
            F.count("*").alias("n"),
            F.sum("file_size").alias("bytes"),
            F.sum(version.cast("decimal(38,0)")).alias("fingerprint"),
        )
        .collect()
    )
    fingerprint = 0
    for row in rows:
        fingerprint += int(row["fingerprint"] or 0)
        summary.files_listed += row["n"]
        if row["kind"] == "ignored":
            summary.files_ignored += row["n"]
        elif row["kind"] == "foreign":
            summary.files_foreign += row["n"]
            reason = row["reason"] or "unknown"
            summary.foreign_reasons[reason] = summary.foreign_reasons.get(reason, 0) + row["n"]
        else:
            summary.lake_bytes += row["bytes"] or 0
            name = row["partition_name"]
            summary.partitions[name] = summary.partitions.get(name, 0) + row["n"]
    return _Listing(summary.files_listed, str(fingerprint))


def _prepare(
    summary: IngestSummary, tables: DeltaTables, lake: LakeConfig, scope: str
) -> tuple[set[str], _State]:
    """Create the tables, then read the last run's state (none when ingest_runs was
    created just now)."""
    with summary.phase("tables"):
        created = ensure_bronze_tables(tables)
    with summary.phase("state"):
        state = _State() if INGEST_RUNS in created else _previous_run(tables, lake, scope)
    return created, state


_RUN_MARK = "dicom_lakehouse.ingest_run/1"
_BATCH_MARK = "dicom_lakehouse.ingest_batch/1"


def batch_metadata(run_id: str) -> str:
    """A bronze batch commit's metadata: the run that landed it, so refine finds the
    rows of a run that died before its ``ingest_runs`` record (table history only)."""
    return json.dumps({"kind": _BATCH_MARK, "run_id": run_id})


def batch_run_id(user_metadata: str | None) -> str | None:
    """The run id in a bronze commit's metadata (None for other commits)."""
    return _marked_run_id(user_metadata, _BATCH_MARK)


def recorded_run_id(user_metadata: str | None) -> str | None:
    """The run id in an ``ingest_runs`` record commit's metadata (None for others)."""
    return _marked_run_id(user_metadata, _RUN_MARK)


def _marked_run_id(user_metadata: str | None, kind: str) -> str | None:
    meta = commit_mark(user_metadata, kind)
    return str(meta["run_id"]) if meta is not None else None


def _run_metadata(lake: LakeConfig, scope: str, run_id: str, listed: _Listing, pending: int) -> str:
    """The run's state, stored in its ingest_runs commit for a cheap read-back."""
    return json.dumps(
        {
            "kind": _RUN_MARK,
            "workspace": lake.workspace,
            "service": lake.service,
            "scope": scope,
            "run_id": run_id,
            "listing_files": listed.files,
            "listing_fingerprint": listed.fingerprint,
            "retryable_pending": pending,
        }
    )


def _previous_run(tables: DeltaTables, lake: LakeConfig, scope: str) -> _State:
    """The last completed runs of the service: see :class:`_State`.

    When the table's latest commit is this scope's last run, its commit metadata
    answers without reading the table (the common case of one scheduled scope)."""
    from pyspark.sql import functions as F

    if not tables.exists(INGEST_RUNS):
        return _State()
    meta = commit_mark(tables.last_commit(INGEST_RUNS).get("userMetadata"), _RUN_MARK)
    if meta is not None and (
        (meta.get("workspace"), meta.get("service"), meta.get("scope"))
        == (lake.workspace, lake.service, scope)
    ):
        last_run = str(meta["run_id"])
        if meta.get("retryable_pending"):
            return _State(last_run_id=last_run)
        listing = _Listing(int(meta["listing_files"]), str(meta["listing_fingerprint"]))
        return _State(listing, last_run)
    rows = (
        tables.read(INGEST_RUNS)
        .where((F.col("workspace") == lake.workspace) & (F.col("service") == lake.service))
        .select(
            "run_id",
            "scope",
            "finished_at",
            "listing_files",
            "listing_fingerprint",
            "retryable_pending",
        )
        .collect()
    )
    if not rows:
        return _State()
    last_run = max(rows, key=lambda row: row["finished_at"])["run_id"]
    in_scope = [row for row in rows if row["scope"] == scope]
    if not in_scope:
        return _State(last_run_id=last_run)
    last = max(in_scope, key=lambda row: row["finished_at"])
    if last["retryable_pending"]:
        return _State(last_run_id=last_run)
    return _State(_Listing(last["listing_files"], last["listing_fingerprint"]), last_run)


def _record_run(
    spark: SparkSession,
    tables: DeltaTables,
    lake: LakeConfig,
    scope: str,
    run: RunContext,
    listed: _Listing,
    summary: IngestSummary,
) -> None:
    from dicom_lakehouse.schemas import INGEST_RUNS as SCHEMA

    pending = sum(n for reason, n in summary.quarantine_reasons.items() if reason in _RETRYABLE)
    row = (
        run.run_id,
        lake.workspace,
        lake.service,
        scope,
        run.started_at,
        datetime.now(UTC),
        listed.files,
        listed.fingerprint,
        pending,
        json.dumps(summary.as_dict(), default=str),
    )
    tables.append(
        spark.createDataFrame([row], SCHEMA),
        INGEST_RUNS,
        user_metadata=_run_metadata(lake, scope, run.run_id, listed, pending),
    )


def _new_versions(instances: DataFrame, tables: DeltaTables) -> DataFrame:
    """Instance files whose version (path, size, mtime, etag) has not landed yet."""
    from pyspark.sql import functions as F

    done = (
        tables.read(BRONZE_INSTANCES)
        .select(*_VERSION_KEY)
        .unionByName(
            tables.read(BRONZE_QUARANTINE)
            .where(~F.col("reason").isin(*_RETRYABLE))
            .select(*_VERSION_KEY)
        )
    )
    cond = [instances[c].eqNullSafe(done[c]) for c in _VERSION_KEY]
    return instances.join(done, cond, "left_anti")


def _ingest_candidates(
    spark: SparkSession,
    settings: Settings,
    tables: DeltaTables,
    spec: BackendSpec,
    run: RunContext,
    candidates: DataFrame,
    todo: int,
    ready: Future[tuple[set[str], _State]],
    summary: IngestSummary,
    say: Callable[[str], None],
    held: LeaseHandle,
) -> None:
    from pyspark import StorageLevel
    from pyspark.sql import functions as F

    from dicom_lakehouse.bronze import read_headers, split_results

    cfg = settings.ingest
    hadoop = settings.lake.access == "hadoop"
    # the Hadoop path reads in one pass: each batch would list the lake again
    n_batches = 1 if hadoop else max(1, math.ceil(todo / cfg.batch_files))
    options = extract_options(settings)
    parallelism = spark.sparkContext.defaultParallelism
    for index in range(n_batches):
        batch = candidates
        if n_batches > 1:
            batch = candidates.where(F.pmod(F.xxhash64("file_path"), F.lit(n_batches)) == index)
        size = math.ceil(todo / n_batches)
        n_tasks = max(parallelism, math.ceil(size / cfg.files_per_task))
        # read once: the job that counts the results also caches them, and both
        # tables are written from that cache
        with summary.phase("read"):
            if hadoop:
                from dicom_lakehouse.lake.hadoop import hadoop_headers

                found = hadoop_headers(
                    spark,
                    batch,
                    settings.lake,
                    spec.root,
                    options,
                    broadcast=size <= _BROADCAST_FILES,
                )
            else:
                found = read_headers(batch, spec, options, tasks=n_tasks)
            results = found.persist(StorageLevel.MEMORY_AND_DISK)
        try:
            with summary.phase("read"):
                stats = (
                    results.groupBy("status", "reason")
                    .agg(F.count("*").alias("n"), F.sum("header_bytes_read").alias("bytes"))
                    .collect()
                )
            good, bad = split_results(results, ingested_at=run.started_at, run_id=run.run_id)
            app = f"dicom-lakehouse-ingest-{run.run_id}"
            ingested = sum(row["n"] for row in stats if row["status"] == "ingested")
            quarantined = sum(row["n"] for row in stats) - ingested
            # an empty side makes no commit
            outputs = [
                (frame, name, suffix)
                for frame, name, suffix, rows in (
                    (good, BRONZE_INSTANCES, "instances", ingested),
                    (bad, BRONZE_QUARANTINE, "quarantine", quarantined),
                )
                if rows
            ]
            with summary.phase("lease"):
                held.wait()  # writes only under the lease, to tables that exist
                ready.result()
            with summary.phase("write"), ThreadPoolExecutor(2) as pool:
                writes = [
                    pool.submit(
                        tables.append,
                        frame,
                        name,
                        txn=(f"{app}-{suffix}", index),
                        user_metadata=batch_metadata(run.run_id),
                    )
                    for frame, name, suffix in outputs
                ]
                for write in writes:
                    write.result()
        finally:
            results.unpersist()
        for row in stats:
            summary.bytes_read += row["bytes"] or 0
            if row["status"] == "ingested":
                summary.files_ingested += row["n"]
            else:
                summary.files_quarantined += row["n"]
                reasons = summary.quarantine_reasons
                reasons[row["reason"]] = reasons.get(row["reason"], 0) + row["n"]
                if row["reason"] == "vanished":
                    summary.files_vanished += row["n"]
        summary.batches += 1
        say(
            f"batch {index + 1}/{n_batches}: {summary.files_ingested} ingested, "
            f"{summary.files_quarantined} quarantined so far"
        )
