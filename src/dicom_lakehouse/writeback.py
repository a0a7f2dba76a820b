"""The write-back job: cohort -> derived DICOM objects -> STOW-RS, exactly once.

Per source series (one Spark group, on the executors): read the sources
through the lake backend (headers first; pixel data only when the deriver
touches it), derive with a :mod:`dicom_lakehouse.derive` deriver, store the
results through the DICOMweb client and return one ledger row per derived
instance. The ``writeback_ledger`` Delta table is merged after every chunk of
series, so a killed run re-run skips what is stored and sends only the rest.

Exactly once holds because derived UIDs are deterministic (source UIDs +
deriver + model version): a re-sent instance is the same SOP instance, which
the Azure service answers with 45070 (counted ``already_stored``) and Orthanc
lists as referenced again without storing a second copy.

Ledger outcomes: per instance, ``stored``/``already_stored``, or ``failed`` with the
service's FailureReason code (``"272"``, ``"43265"``, ...). When a whole store request
fails, every instance it carried gets the error's outcome: ``retryable`` with
``connection_error``, ``http_503`` (or another retried status) or ``outcome_unknown``
(sent, never answered: the server may hold it; re-sending cannot duplicate it), else
``failed`` with the error's name. A series whose derivation failed has one row without
a derived UID (``failed``, the deriver's reason), replaced once it has instance rows.
A re-run skips series whose rows are all stored and does not re-send stored instances.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import time
import uuid
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from dicom_lakehouse.columns import LEDGER_COLUMNS
from dicom_lakehouse.config import DicomWebConfig, Settings
from dicom_lakehouse.errors import ConfigError
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.io.lease import job_lease
from dicom_lakehouse.lake.backend import BackendSpec, open_backend
from dicom_lakehouse.spark import get_spark

if TYPE_CHECKING:
    import pandas as pd
    import pydicom
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = ["LEDGER", "WritebackSummary", "run_writeback"]

logger = logging.getLogger(__name__)

LEDGER = "writeback_ledger"
_DONE = ("stored", "already_stored")


@dataclass(slots=True)
class WritebackSummary:
    """What one write-back run did; ``as_dict`` is the CLI's JSON summary."""

    run_id: str
    cohort: str
    cohort_version: int = 0
    deriver: str = ""
    series: int = 0
    series_skipped: int = 0
    derived: int = 0
    stored: int = 0
    already_stored: int = 0
    failed: int = 0
    retryable: int = 0
    source_bytes_read: int = 0
    sources_read: int = 0
    mlflow_run_id: str | None = None
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Plan:
    """What executors need, picklable: no live clients, no loaded model."""

    spec: BackendSpec
    dicomweb: DicomWebConfig
    deriver: str
    options: tuple[tuple[str, str], ...]
    deriver_version: str
    model_uri: str | None
    model_version: str
    cohort: str
    cohort_version: int
    run_id: str
    mlflow_run_id: str | None
    #: derived SOP UIDs already stored by an earlier run (in series not wholly stored)
    skip_uids: frozenset[str] = frozenset()


@functools.lru_cache(maxsize=4)
def _client(config: DicomWebConfig) -> Any:
    from dicom_lakehouse.dicomweb import DicomWebClient

    return DicomWebClient(config.client_settings())


@functools.lru_cache(maxsize=4)
def _deriver(name: str, options: tuple[tuple[str, str], ...]) -> Any:
    from dicom_lakehouse.derive import get_deriver

    return get_deriver(name, **dict(options))


def derivation_key(partition: str, series_uid: str, plan: _Plan) -> str:
    text = "\x1f".join(
        (partition, series_uid, plan.deriver, plan.deriver_version, plan.model_version)
    )
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _load_sources(spec: BackendSpec, rows: pd.DataFrame) -> tuple[list[pydicom.Dataset], Any]:
    """The series' datasets, pixel data fetched only when a deriver reads it."""
    import pydicom

    from dicom_lakehouse.dicom.header import RangedFile

    backend = open_backend(spec)
    files = []
    for path, size in zip(rows["file_path"], rows["file_size"], strict=True):
        source = RangedFile(functools.partial(backend.read_range, path), int(size), 65536, 1 << 62)
        ds = pydicom.dcmread(source, defer_size=4096)
        files.append((ds, source))
    return [ds for ds, _ in files], [src for _, src in files]


