"""Spark schemas of every table, built from :mod:`dicom_lakehouse.columns`."""

from __future__ import annotations

from pyspark.sql import types as T

from dicom_lakehouse.columns import (
    BRONZE_INSTANCE_COLUMNS,
    BRONZE_QUARANTINE_COLUMNS,
    COHORT_COLUMNS,
    COHORT_DEFINITION_COLUMNS,
    HEADER_RESULT_COLUMNS,
    INGEST_RUNS_COLUMNS,
    LAKE_FILES_COLUMNS,
    LEDGER_COLUMNS,
    LISTING_COLUMNS,
    Column,
)

__all__ = [
    "BRONZE_INSTANCES",
    "BRONZE_QUARANTINE",
    "COHORTS",
    "COHORT_DEFINITIONS",
    "HEADER_RESULT",
    "INGEST_RUNS",
    "LAKE_FILES",
    "LISTING",
    "WRITEBACK_LEDGER",
    "spark_schema",
]

_SPARK = {
    "string": T.StringType(),
    "long": T.LongType(),
    "int": T.IntegerType(),
    "double": T.DoubleType(),
    "bool": T.BooleanType(),
    "timestamp": T.TimestampType(),
}


def spark_schema(columns: tuple[Column, ...]) -> T.StructType:
    return T.StructType(
        [
            T.StructField(c.name, _SPARK[c.kind], True, {"comment": c.doc} if c.doc else {})
            for c in columns
        ]
    )


LISTING = spark_schema(LISTING_COLUMNS)
HEADER_RESULT = spark_schema(HEADER_RESULT_COLUMNS)
BRONZE_INSTANCES = spark_schema(BRONZE_INSTANCE_COLUMNS)
BRONZE_QUARANTINE = spark_schema(BRONZE_QUARANTINE_COLUMNS)
LAKE_FILES = spark_schema(LAKE_FILES_COLUMNS)
INGEST_RUNS = spark_schema(INGEST_RUNS_COLUMNS)
COHORTS = spark_schema(COHORT_COLUMNS)
COHORT_DEFINITIONS = spark_schema(COHORT_DEFINITION_COLUMNS)
WRITEBACK_LEDGER = spark_schema(LEDGER_COLUMNS)
