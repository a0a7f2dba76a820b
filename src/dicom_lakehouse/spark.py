"""The one place that gets a SparkSession.

On a platform (Databricks, Fabric, Synapse) the session exists already and is
used as it is. Locally (``spark.master`` set) a session with the Delta
extension is started through ``configure_spark_with_delta_pip``, which has
Ivy resolve the Delta jars from Maven Central on first start and cache them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_lakehouse.config import SparkConfig
from dicom_lakehouse.errors import ConfigError

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

__all__ = [
    "LOCAL_DEFAULTS",
    "get_spark",
    "hadoop_azure_package",
    "interpreted_expressions",
    "spark_versions",
]

logger = logging.getLogger(__name__)

LOCAL_DEFAULTS: dict[str, str] = {
    "spark.sql.extensions": "io.delta.sql.DeltaSparkSessionExtension",
    "spark.sql.catalog.spark_catalog": "org.apache.spark.sql.delta.catalog.DeltaCatalog",
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.sql.shuffle.partitions": "4",
    "spark.sql.session.timeZone": "UTC",
    "spark.driver.memory": "2g",
    "spark.sql.execution.arrow.pyspark.enabled": "true",
    "spark.databricks.delta.snapshotPartitions": "2",
    "spark.sql.sources.parallelPartitionDiscovery.parallelism": "4",
    "spark.databricks.delta.properties.defaults.enableDeletionVectors": "false",
}


_PLATFORM_ENV = ("DATABRICKS_RUNTIME_VERSION", "PYSPARK_GATEWAY_PORT", "SPARK_ENV_LOADED")


def get_spark(config: SparkConfig | None = None, spark: SparkSession | None = None) -> SparkSession:
    """Return ``spark`` if given, the active session, or a new local Delta session."""
    if spark is not None:
        return spark
    try:
        from pyspark.sql import SparkSession
    except ImportError as exc:
        raise ConfigError(
            "pyspark is not installed: install dicom-lakehouse[spark] for local use"
        ) from exc
    config = config or SparkConfig()
    active = SparkSession.getActiveSession()
    if active is not None:
        return active
    if config.master is None and any(os.environ.get(v) for v in _PLATFORM_ENV):
        # a platform task (Databricks wheel task, spark-submit) with no session yet:
        # attach to the cluster's context rather than start a local one
        return SparkSession.builder.getOrCreate()
    if config.master is None:
        raise ConfigError(
            "no active Spark session and spark.master is not set: "
            "set spark.master (e.g. local[2]) to start a local session"
        )
    from delta import configure_spark_with_delta_pip

    builder = SparkSession.builder.master(config.master).appName(config.app_name)
    # Python workers run the driver's interpreter, so they see the same packages.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    for key, value in {**LOCAL_DEFAULTS, **config.conf}.items():
        builder = builder.config(key, value)
    logger.info("starting a local Spark session (%s) with Delta", config.master)
    session = configure_spark_with_delta_pip(
        builder, extra_packages=list(config.extra_packages)
    ).getOrCreate()
    session.sparkContext.setLogLevel("WARN")
    return session


def spark_versions(spark: SparkSession) -> dict[str, str]:
    """Spark and Delta versions of the session (Delta from the JVM when known)."""
    versions = {"spark": spark.version}
    import importlib.metadata as md

    try:
        versions["delta"] = md.version("delta-spark")
    except md.PackageNotFoundError:  # the platform ships Delta without the pip package
        versions["delta"] = "unknown"
    return versions


def hadoop_azure_package() -> str:
    """The Maven coordinate of ``hadoop-azure`` matching the local pyspark's Hadoop
    (connectors must match it exactly), for ``spark.extra_packages``."""
    import pyspark

    jars = Path(pyspark.__file__).parent / "jars"
    for jar in sorted(jars.glob("hadoop-client-api-*.jar")):
        return f"org.apache.hadoop:hadoop-azure:{jar.stem.removeprefix('hadoop-client-api-')}"
    raise ConfigError("this pyspark bundles no Hadoop client: use the platform's connector")


# Expressions evaluated without generated Java code: compiling it costs more than
# evaluating a small change (see interpreted_expressions). NO_CODEGEN also stops
# whole-stage code, and a query planned in either mode runs in the other. Not
# spark.sql.codegen.wholeStage: it also decides whether a Parquet scan is columnar,
# so flipping it while another thread plans a query fails that query.
_FACTORY_MODE = "spark.sql.codegen.factoryMode"


@contextlib.contextmanager
def interpreted_expressions(spark: SparkSession, enabled: bool = True) -> Iterator[None]:
    """Evaluate expressions (projections, predicates, orderings) without generated
    code inside the block.

    Spark compiles Java code for every distinct plan, a fixed cost of seconds per
    job that only pays off on many rows; a refine of a small change runs dozens of
    distinct plans over a few rows each. The setting is the session's, so queries
    other threads run meanwhile are interpreted too (same results, no failure);
    the previous value is restored on exit. A session that refuses the setting
    (e.g. Spark Connect) keeps its own."""
    from py4j.protocol import Py4JError
    from pyspark.errors import PySparkException

    before: str | None = None
    if enabled:
        try:
            before = spark.conf.get(_FACTORY_MODE, None)
            spark.conf.set(_FACTORY_MODE, "NO_CODEGEN")
        except (PySparkException, Py4JError) as exc:
            logger.debug("cannot set %s: %s", _FACTORY_MODE, type(exc).__name__)
            enabled = False
    try:
        yield
    finally:
        if enabled:
            if before is None:
                spark.conf.unset(_FACTORY_MODE)
            else:
                spark.conf.set(_FACTORY_MODE, before)