def _derive_and_store(plan: _Plan, rows: pd.DataFrame) -> pd.DataFrame:
    """One source series -> ledger rows (one per derived instance, or one failure row)."""
    import pandas as pd

    from dicom_lakehouse.errors import DeriveError, DicomWebError, DicomWebTransientError

    first = rows.iloc[0]
    partition, study, series = (
        str(first["partition_name"]),
        str(first["study_instance_uid"]),
        str(first["series_instance_uid"]),
    )
    base = {
        "derivation_key": derivation_key(partition, series, plan),
        "cohort_name": plan.cohort,
        "cohort_version": plan.cohort_version,
        "partition_name": partition,
        "source_study_uid": study,
        "source_series_uid": series,
        "source_sop_uids": ",".join(sorted(map(str, rows["sop_instance_uid"]))),
        "deriver": plan.deriver,
        "deriver_version": plan.deriver_version,
        "model_uri": plan.model_uri,
        "model_version": plan.model_version,
        "mlflow_run_id": plan.mlflow_run_id,
        "run_id": plan.run_id,
        "updated_at": datetime.now(UTC),
    }
    out: list[dict[str, Any]] = []
    sources: list[Any] = []
    pending: list[pydicom.Dataset] = []
    try:
        datasets, sources = _load_sources(plan.spec, rows)
        derived = _deriver(plan.deriver, plan.options).derive(datasets)
        pending = [ds for ds in derived if str(ds.SOPInstanceUID) not in plan.skip_uids]
        results = _client(plan.dicomweb).store(pending, study_instance_uid=study)
        by_uid = {r.sop_instance_uid: r for r in results}
        for ds in pending:
            result = by_uid.get(str(ds.SOPInstanceUID))
            out.append(
                {
                    **base,
                    "derived_sop_uid": str(ds.SOPInstanceUID),
                    "derived_series_uid": str(ds.SeriesInstanceUID),
                    "status": str(result.status) if result else "failed",
                    "http_status": result.http_status if result else None,
                    "failure_reason": (
                        str(result.failure_reason)
                        if result and result.failure_reason is not None
                        else None
                    ),
                    "attempts": result.attempts if result else 0,
                }
            )
    except DeriveError as exc:
        out.append({**base, "status": "failed", "failure_reason": exc.reason, "attempts": 0})
    except DicomWebError as exc:
        # the whole store failed: one row per instance it was sending (their outcome is
        # the error's), so the ledger keeps one row per derived instance
        failure = {
            **base,
            "status": "retryable" if isinstance(exc, DicomWebTransientError) else "failed",
            "failure_reason": getattr(exc, "condition", None) or type(exc).__name__,
            "http_status": getattr(exc, "http_status", None),
            "attempts": getattr(exc, "attempts", 1),
        }
        out.extend(
            {
                **failure,
                "derived_sop_uid": str(ds.SOPInstanceUID),
                "derived_series_uid": str(ds.SeriesInstanceUID),
            }
            for ds in pending
        )
        if not pending:
            out.append(failure)
    read = sum(src.bytes_fetched for src in sources)
    touched = sum(1 for src in sources if src.bytes_fetched)
    for row in out:
        row["source_bytes_read"] = read
        row["sources_read"] = touched
    frame = pd.DataFrame(out)
    for column in ("derived_sop_uid", "derived_series_uid", "http_status", "failure_reason"):
        if column not in frame:
            frame[column] = None
    frame["http_status"] = frame["http_status"].astype("Int32")
    frame["attempts"] = frame["attempts"].astype("int32")
    frame["cohort_version"] = frame["cohort_version"].astype("int32")
    return frame[[c.name for c in LEDGER_COLUMNS]]


