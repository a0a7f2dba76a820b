"""The refine job: bronze file versions -> typed, current silver tables.

Incremental by default: only the studies touched by ingest runs that were not
refined yet (new file versions, or files gone from the lake) are recomputed,
and merged into silver in one commit per table (deleted instances leave
silver). ``full=True`` rebuilds every silver table from bronze. Series and
studies roll up instances; patients roll up studies, so a patient's rollup
reads their studies, not every instance they have.

New runs are found in table history, with no table scan: the runs recorded in
``ingest_runs`` commits since the last recorded refine, plus the runs named in
the metadata of bronze commits since then (an ingest killed before its record
still committed rows; a long ingest commits batches before and after a
refine). Each record's commit metadata keeps the ``ingest_runs``, bronze and
silver versions that refine saw, and the runs it took from bronze before their
record (so their record does not count as new). Without those versions (a
record from an older release, or history cleaned up since) the whole
``ingest_runs`` and ``refined_ingest_runs`` tables are compared instead. A silver
version that moved since the last record means a refine stopped half-way, and
the next one repairs the rollups that lag behind the instances.

A refine of few rows (``silver.interpreted_max_rows``: the new bronze rows of an
incremental refine, all of them on a rebuild) evaluates expressions without
generated code: Spark otherwise compiles Java for each of the run's dozens of
distinct plans, which costs more than evaluating a small change.

Layout: silver tables are partitioned by ``partition_name`` (few values; every
cohort query of a multi-tenant lake filters on it) and, on a rebuild,
Z-ordered by ``study_date`` and ``modality``, the columns cohort filters use
most; the filter columns lead the schema so Delta keeps statistics on them.
Neither needs a table feature beyond reader 1 / writer 2.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dicom_lakehouse.config import Settings
from dicom_lakehouse.ingest import (
    BRONZE_INSTANCES,
    INGEST_RUNS,
    LAKE_FILES,
    batch_run_id,
    ensure_bronze_tables,
    recorded_run_id,
)
from dicom_lakehouse.io.delta import DeltaTables, commit_mark
from dicom_lakehouse.io.lease import LeaseHandle, LeaseHeldError, job_lease
from dicom_lakehouse.phases import timed
from dicom_lakehouse.spark import get_spark, interpreted_expressions

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, Row, SparkSession
    from pyspark.sql.types import StructType

__all__ = [
    "REFINED_RUNS",
    "SILVER_INSTANCES",
    "SILVER_PATIENTS",
    "SILVER_SERIES",
    "SILVER_STUDIES",
    "RefineSummary",
    "run_refine",
]

logger = logging.getLogger(__name__)

SILVER_INSTANCES = "silver_instances"
SILVER_SERIES = "silver_series"
SILVER_STUDIES = "silver_studies"
SILVER_PATIENTS = "silver_patients"
REFINED_RUNS = "refined_ingest_runs"

_REFINE_MARK = "dicom_lakehouse.refine_run/1"
_STUDY = ["partition_name", "study_instance_uid"]
# New bronze rows up to this many find their listing rows through a broadcast join.
_BROADCAST_ROWS = 200_000

_KEYS = {
    SILVER_INSTANCES: ["partition_name", "sop_instance_uid"],
    SILVER_SERIES: ["partition_name", "study_instance_uid", "series_instance_uid"],
    SILVER_STUDIES: _STUDY,
    SILVER_PATIENTS: ["partition_name", "issuer_of_patient_id", "patient_id"],
}


@dataclass(slots=True)
class RefineSummary:
    """What one refine run did; ``as_dict`` is the CLI's JSON summary."""

    run_id: str
    full: bool = False
    instances: int = 0
    series: int = 0
    studies: int = 0
    patients: int = 0
    instances_changed: int = 0
    instances_deleted: int = 0
    studies_recomputed: int = 0
    ingest_runs_refined: int = 0
    study_conflicts: int = 0
    coerced: dict[str, int] = field(default_factory=dict)
    seconds: float = 0.0
    phase_seconds: dict[str, float] = field(default_factory=dict)
    skipped_reason: str | None = None

    def phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        """Time a phase of the run into ``phase_seconds``."""
        return timed(self.phase_seconds, name)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _rollups(instances: DataFrame) -> dict[str, DataFrame]:
    """The series and studies rolled up from ``instances`` (patients roll up studies)."""
    from dicom_lakehouse import silver

    return {
        SILVER_SERIES: silver.series_from_instances(instances),
        SILVER_STUDIES: silver.studies_from_instances(instances),
    }


