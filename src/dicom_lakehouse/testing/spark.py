"""A local Spark session with Delta for tests (yours and ours)."""

from __future__ import annotations

import tempfile
from typing import TYPE_CHECKING

from dicom_lakehouse.config import SparkConfig
from dicom_lakehouse.spark import get_spark

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = ["TEST_SPARK_CONF", "local_spark"]

TEST_SPARK_CONF: dict[str, str] = {
    "spark.sql.shuffle.partitions": "2",
    "spark.default.parallelism": "2",
    "spark.sql.catalogImplementation": "in-memory",
    "spark.sql.adaptive.enabled": "false",
    "spark.databricks.delta.snapshotPartitions": "1",
    "spark.rdd.compress": "false",
    "spark.executor.heartbeatInterval": "60s",
    "spark.python.worker.reuse": "true",
}


def local_spark(
    master: str = "local[2]", *, app_name: str = "dicom-lakehouse-tests", **conf: str
) -> SparkSession:
    """Start (or return) a local Delta session tuned for tests: UI off, few
    shuffle partitions, an in-memory catalog and a throw-away warehouse."""
    settings = {
        **TEST_SPARK_CONF,
        "spark.sql.warehouse.dir": tempfile.mkdtemp(prefix="dl-warehouse-"),
        **conf,
    }
    return get_spark(SparkConfig(master=master, app_name=app_name, conf=settings))