def _plan(
    settings: Settings,
    cohort: str,
    version: int,
    deriver: str,
    model_uri: str | None,
    run_id: str,
    mlflow_run_id: str | None,
) -> _Plan:
    from dicom_lakehouse.derive import get_deriver, load_mask_model

    if settings.dicomweb is None:
        raise ConfigError("writeback needs a dicomweb section (url, auth, ...) in the config")
    options: dict[str, str] = {}
    model_version = ""
    if deriver == "seg":
        if not model_uri:
            raise ConfigError("the seg deriver needs --model (an MLflow model URI)")
        # resolves the registry version once, in the configured store; the executors
        # get that store in the options (not through process-wide MLflow state)
        store = settings.mlflow.tracking_uri
        model = load_mask_model(model_uri, tracking_uri=store)
        model_uri = model.uri or model_uri
        model_version = f"{model.name}:{model.version}"
        options["model_uri"] = model_uri
        if store:
            options["tracking_uri"] = store
        built = get_deriver(deriver, model=model)
    else:
        built = get_deriver(deriver)
    return _Plan(
        spec=BackendSpec(settings.lake.root, tuple(sorted(settings.lake.storage.items()))),
        dicomweb=settings.dicomweb,
        deriver=deriver,
        options=tuple(sorted(options.items())),
        deriver_version=str(built.version),
        model_uri=model_uri,
        model_version=model_version,
        cohort=cohort,
        cohort_version=version,
        run_id=run_id,
        mlflow_run_id=mlflow_run_id,
    )


def run_writeback(
    settings: Settings,
    cohort: str,
    deriver: str,
    *,
    model_uri: str | None = None,
    spark: SparkSession | None = None,
    run_id: str | None = None,
    series_per_chunk: int = 16,
) -> WritebackSummary:
    """Derive and store objects for every series of ``cohort`` not yet in the ledger."""
    from pyspark.sql import functions as F

    from dicom_lakehouse.cohort import read_cohort
    from dicom_lakehouse.schemas import WRITEBACK_LEDGER

    started = time.perf_counter()
    spark = get_spark(settings.spark, spark)
    tables = DeltaTables(spark, settings.tables)
    run_id = run_id or uuid.uuid4().hex
    members = read_cohort(settings, cohort, spark=spark)
    latest = members.select(F.max("cohort_version")).first()
    version = int((latest[0] if latest is not None else None) or 0)
    summary = WritebackSummary(
        run_id=run_id, cohort=cohort, cohort_version=version, deriver=deriver
    )
    tracking = _start_tracking(settings, summary, model_uri)
    try:
        plan = _plan(settings, cohort, version, deriver, model_uri, run_id, tracking)
        tables.ensure(LEDGER, WRITEBACK_LEDGER, comment="One row per derived instance")
        sized = members.join(
            tables.read("silver_instances").select(
                "partition_name", "sop_instance_uid", "file_size"
            ),
            ["partition_name", "sop_instance_uid"],
        )
        keys = [
            (r["partition_name"], r["series_instance_uid"])
            for r in sized.select("partition_name", "series_instance_uid").distinct().collect()
        ]
        done, stored = _ledger_state(tables)
        todo = [k for k in keys if derivation_key(k[0], k[1], plan) not in done]
        plan = replace(plan, skip_uids=frozenset(stored))
        summary.series = len(keys)
        summary.series_skipped = len(keys) - len(todo)
        ttl = timedelta(minutes=settings.ingest.lease_minutes)
        with job_lease(tables, f"writeback/{cohort}/{deriver}", run_id, ttl=ttl) as held:
            held.wait()
            for start in range(0, len(todo), series_per_chunk):
                chunk = todo[start : start + series_per_chunk]
                wanted = spark.createDataFrame(
                    chunk, "partition_name string, series_instance_uid string"
                )
                rows = (
                    sized.join(wanted, ["partition_name", "series_instance_uid"], "left_semi")
                    .groupBy("partition_name", "study_instance_uid", "series_instance_uid")
                    .applyInPandas(functools.partial(_derive_and_store, plan), WRITEBACK_LEDGER)
                    .localCheckpoint(eager=True)
                )
                _merge_ledger(tables, rows)
                _tally(rows, summary)
                logger.info("write-back: %s of %s series done", start + len(chunk), len(todo))
    finally:
        summary.seconds = round(time.perf_counter() - started, 3)
        _end_tracking(settings, summary, tracking)
    return summary


