"""Views named like the Azure "Copy DICOM Metadata Changes to ADLS Gen2 in Delta
Format" template's tables (``instance``, ``series``, ``study``, camelCase
columns), over the silver tables, so notebooks written for the template keep
working.

In catalog mode they are persistent views next to the tables; with path-based
tables they are temporary views of the session (``register_compat_views``),
and ``silver.compat_tables`` also writes them as Delta tables (partitioned by
``partitionName``, as the template does) for SQL endpoints and shortcuts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from dicom_lakehouse.io.delta import DeltaTables

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

__all__ = ["COMPAT_VIEWS", "compat_frames", "register_compat_views", "write_compat_tables"]

_COMMON = (
    ("partition_name", "partitionName"),
    ("study_instance_uid", "studyInstanceUid"),
)
_PATIENT_STUDY = (
    ("last_modified", "lastModifiedTimestamp"),
    ("study_date", "studyDate"),
    ("study_description", "studyDescription"),
    ("issuer_of_patient_id", "issuerOfPatientId"),
    ("patient_id", "patientId"),
    ("patient_name", "patientName"),
)
COMPAT_VIEWS: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "instance": (
        "silver_instances",
        (
            *_COMMON,
            ("series_instance_uid", "seriesInstanceUid"),
            ("sop_instance_uid", "sopInstanceUid"),
            *_PATIENT_STUDY,
            ("modality", "modality"),
            ("sop_class_uid", "sopClassUid"),
            ("file_path", "filePath"),
        ),
    ),
    "series": (
        "silver_series",
        (
            *_COMMON,
            ("series_instance_uid", "seriesInstanceUid"),
            *_PATIENT_STUDY,
            ("modality", "modality"),
            ("instance_count", "instanceCount"),
        ),
    ),
    "study": (
        "silver_studies",
        (
            *_COMMON,
            *_PATIENT_STUDY,
            ("modalities", "modality"),
            ("series_count", "seriesCount"),
            ("instance_count", "instanceCount"),
        ),
    ),
}


def compat_frames(tables: DeltaTables) -> dict[str, DataFrame]:
    """The compatibility views as DataFrames."""
    from pyspark.sql import functions as F

    return {
        view: tables.read(source).select(*[F.col(src).alias(dst) for src, dst in columns])
        for view, (source, columns) in COMPAT_VIEWS.items()
    }


def register_compat_views(spark: SparkSession, tables: DeltaTables) -> list[str]:
    """Create the views (persistent in catalog mode, temporary otherwise)."""
    names = []
    for view, (source, columns) in COMPAT_VIEWS.items():
        name = tables.config.prefix + view
        select = ", ".join(f"`{src}` AS `{dst}`" for src, dst in columns)
        if tables.by_path:
            tables.read(source).selectExpr(
                *[f"`{src}` AS `{dst}`" for src, dst in columns]
            ).createOrReplaceTempView(name)
        else:
            spark.sql(
                f"CREATE OR REPLACE VIEW {tables.ref(view)} AS "
                f"SELECT {select} FROM {tables.ref(source)}"
            )
            name = tables.ref(view)
        names.append(name)
    return names


def write_compat_tables(tables: DeltaTables) -> None:
    """Materialise the views as Delta tables (partitioned by ``partitionName``)."""
    for view, df in compat_frames(tables).items():
        writer = (
            df.write.format("delta")
            .mode("overwrite")
            .option("overwriteSchema", "true")
            .partitionBy("partitionName")
        )
        if tables.by_path:
            writer.save(tables.ref(view))
        else:
            writer.saveAsTable(tables.ref(view))
