"""``make demo``: build the embedded sample lake, ingest it locally, show what landed."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from dicom_lakehouse.config import Settings, settings_from_mapping
from dicom_lakehouse.ingest import BRONZE_INSTANCES, BRONZE_QUARANTINE, LAKE_FILES, run_ingest

__all__ = ["demo_settings", "run_demo"]

logger = logging.getLogger(__name__)


def demo_settings(folder: Path, master: str = "local[2]") -> Settings:
    """The demo's configuration: the sample lake and tables under ``folder``."""
    return settings_from_mapping(
        {
            "lake": {"root": str(folder / "lake"), "workspace": "ws1", "service": "svc1"},
            "tables": {"location": str(folder / "tables")},
            "spark": {"master": master},
        }
    )


def run_demo(folder: Path, *, show: bool = True) -> dict[str, Any]:
    """Build (once) the sample lake in ``folder/lake`` and ingest it."""
    from dicom_lakehouse.io.delta import DeltaTables
    from dicom_lakehouse.spark import get_spark
    from dicom_lakehouse.testing.sample_lake import build_sample_lake

    folder = folder.resolve()
    lake_root = folder / "lake"
    if not (lake_root / "AHDS").exists():
        logger.info("building the sample lake in %s", lake_root)
        build_sample_lake(lake_root)
    settings = demo_settings(folder)
    spark = get_spark(settings.spark)
    summary = run_ingest(settings, spark)
    if show:
        tables = DeltaTables(spark, settings.tables)
        print(f"tables in {settings.tables.location}:")
        instances = tables.read(BRONZE_INSTANCES)
        print(f"\n{BRONZE_INSTANCES}: instances by partition and modality")
        instances.groupBy("partition_name", "modality").count().orderBy(
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
    return summary.as_dict()