def _ledger_state(tables: DeltaTables) -> tuple[set[str], set[str]]:
    """Derivation keys whose every ledger row is stored (series to skip), and the derived
    SOP UIDs stored in the other series (instances not to send again)."""
    from pyspark.sql import functions as F

    ledger = tables.read(LEDGER).withColumn("ok", F.col("status").isin(*_DONE))
    done = {
        r["derivation_key"]
        for r in ledger.groupBy("derivation_key")
        .agg(F.min(F.col("ok").cast("int")).alias("all_ok"))
        .where("all_ok = 1")
        .collect()
    }
    stored = {
        r["derived_sop_uid"]
        for r in ledger.where(F.col("ok") & F.col("derived_sop_uid").isNotNull())
        .select("derivation_key", "derived_sop_uid")
        .collect()
        if r["derivation_key"] not in done
    }
    return done, stored


def _merge_ledger(tables: DeltaTables, rows: DataFrame) -> None:
    """One MERGE: upsert one row per derived instance, and drop a series' earlier
    instance-less failure row (a derive or store error) once it has instance rows."""
    from pyspark.sql import functions as F

    target = tables.delta_table(LEDGER)
    superseded = (
        rows.where(F.col("derived_sop_uid").isNotNull())
        .select("derivation_key")
        .distinct()
        .withColumn("_drop", F.lit(True))
    )
    source = rows.withColumn("_drop", F.lit(False)).unionByName(
        superseded, allowMissingColumns=True
    )
    columns: dict[str, str | Column] = {name: f"s.{name}" for name in rows.columns}
    (
        target.alias("t")
        .merge(
            source.alias("s"),
            "t.derivation_key = s.derivation_key AND t.derived_sop_uid <=> s.derived_sop_uid",
        )
        .whenMatchedDelete(condition="s._drop")
        .whenMatchedUpdate(set=columns)
        .whenNotMatchedInsert(condition="NOT s._drop", values=columns)
        .execute()
    )


def _tally(rows: DataFrame, summary: WritebackSummary) -> None:
    from pyspark.sql import functions as F

    for row in (
        rows.groupBy("status")
        .agg(
            F.count(F.lit(1)).alias("n"),
            F.count("derived_sop_uid").alias("derived"),
        )
        .collect()
    ):
        summary.derived += row["derived"]
        if row["status"] in ("stored", "already_stored", "failed", "retryable"):
            setattr(summary, row["status"], getattr(summary, row["status"]) + row["n"])
    totals = (
        rows.groupBy("derivation_key")
        .agg(F.max("source_bytes_read").alias("b"), F.max("sources_read").alias("n"))
        .agg(F.sum("b"), F.sum("n"))
        .first()
    )
    if totals is not None:
        summary.source_bytes_read += int(totals[0] or 0)
        summary.sources_read += int(totals[1] or 0)


def _start_tracking(
    settings: Settings, summary: WritebackSummary, model_uri: str | None
) -> str | None:
    if not settings.mlflow.tracking_uri:
        return None
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_experiment(settings.mlflow.experiment)
    run = mlflow.start_run(run_name=f"writeback-{summary.cohort}")
    clean_uri = (model_uri or "").split("?", 1)[0]
    mlflow.log_params(
        {
            "job": "writeback",
            "cohort": summary.cohort,
            "cohort_version": summary.cohort_version,
            "deriver": summary.deriver,
            "model_uri": clean_uri or "none",
        }
    )
    return str(run.info.run_id)


def _end_tracking(settings: Settings, summary: WritebackSummary, run_id: str | None) -> None:
    if run_id is None:
        return
    import mlflow

    try:
        metrics = {
            k: float(v)
            for k, v in summary.as_dict().items()
            if isinstance(v, int | float) and not isinstance(v, bool)
        }
        mlflow.log_metrics(metrics)
        mlflow.log_dict(summary.as_dict(), "writeback_summary.json")
        summary.mlflow_run_id = run_id
    finally:
        mlflow.end_run()