def silver_schemas(spark: SparkSession) -> dict[str, Any]:
    """Each silver table's schema, derived from the transforms themselves."""
    from dicom_lakehouse import schemas, silver

    empty = spark.createDataFrame([], schemas.BRONZE_INSTANCES)
    files = spark.createDataFrame([], schemas.LAKE_FILES)
    typed = silver.drop_raw(silver.typed_instances(silver.current_instances(empty, files)))
    frames = _rollups(typed)
    frames[SILVER_PATIENTS] = silver.patients_from_studies(frames[SILVER_STUDIES])
    return {SILVER_INSTANCES: typed.schema, **{name: df.schema for name, df in frames.items()}}


def _ensure(spark: SparkSession, tables: DeltaTables) -> set[str]:
    from pyspark.sql import types as T

    created: set[str] = set()
    # the schemas come from analysing the whole transform: only when a table is missing
    if not all(tables.exists(name) for name in _KEYS):
        created = {
            name
            for name, schema in silver_schemas(spark).items()
            if tables.ensure(name, schema, partition_by=["partition_name"])
        }
    runs = T.StructType(
        [
            T.StructField("run_id", T.StringType()),
            T.StructField("refine_run_id", T.StringType()),
            T.StructField("refined_at", T.TimestampType()),
        ]
    )
    if tables.ensure(REFINED_RUNS, runs, comment="Ingest runs already refined into silver"):
        created.add(REFINED_RUNS)
    return created


def run_refine(
    settings: Settings,
    spark: SparkSession | None = None,
    *,
    full: bool = False,
    run_id: str | None = None,
) -> RefineSummary:
    """Refine bronze into silver (incrementally unless ``full``)."""

    started = time.perf_counter()
    spark = get_spark(settings.spark, spark)
    tables = DeltaTables(spark, settings.tables)
    summary = RefineSummary(run_id=run_id or uuid.uuid4().hex)
    with summary.phase("tables"):
        ensure_bronze_tables(tables)
        created = _ensure(spark, tables)
        last = _last_refine(tables)
    full = full or SILVER_INSTANCES in created
    summary.full = full

    try:
        ttl = timedelta(minutes=settings.ingest.lease_minutes)
        finished = [last.refine_run_id] if last.refine_run_id else []
        with job_lease(tables, "refine", summary.run_id, ttl=ttl, finished=finished) as held:
            _refine_locked(spark, settings, tables, full, summary, held, last)
    except LeaseHeldError as exc:
        summary.skipped_reason = "lease_held"
        logger.info("refine skipped: %s", exc)
    summary.seconds = round(time.perf_counter() - started, 3)
    if settings.mlflow.tracking_uri:
        from dicom_lakehouse.tracking import lake_params, log_job

        log_job(settings, "refine", {**lake_params(settings), "full": full}, summary.as_dict())
    return summary


@dataclass(frozen=True, slots=True)
class _LastRefine:
    """What the latest recorded refine left in its commit's metadata."""

    refine_run_id: str | None = None
    bronze_version: int | None = None
    silver_version: int | None = None  # silver_instances once that refine wrote it
    ingest_runs_version: int | None = None  # None: a record from an older release
    unrecorded: frozenset[str] = frozenset()  # runs taken from bronze before their record
    counts: dict[str, int] = field(default_factory=dict)  # summary field -> count
    versions: dict[str, int] = field(default_factory=dict)  # silver table -> version


def _last_refine(tables: DeltaTables) -> _LastRefine:
    """The latest ``refined_ingest_runs`` commit's refine (its history, no data read)."""
    meta = commit_mark(tables.last_commit(REFINED_RUNS).get("userMetadata"), _REFINE_MARK)
    if meta is None:
        return _LastRefine()
    silver = meta.get("silver_version")
    recorded = meta.get("ingest_runs_version")
    return _LastRefine(
        str(meta["refine_run_id"]),
        int(meta["bronze_version"]),
        int(silver) if silver is not None else None,
        int(recorded) if recorded is not None else None,
        frozenset(str(run) for run in meta.get("unrecorded", [])),
        {str(k): int(v) for k, v in meta.get("counts", {}).items()},
        {str(k): int(v) for k, v in meta.get("versions", {}).items()},
    )


