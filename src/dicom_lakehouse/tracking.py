"""MLflow tracking for the jobs: params (never PHI or secrets), metrics, datasets."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from dicom_lakehouse.config import Settings
from dicom_lakehouse.io.delta import DeltaTables

if TYPE_CHECKING:
    from dicom_lakehouse.cohort import CohortSummary

__all__ = ["log_cohort", "log_job"]

logger = logging.getLogger(__name__)


def _numeric(summary: Mapping[str, Any]) -> dict[str, float]:
    return {
        key: float(value)
        for key, value in summary.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def log_job(
    settings: Settings, job: str, params: Mapping[str, Any], summary: Mapping[str, Any]
) -> str | None:
    """Log a finished job as one MLflow run (when ``mlflow.tracking_uri`` is set):
    ``params`` (callers pass no PHI or secrets), numeric summary values as
    metrics and the whole summary as an artifact. Returns the run id."""
    if not settings.mlflow.tracking_uri:
        return None
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_experiment(settings.mlflow.experiment)
    with mlflow.start_run(run_name=f"{job}-{summary.get('run_id', '')}") as run:
        mlflow.log_params({"job": job, **params})
        mlflow.log_metrics(_numeric(summary))
        mlflow.log_dict(dict(summary), f"{job}_summary.json")
        return str(run.info.run_id)


def lake_params(settings: Settings) -> dict[str, Any]:
    """Job parameters safe for MLflow: no query strings (SAS), no secrets, no PHI."""
    lake = settings.lake
    return {
        "lake_root": lake.root.split("?", 1)[0],
        "workspace": lake.workspace,
        "service": lake.service,
        "partitions": ",".join(lake.partitions) if lake.partitions else "all",
    }


def log_cohort(
    settings: Settings, tables: DeltaTables, summary: CohortSummary, predicate_sha256: str
) -> str:
    """Log a cohort build as an MLflow run with the cohort as an input dataset."""
    import mlflow
    from mlflow.data.spark_dataset import from_spark
    from pyspark.sql import functions as F

    assert settings.mlflow.tracking_uri is not None
    mlflow.set_tracking_uri(settings.mlflow.tracking_uri)
    mlflow.set_experiment(settings.mlflow.experiment)
    members = tables.read("cohorts").where(
        (F.col("cohort_name") == summary.name) & (F.col("cohort_version") == summary.version)
    )
    dataset = from_spark(
        members.select(
            "partition_name",
            "study_instance_uid",
            "series_instance_uid",
            "sop_instance_uid",
            "file_path",
        ),
        path=tables.ref("cohorts") if tables.by_path else None,
        table_name=None if tables.by_path else tables.ref("cohorts"),
        name=f"{summary.name}@v{summary.version}",
    )
    with mlflow.start_run(run_name=f"cohort-{summary.name}-v{summary.version}") as run:
        mlflow.log_params(
            {
                "job": "cohort",
                "cohort_name": summary.name,
                "cohort_version": summary.version,
                "level": summary.level,
                "predicate_sha256": predicate_sha256,
            }
        )
        mlflow.log_metrics(
            {
                "studies": summary.studies,
                "series": summary.series,
                "instances": summary.instances,
            }
        )
        mlflow.log_input(dataset, context="cohort")
        logger.info(
            "logged cohort %s v%s to MLflow run %s", summary.name, summary.version, run.info.run_id
        )
        return str(run.info.run_id)
