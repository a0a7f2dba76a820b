"""``make demo``: build the embedded sample lake, ingest, refine, build a cohort
and, when a DICOMweb server is given, write derived objects back.

MLflow runs go to a SQLite store in the demo folder (``mlflow.db``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dicom_lakehouse.config import Settings, settings_from_mapping
from dicom_lakehouse.ingest import BRONZE_INSTANCES, BRONZE_QUARANTINE, LAKE_FILES, run_ingest

__all__ = ["DEMO_COHORT", "demo_settings", "run_demo"]

logger = logging.getLogger(__name__)

DEMO_COHORT = (
    "ct_women_50_70_thin",
    "modality = 'CT' AND patient_sex = 'F' "
    "AND patient_age_years BETWEEN 50 AND 70 AND slice_thickness <= 1.25",
)


def demo_settings(
    folder: Path, master: str = "local[2]", dicomweb: dict[str, Any] | None = None
) -> Settings:
    """The demo's configuration: the sample lake, tables and MLflow under ``folder``."""
    data: dict[str, Any] = {
        "lake": {"root": str(folder / "lake"), "workspace": "ws1", "service": "svc1"},
        "tables": {"location": str(folder / "tables")},
        "spark": {"master": master},
        "mlflow": {"tracking_uri": f"sqlite:///{folder / 'mlflow.db'}"},
    }
    if dicomweb:
        data["dicomweb"] = dicomweb
    return settings_from_mapping(data)


def run_demo(
    folder: Path, *, show: bool = True, dicomweb: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build (once) the sample lake in ``folder/lake`` and run the jobs over it."""
    from dicom_lakehouse.cohort import build_cohort
    from dicom_lakehouse.io.delta import DeltaTables
    from dicom_lakehouse.refine import run_refine
    from dicom_lakehouse.spark import get_spark
    from dicom_lakehouse.testing.sample_lake import build_sample_lake

    folder = folder.resolve()
    lake_root = folder / "lake"
    if not (lake_root / "AHDS").exists():
        logger.info("building the sample lake in %s", lake_root)
        build_sample_lake(lake_root)
    settings = demo_settings(folder, dicomweb=dicomweb)
    spark = get_spark(settings.spark)
    summary = run_ingest(settings, spark).as_dict()
    refine = run_refine(settings, spark)
    cohort = build_cohort(settings, DEMO_COHORT[0], DEMO_COHORT[1], spark=spark)
    summary["refine"] = refine.as_dict()
    summary["cohort"] = cohort.as_dict()
    if settings.dicomweb is not None:
        from dicom_lakehouse.writeback import run_writeback

        summary["writeback"] = run_writeback(settings, DEMO_COHORT[0], "sc", spark=spark).as_dict()
    if show:
        tables = DeltaTables(spark, settings.tables)
        print(f"tables in {settings.tables.location}:")
        print(f"\n{BRONZE_INSTANCES}: file versions by partition and modality")
        tables.read(BRONZE_INSTANCES).groupBy("partition_name", "modality").count().orderBy(
            "partition_name", "modality"
        ).show(50, truncate=False)
        print(f"{BRONZE_QUARANTINE}: quarantined files")
        tables.read(BRONZE_QUARANTINE).select("file_path", "reason", "detail").orderBy(
            "file_path"
        ).show(50, truncate=60)
        print(f"{LAKE_FILES}: every listed file by kind")
        tables.read(LAKE_FILES).groupBy("kind", "reason").count().orderBy("kind").show(
            50, truncate=False
        )
        print("silver_studies: the studies a cohort query filters")
        tables.read("silver_studies").select(
            "partition_name",
            "study_date",
            "modalities",
            "patient_sex",
            "patient_age_years",
            "series_count",
            "instance_count",
            "min_slice_thickness",
        ).orderBy("partition_name", "study_date").show(20, truncate=False)
        print(
            f"cohort {cohort.name} v{cohort.version}: {cohort.studies} studies, "
            f"{cohort.series} series, {cohort.instances} instances"
        )
        if "writeback" in summary:
            wb = summary["writeback"]
            print(
                f"write-back: {wb['derived']} derived, {wb['stored']} stored, "
                f"{wb['already_stored']} already stored, {wb['failed']} failed"
            )
        print(f"MLflow runs: {settings.mlflow.tracking_uri}")
    return summary