_RECENT_COMMITS = 10  # history read at once: more than an ingest commits to a table


def _runs_since(
    tables: DeltaTables, name: str, version: int | None, run_of: Callable[[str | None], str | None]
) -> tuple[int, set[str] | None]:
    """The table's latest version, and the runs that ``run_of`` names in the metadata
    of its commits after ``version`` (its history, no data read). None for the runs
    when ``version`` is None or when history no longer holds every such commit."""
    # one read of history in the common case of a few commits since ``version``
    recent = tables.commits(name, _RECENT_COMMITS)
    latest = int(recent[0]["version"])
    if version is None:
        return latest, None
    if latest <= version:
        return latest, set()
    if latest - version > len(recent):
        recent = tables.commits(name, latest - version)
    commits = {row["version"]: row["userMetadata"] for row in recent}
    if any(v not in commits for v in range(version + 1, latest + 1)):
        logger.warning("history of %s since version %d is incomplete", name, version)
        return latest, None
    runs = {run_of(commits[v]) for v in range(version + 1, latest + 1)}
    return latest, {run for run in runs if run is not None}


_RUN_TABLES = (REFINED_RUNS, INGEST_RUNS)


def _run_ids(tables: DeltaTables, name: str) -> set[str]:
    """Every run id in ``name`` (a narrow scan of a small table)."""
    rows = tables.read(name).where("run_id IS NOT NULL").select("run_id").collect()
    return {row["run_id"] for row in rows}


def _version(tables: DeltaTables, name: str) -> int:
    """The table's latest version (its history, no data read)."""
    return int(tables.last_commit(name)["version"])


def _refine_locked(
    spark: SparkSession,
    settings: Settings,
    tables: DeltaTables,
    full: bool,
    summary: RefineSummary,
    held: LeaseHandle,
    last: _LastRefine,
) -> None:
    """Refine under the lease: bronze is read while it is acquired; silver is read
    and written only once it is held. ``last``: what the last recorded refine
    read and wrote."""

    with summary.phase("runs"):
        # New runs: runs recorded in ingest_runs since the last refine, and runs that
        # committed bronze rows since then (also one killed before its record, or
        # still landing batches), from the tables' history. ingest_runs is read
        # first: a run recorded by then has committed all its bronze rows by then.
        ingest_version, recorded = _runs_since(
            tables, INGEST_RUNS, last.ingest_runs_version, recorded_run_id
        )
        with ThreadPoolExecutor(4, thread_name_prefix="dl-runs") as pool:
            landed = pool.submit(
                _runs_since, tables, BRONZE_INSTANCES, last.bronze_version, batch_run_id
            )
            silver_now = pool.submit(_version, tables, SILVER_INSTANCES)
            done: set[str] | frozenset[str] = last.unrecorded
            if recorded is None:  # no usable history: every run against every refined one
                done, recorded = pool.map(lambda name: _run_ids(tables, name), _RUN_TABLES)
            bronze_version, landed_runs = landed.result()
        since = landed_runs or set()
        # a run refined before (or taken from bronze before its record) counts again
        # only for bronze rows it committed since
        new_runs = sorted((recorded - done) | since)
        unrecorded = since - recorded
        # silver_instances written after the last recorded refine: one that died or
        # failed after writing instances, so rollups may lag behind them
        repair = last.silver_version is not None and silver_now.result() != last.silver_version
    summary.ingest_runs_refined = len(new_runs)
    bronze = tables.read(BRONZE_INSTANCES)
    lake_files = tables.read(LAKE_FILES)

    # few rows: evaluated without compiling code (see interpreted_expressions)
    few = settings.silver.interpreted_max_rows
    if full:
        with summary.phase("typed"):
            n_bronze = bronze.count()
        with interpreted_expressions(spark, n_bronze <= few):
            _rebuild(spark, settings, tables, bronze, lake_files, summary, held)
    writes = _Writes()
    if not full and new_runs:
        with summary.phase("typed"):
            # only the new file versions are read from bronze (file statistics on
            # run_id skip the rest): an older version can only be current already
            added = bronze.where(bronze["run_id"].isin(new_runs))
            n_added = added.count()
        with interpreted_expressions(spark, n_added <= few):
            _refine_incrementally(
                spark, tables, added, n_added, lake_files, summary, held, writes, repair
            )
    with summary.phase("lease"):
        held.wait()  # also when nothing changed: a run under another's lease reports it
    with summary.phase("count"):
        versions = _count(tables, summary, None if full else last, writes)
    if new_runs or full:
        # a full rebuild that refined no new run still records the versions and
        # counts it left (one row without a run id), so the next refine need not
        # count or repair
        stamp = datetime.now(UTC)
        runs: list[str | None] = [*new_runs] or [None]
        rows = [(r, summary.run_id, stamp) for r in runs]
        mark = {
            "kind": _REFINE_MARK,
            "refine_run_id": summary.run_id,
            "bronze_version": bronze_version,
            "silver_version": versions[SILVER_INSTANCES],
            "ingest_runs_version": ingest_version,
            "unrecorded": sorted(unrecorded),
            "counts": {key: getattr(summary, key) for key in (*_COUNTED, "study_conflicts")},
            "versions": versions,
        }
        with summary.phase("record"):
            tables.append(
                spark.createDataFrame(
                    rows, "run_id string, refine_run_id string, refined_at timestamp"
                ),
                REFINED_RUNS,
                user_metadata=json.dumps(mark),
            )
        # this record releases the lease: the next refine takes it over at once
        held.recorded()
    if settings.silver.compat_tables:
        from dicom_lakehouse.compat import write_compat_tables

        with summary.phase("compat"):
            write_compat_tables(tables)


