"""Cohorts: named, versioned sets of instances chosen by a SQL predicate on silver.

``build_cohort(settings, name, where, level)`` evaluates ``where`` against the
silver table of ``level`` (``silver_studies``, ``silver_series`` or
``silver_instances``) and stores every instance of the matching studies /
series / instances as version N+1 of the cohort in the ``cohorts`` table,
with its definition in ``cohort_definitions``. A bad predicate raises
:class:`CohortError` naming the problem. With MLflow configured the cohort is
logged as an input dataset of a run (the predicate itself only as a hash:
it may name a patient).
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

from dicom_lakehouse.columns import COHORT_COLUMNS
from dicom_lakehouse.config import DicomWebConfig, Settings
from dicom_lakehouse.errors import ConfigError
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.spark import get_spark

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession

__all__ = [
    "COHORTS",
    "COHORT_DEFINITIONS",
    "CohortError",
    "CohortSummary",
    "build_cohort",
    "read_cohort",
]

logger = logging.getLogger(__name__)

COHORTS = "cohorts"
COHORT_DEFINITIONS = "cohort_definitions"
Level = Literal["study", "series", "instance"]
_LEVEL_TABLE = {
    "study": "silver_studies",
    "series": "silver_series",
    "instance": "silver_instances",
}
_LEVEL_KEYS = {
    "study": ["partition_name", "study_instance_uid"],
    "series": ["partition_name", "study_instance_uid", "series_instance_uid"],
    "instance": ["partition_name", "sop_instance_uid"],
}
_MEMBER_COLUMNS = tuple(
    c.name
    for c in COHORT_COLUMNS
    if c.name not in ("cohort_name", "cohort_version", "retrieve_url", "created_at")
)


class CohortError(ConfigError):
    """The cohort definition is invalid (bad predicate, level or name)."""


@dataclass(frozen=True, slots=True)
class CohortSummary:
    name: str
    version: int
    level: str
    studies: int
    series: int
    instances: int
    seconds: float
    mlflow_run_id: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _validated(df: DataFrame, where: str) -> DataFrame:
    """``df.where(where)``, analysed now so a bad predicate fails here, clearly."""
    from pyspark.errors import PySparkException
    from pyspark.sql import functions as F

    try:
        filtered = df.where(F.expr(where))
        filtered.schema  # noqa: B018 - forces analysis: unknown columns, type errors
    except PySparkException as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CohortError(f"invalid cohort predicate: {first}") from None
    return filtered


def retrieve_url(config: DicomWebConfig | None) -> Column:
    """The WADO-RS URL of each member instance, when a DICOMweb endpoint is configured."""
    from pyspark.sql import functions as F

    if config is None:
        return F.lit(None).cast("string")
    base = config.url.rstrip("/")
    parts: list[Column | str] = [F.lit(base)]
    if config.partition_routes:
        parts += [F.lit("/partitions/"), F.col("partition_name")]
    elif config.partition:
        parts += [F.lit(f"/partitions/{config.partition}")]
    parts += [
        F.lit("/studies/"),
        F.col("study_instance_uid"),
        F.lit("/series/"),
        F.col("series_instance_uid"),
        F.lit("/instances/"),
        F.col("sop_instance_uid"),
    ]
    return F.concat(*parts)


def build_cohort(
    settings: Settings,
    name: str,
    where: str,
    *,
    level: Level = "instance",
    spark: SparkSession | None = None,
) -> CohortSummary:
    """Evaluate ``where`` at ``level`` and store the members as a new cohort version."""
    from pyspark.sql import functions as F

    started = time.perf_counter()
    if level not in _LEVEL_TABLE:
        raise CohortError(f"level must be one of {', '.join(_LEVEL_TABLE)}, not {level!r}")
    if not name or not name.replace("_", "").replace("-", "").isalnum():
        raise CohortError("cohort name must be letters, digits, '-' or '_'")
    spark = get_spark(settings.spark, spark)
    tables = DeltaTables(spark, settings.tables)
    if not tables.exists("silver_instances"):
        raise CohortError("no silver tables yet: run `dicom-lakehouse refine` first")
    from dicom_lakehouse import schemas

    tables.ensure(COHORTS, schemas.COHORTS, partition_by=["cohort_name"])
    tables.ensure(COHORT_DEFINITIONS, schemas.COHORT_DEFINITIONS)

    chosen = _validated(tables.read(_LEVEL_TABLE[level]), where).select(*_LEVEL_KEYS[level])
    instances = tables.read("silver_instances")
    members = instances.join(chosen.distinct(), _LEVEL_KEYS[level], "left_semi")
    previous = (
        tables.read(COHORT_DEFINITIONS)
        .where(F.col("cohort_name") == name)
        .agg(F.max("cohort_version"))
        .first()
    )
    version = int((previous[0] if previous else None) or 0) + 1
    created = datetime.now(UTC)
    rows = members.select(
        F.lit(name).alias("cohort_name"),
        F.lit(version).alias("cohort_version"),
        *[F.col(c) for c in _MEMBER_COLUMNS],
        retrieve_url(settings.dicomweb).alias("retrieve_url"),
        F.lit(created).cast("timestamp").alias("created_at"),
    ).localCheckpoint(eager=True)
    counts = rows.agg(
        F.countDistinct("partition_name", "study_instance_uid").alias("studies"),
        F.countDistinct("partition_name", "series_instance_uid").alias("series"),
        F.count(F.lit(1)).alias("instances"),
    ).first()
    assert counts is not None
    tables.append(rows, COHORTS)
    digest = hashlib.sha256(where.encode("utf-8")).hexdigest()
    definition = spark.createDataFrame(
        [
            (
                name,
                version,
                level,
                where,
                digest,
                counts["studies"],
                counts["series"],
                counts["instances"],
                _table_version(spark, tables, "silver_instances"),
                created,
            )
        ],
        schemas.COHORT_DEFINITIONS,
    )
    tables.append(definition, COHORT_DEFINITIONS)
    summary = CohortSummary(
        name,
        version,
        level,
        counts["studies"],
        counts["series"],
        counts["instances"],
        round(time.perf_counter() - started, 3),
    )
    if settings.mlflow.tracking_uri:
        from dicom_lakehouse.tracking import log_cohort

        run_id = log_cohort(settings, tables, summary, digest)
        summary = CohortSummary(**{**summary.as_dict(), "mlflow_run_id": run_id})
    return summary


def _table_version(spark: SparkSession, tables: DeltaTables, name: str) -> int:
    return int(tables.last_commit(name).get("version") or 0)


def read_cohort(
    settings: Settings, name: str, version: int | None = None, spark: SparkSession | None = None
) -> DataFrame:
    """The members of cohort ``name`` (the latest version unless ``version``)."""
    from pyspark.sql import functions as F

    spark = get_spark(settings.spark, spark)
    tables = DeltaTables(spark, settings.tables)
    rows = tables.read(COHORTS).where(F.col("cohort_name") == name)
    if version is None:
        latest = rows.agg(F.max("cohort_version")).first()
        if latest is None or latest[0] is None:
            raise CohortError(f"no cohort named {name!r}")
        version = int(latest[0])
    return rows.where(F.col("cohort_version") == version)