def _rebuild(
    spark: SparkSession,
    settings: Settings,
    tables: DeltaTables,
    bronze: DataFrame,
    lake_files: DataFrame,
    summary: RefineSummary,
    held: LeaseHandle,
) -> None:
    """Rebuild every silver table from bronze (each one overwrite commit)."""
    from dicom_lakehouse import silver

    with summary.phase("typed"):
        typed = silver.typed_instances(silver.current_instances(bronze, lake_files))
        typed = typed.localCheckpoint(eager=True)
        summary.coerced = silver.coercion_counts(typed)
    instances = silver.drop_raw(typed)
    with summary.phase("lease"):
        held.wait()
    with summary.phase("write_instances"):
        tables.overwrite(instances, SILVER_INSTANCES)
    summary.instances_changed = instances.count()
    current = tables.read(SILVER_INSTANCES)
    with summary.phase("rollups"):
        for name, df in _rollups(current).items():
            tables.overwrite(df, name)
        patients = silver.patients_from_studies(tables.read(SILVER_STUDIES))
        tables.overwrite(patients, SILVER_PATIENTS)
    if settings.silver.zorder:
        with summary.phase("zorder"):
            _zorder(spark, tables)


def _refine_incrementally(
    spark: SparkSession,
    tables: DeltaTables,
    added: DataFrame,
    n_added: int,
    lake_files: DataFrame,
    summary: RefineSummary,
    held: LeaseHandle,
    writes: _Writes,
    repair: bool = False,
) -> None:
    """Recompute the studies touched by the ``n_added`` new bronze rows ``added`` or
    by files gone from the lake, noting in ``writes`` what was committed.

    Silver is read through narrow projections (keys, versions, watermarks) except
    for the touched studies' rows, so the cost follows the change, not the table.
    ``repair``: a refine stopped after writing instances, so the studies whose
    instance count disagrees with ``silver_studies`` are recomputed too (one
    narrow aggregate of the instances' study keys)."""
    from pyspark.sql import functions as F

    from dicom_lakehouse import silver

    version = ["file_path", "file_size", "last_modified", "etag"]
    keys = _KEYS[SILVER_INSTANCES]
    patient = _KEYS[SILVER_PATIENTS]
    listed = lake_files.where(F.col("kind") == "instance").select(*version)
    current_silver = tables.read(SILVER_INSTANCES)
    with summary.phase("typed"):
        added_files = lake_files
        if n_added <= _BROADCAST_ROWS:
            # the listing rows of just those files, found through a broadcast of
            # their paths, so the lake's whole listing is never shuffled
            paths = F.broadcast(added.select("file_path").distinct())
            added_files = lake_files.join(paths, "file_path", "left_semi")
        current = silver.current_instances(added, added_files)
        typed = silver.typed_instances(current).localCheckpoint(eager=True)
        summary.coerced = silver.coercion_counts(typed)
    new_rows = silver.drop_raw(typed)
    # bronze versions never change; silver is read only under the lease
    with summary.phase("lease"):
        held.wait()
    with summary.phase("gone"):
        # silver rows whose file version is no longer listed (keys only)
        narrow = current_silver.select(*keys, "study_instance_uid", *patient[1:], *version)
        gone = (
            narrow.join(listed, [narrow[c].eqNullSafe(listed[c]) for c in version], "left_anti")
            .select(*keys, "study_instance_uid", *patient[1:])
            .localCheckpoint(eager=True)
        )
        touched = (
            new_rows.select(*_STUDY, F.lit(False).alias("_gone"))
            .unionByName(gone.select(*_STUDY, F.lit(True).alias("_gone")))
            .distinct()
            .collect()
        )
        any_gone = any(row["_gone"] for row in touched)
        lagging = _lagging_studies(current_silver, tables.read(SILVER_STUDIES)) if repair else []
        affected_rows = list({tuple(row[c] for c in _STUDY) for row in [*touched, *lagging]})
    summary.studies_recomputed = len(affected_rows)
    if not affected_rows:
        return
    affected = F.broadcast(spark.createDataFrame(affected_rows, new_rows.select(*_STUDY).schema))
    with summary.phase("winners"):
        prior = (
            current_silver.join(affected, _STUDY, "left_semi")
            .select(*keys, *patient[1:], "watermark", "versions")
            .localCheckpoint(eager=True)
        )
        # studies silver has no instance of (gone ones are silver's, so none either):
        # every new row wins, nothing is replaced or deleted
        prior_empty = prior.isEmpty()
        winners = new_rows
        if not prior_empty:
            kept = prior.join(gone.select(*keys), keys, "left_anti")
            # a new version wins over the kept silver row when its watermark is higher
            old = kept.select(
                *keys, F.col("watermark").alias("_old_wm"), F.col("versions").alias("_old_versions")
            )
            winners = (
                new_rows.join(old, keys, "left")
                .where(F.col("_old_wm").isNull() | (F.col("watermark") > F.col("_old_wm")))
                .withColumn(
                    "versions", F.col("versions") + F.coalesce(F.col("_old_versions"), F.lit(0))
                )
                .select(*new_rows.columns)
                .localCheckpoint(eager=True)
            )
        gone_keys = gone.select(*keys).join(winners.select(*keys), keys, "left_anti")
        tombstones = _tombstones(gone_keys, new_rows.schema, keys)
        if any_gone:
            tombstones = tombstones.localCheckpoint(eager=True)
            summary.instances_deleted = tombstones.count()
        summary.instances_changed = winners.count() + summary.instances_deleted
    source = winners.withColumn("_delete", F.lit(False)).unionByName(
        tombstones.withColumn("_delete", F.lit(True))
    )
    # patients of the affected studies, before and after, are recomputed too (a
    # lagging study may have no instance left: its patient is in silver_studies)
    patients_before = prior.select(*patient).distinct()
    if lagging:
        patients_before = patients_before.unionByName(
            tables.read(SILVER_STUDIES).join(affected, _STUDY, "left_semi").select(*patient)
        ).distinct()
    with summary.phase("merge_instances"):
        replaced = _match(winners.select(*keys), prior.select(*keys), keys, "left_semi")
        if summary.instances_deleted or (not prior_empty and not replaced.isEmpty()):
            tables.merge_with_deletes(source, SILVER_INSTANCES, keys)
        else:  # only instances silver has never had: an append, no MERGE
            tables.append(winners.select(*current_silver.columns), SILVER_INSTANCES)
        writes.tables.add(SILVER_INSTANCES)
    with summary.phase("rollups"):
        # the touched studies' rows, without the one wide column no rollup reads:
        # the new rows alone when silver had no instance of those studies
        columns = [c for c in current_silver.columns if c != "metadata_json"]
        in_studies = winners.select(*columns)
        if not prior_empty:
            after = tables.read(SILVER_INSTANCES).select(*columns)
            in_studies = after.join(affected, _STUDY, "left_semi")
            in_studies = in_studies.localCheckpoint(eager=True)
        # studies silver had no instance of have no series or study rows either
        new_studies = not lagging and prior_empty
    rollups = _rollups(in_studies)

    def merge(name: str, rows: DataFrame, scope: DataFrame, scope_keys: list[str]) -> None:
        _merge_scope(tables, name, rows, scope, scope_keys, new=new_studies)
        writes.tables.add(name)

    def series() -> None:
        merge(SILVER_SERIES, rollups[SILVER_SERIES], affected, _STUDY)

    def studies(fresh: Future[DataFrame]) -> None:
        rows = fresh.result()
        # the studies with conflicts this merge removes, read before it commits
        before = 0
        if not new_studies:
            before = _conflicted(
                tables.read(SILVER_STUDIES).join(affected, _STUDY, "left_semi")
            ).count()
        merge(SILVER_STUDIES, rows, affected, _STUDY)
        writes.conflicts = _conflicted(rows).count() - before

    def patients(fresh: Future[DataFrame]) -> None:
        keys = (
            in_studies.select(*patient)
            .unionByName(patients_before)
            .distinct()
            .localCheckpoint(eager=True)
        )
        # those patients' other studies as silver has them, and the touched ones fresh
        # (a fresh study's patient is one of its instances', so in keys)
        untouched = tables.read(SILVER_STUDIES).join(affected, _STUDY, "left_anti")
        theirs = _match(untouched, F.broadcast(keys), patient, "left_semi")
        rows = silver.patients_from_studies(theirs.unionByName(fresh.result()))
        merge(SILVER_PATIENTS, rows, keys, patient)

    # each table recomputed and written in its own commit, side by side; the
    # patients roll up the fresh studies (silver's untouched rows read apart)
    with (
        summary.phase("merge_rollups"),
        ThreadPoolExecutor(4, thread_name_prefix="dl-merge") as pool,
    ):
        fresh = pool.submit(lambda: rollups[SILVER_STUDIES].localCheckpoint(eager=True))
        jobs = [pool.submit(series), pool.submit(studies, fresh), pool.submit(patients, fresh)]
        for done in jobs:
            done.result()


def _merge_scope(
    tables: DeltaTables,
    name: str,
    rows: DataFrame,
    scope: DataFrame,
    scope_keys: list[str],
    *,
    new: bool,
) -> None:
    """Replace the rollup rows of ``scope`` in ``name`` with ``rows`` (one commit): an
    append when the scope is new to the table (``new``: studies silver never had,
    for series and studies; for patients, an upsert with nothing to delete), else a
    MERGE that also deletes the scope's stale rows.
    When the scope holds the table's own keys (studies, patients), its stale rows
    are the scope's keys without a fresh row, with no read of the table: deleting
    a key the table does not have matches nothing. ``rows`` need no checkpoint: a
    MERGE materializes its source once."""
    from pyspark.sql import functions as F

    key = _KEYS[name]
    target = tables.read(name)
    if new and name != SILVER_PATIENTS:
        tables.append(rows.select(*target.columns), name)
        return
    if new:
        # patients of new studies: a key without a fresh row has no study in silver,
        # so (nothing lagging) no patient row to delete either: a plain upsert
        tables.merge_with_deletes(rows.withColumn("_delete", F.lit(False)), name, key)
        return
    if scope_keys == key:
        existing = scope.select(*key)
    else:
        existing = (
            _match(target, F.broadcast(scope), scope_keys, "left_semi")
            .select(*key)
            .localCheckpoint(eager=True)
        )
        if existing.isEmpty():  # the scope is new to the table: an append, no MERGE
            tables.append(rows.select(*target.columns), name)
            return
    stale = _tombstones(_match(existing, rows, key, "left_anti"), rows.schema, key)
    merged = rows.withColumn("_delete", F.lit(False)).unionByName(
        stale.withColumn("_delete", F.lit(True))
    )
    tables.merge_with_deletes(merged, name, key)


def _lagging_studies(instances: DataFrame, studies: DataFrame) -> list[Row]:
    """Studies whose ``silver_studies`` instance count disagrees with the instances
    (a study without instances left included)."""
    from pyspark.sql import functions as F

    counted = instances.groupBy(*_STUDY).agg(F.count(F.lit(1)).alias("n"))
    stated = studies.select(*_STUDY, F.col("instance_count").alias("n"))
    differ = counted.exceptAll(stated).unionByName(stated.exceptAll(counted))
    return differ.select(*_STUDY).distinct().collect()


def _tombstones(keys: DataFrame, schema: StructType, key: list[str]) -> DataFrame:
    """Rows to delete: their ``key`` columns, every other column a typed NULL."""
    from pyspark.sql import functions as F

    return keys.select(
        *[
            F.col(c) if c in key else F.lit(None).cast(schema[c].dataType).alias(c)
            for c in schema.fieldNames()
        ]
    )


def _match(left: DataFrame, right: DataFrame, keys: list[str], how: str) -> DataFrame:
    """``left`` semi/anti-joined to ``right`` on ``keys``, NULL matching NULL (a
    patient without an issuer is still one patient)."""
    return left.join(right, [left[k].eqNullSafe(right[k]) for k in keys], how)


def _zorder(spark: SparkSession, tables: DeltaTables) -> None:
    for name in (SILVER_INSTANCES, SILVER_SERIES, SILVER_STUDIES):
        table = tables.delta_table(name)
        columns = ["study_date", "modality"] if name != SILVER_STUDIES else ["study_date"]
        table.optimize().executeZOrderBy(*columns)


_COUNTED = {  # summary field -> silver table
    "instances": SILVER_INSTANCES,
    "series": SILVER_SERIES,
    "studies": SILVER_STUDIES,
    "patients": SILVER_PATIENTS,
}


def _conflicted(studies: DataFrame) -> DataFrame:
    """The studies whose attributes disagree across their instances."""
    from pyspark.sql import functions as F

    return studies.where(F.col("attribute_conflicts") > 0)


@dataclass(slots=True)
class _Writes:
    """What an incremental refine committed: the tables it wrote (one commit each),
    and how many studies with conflicting attributes its studies commit added."""

    tables: set[str] = field(default_factory=set)
    conflicts: int = 0


def _count(
    tables: DeltaTables, summary: RefineSummary, last: _LastRefine | None, writes: _Writes
) -> dict[str, int]:
    """The silver tables' row counts and the studies with conflicting attributes,
    into ``summary``; return each table's version.

    A table is not read when the last recorded refine (``last``; None after a full
    rebuild) kept its count and version and the only commit since, if any, is this
    refine's own: the count is then the recorded one plus that commit's inserted
    minus deleted rows (its operation metrics). Otherwise it is counted."""

    def count(key: str) -> int:
        df = tables.read(_COUNTED.get(key, SILVER_STUDIES))
        return (_conflicted(df) if key == "study_conflicts" else df).count()

    with ThreadPoolExecutor(len(_COUNTED) + 1, thread_name_prefix="dl-count") as pool:
        names = list(_COUNTED.values())
        commits = dict(zip(names, pool.map(tables.last_commit, names), strict=True))
        derived: dict[str, int | None] = {
            key: _derived_count(last, writes, key, name, commits[name])
            for key, name in _COUNTED.items()
        }
        derived["study_conflicts"] = (
            last.counts["study_conflicts"] + writes.conflicts
            if last is not None
            and derived["studies"] is not None
            and "study_conflicts" in last.counts
            else None
        )
        counted = {key: pool.submit(count, key) for key, value in derived.items() if value is None}
        for key, value in derived.items():
            setattr(summary, key, counted[key].result() if value is None else value)
    return {name: int(commit["version"]) for name, commit in commits.items()}


def _derived_count(
    last: _LastRefine | None, writes: _Writes, key: str, name: str, commit: dict[str, Any]
) -> int | None:
    """``name``'s count from the last record and this refine's own commit (see
    :func:`_count`), or None when it has to be counted."""
    if last is None or key not in last.counts or name not in last.versions:
        return None
    base, version = last.versions[name], int(commit["version"])
    if name not in writes.tables:
        return last.counts[key] if version == base else None
    if version != base + 1:  # another writer committed too
        return None
    metrics = commit.get("operationMetrics") or {}
    try:
        if commit.get("operation") == "WRITE":  # an append
            return last.counts[key] + int(metrics["numOutputRows"])
        if commit.get("operation") == "MERGE":
            inserted, deleted = metrics["numTargetRowsInserted"], metrics["numTargetRowsDeleted"]
            return last.counts[key] + int(inserted) - int(deleted)
    except (KeyError, ValueError):
        return None
    return None
