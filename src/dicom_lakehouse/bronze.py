"""Spark layer of bronze ingestion: listing and header reading on executors.

``listing_dataframe`` runs the walker's listing tasks inside ``mapInArrow``
(or, for a lake small enough, on the driver: no Spark job at all);
``read_headers`` reads the headers of a listing's instance files inside
``mapInArrow`` (batched, Arrow in and out, never a row-at-a-time UDF); and
``split_results`` is the pure transform that splits header results into
bronze rows and quarantine rows.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dicom_lakehouse.columns import (
    BRONZE_INSTANCE_COLUMNS,
    BRONZE_QUARANTINE_COLUMNS,
    HEADER_RESULT_COLUMNS,
    LISTING_COLUMNS,
    arrow_schema,
)
from dicom_lakehouse.extract import ExtractOptions, extract_rows
from dicom_lakehouse.lake.backend import BackendSpec, open_backend
from dicom_lakehouse.lake.layout import service_root
from dicom_lakehouse.lake.walker import ListingTask, classify_entry, run_listing_task

if TYPE_CHECKING:
    from datetime import datetime

    from pyspark.sql import DataFrame, SparkSession

__all__ = ["list_on_driver", "listing_dataframe", "read_headers", "split_results"]

_OUT_ROWS = 256


def _chunks(rows: Iterator[dict], size: int) -> Iterator[list[dict]]:
    """``rows`` in lists of at most ``size``."""
    while chunk := list(itertools.islice(rows, size)):
        yield chunk


class _TooManyError(Exception):
    """The driver listing passed its limit."""


def list_on_driver(
    spec: BackendSpec,
    tasks: list[ListingTask],
    workspace: str,
    service: str,
    verify_prefix: bool = False,
    *,
    limit: int,
    threads: int = 16,
) -> pa.Table | None:
    """The tasks' listing rows (LISTING columns) listed on the driver, or ``None``
    as soon as more than ``limit`` entries turn up (list on executors then).

    A scheduled run over a small or unchanged lake then costs no Spark job for its
    listing; a large lake pays at most ``limit`` entries listed twice."""
    if limit <= 0:
        return None
    root = service_root(workspace, service)
    backend = open_backend(spec)
    seen = itertools.count(1)  # next() is atomic under the GIL

    def one(task: ListingTask) -> list[dict]:
        rows = []
        for entry in run_listing_task(backend, task):
            if next(seen) > limit:
                raise _TooManyError
            row = classify_entry(entry, root, verify_prefix=verify_prefix)
            if row is not None:
                rows.append(row)
        return rows

    try:
        with ThreadPoolExecutor(max(1, min(threads, len(tasks))), "dl-list") as pool:
            parts = list(pool.map(one, tasks))
    except _TooManyError:
        return None
    rows = [row for part in parts for row in part]
    return pa.Table.from_pylist(rows, schema=arrow_schema(LISTING_COLUMNS))


def listing_from_arrow(spark: SparkSession, table: pa.Table) -> DataFrame:
    """A driver listing as a Spark DataFrame (LISTING schema)."""
    import pyspark

    from dicom_lakehouse.schemas import LISTING

    if int(pyspark.__version__.split(".")[0]) >= 4:  # Arrow tables are accepted as is
        return spark.createDataFrame(table, LISTING)  # type: ignore[arg-type]
    return spark.createDataFrame(table.to_pandas(), LISTING)


def listing_dataframe(
    spark: SparkSession,
    spec: BackendSpec,
    tasks: list[ListingTask],
    workspace: str,
    service: str,
    verify_prefix: bool = False,
) -> DataFrame:
    """A DataFrame of every file the tasks cover (LISTING schema), listed on executors."""
    from dicom_lakehouse.schemas import LISTING

    root = service_root(workspace, service)
    schema = arrow_schema(LISTING_COLUMNS)
    task_list = list(tasks)

    def list_batches(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        backend = open_backend(spec)
        for batch in batches:
            for task_id in batch.column(0).to_pylist():
                entries = run_listing_task(backend, task_list[task_id])
                rows = (
                    row
                    for row in (
                        classify_entry(e, root, verify_prefix=verify_prefix) for e in entries
                    )
                    if row is not None
                )
                for chunk in _chunks(rows, 4096):
                    yield pa.RecordBatch.from_pylist(chunk, schema=schema)

    slices = max(1, min(len(task_list), spark.sparkContext.defaultParallelism))
    ids = spark.range(0, len(task_list), 1, slices)
    return ids.mapInArrow(list_batches, LISTING)


def header_batches(
    batches: Iterable[pa.RecordBatch],
    extract: Callable[[Iterator[dict[str, Any]]], Iterator[dict[str, Any]]],
) -> Iterator[pa.RecordBatch]:
    """The ``mapInArrow`` body of a header read: rows in, ``extract``, HEADER_RESULT
    batches out."""
    schema = arrow_schema(HEADER_RESULT_COLUMNS)
    rows = (row for batch in batches for row in batch.to_pylist())
    for chunk in _chunks(extract(rows), _OUT_ROWS):
        yield pa.RecordBatch.from_pylist(chunk, schema=schema)


def read_headers(
    listed: DataFrame, spec: BackendSpec, options: ExtractOptions, *, tasks: int
) -> DataFrame:
    """Header results (HEADER_RESULT schema) for the instance files in ``listed``."""
    from dicom_lakehouse.schemas import HEADER_RESULT

    wanted = [
        "file_path",
        "partition_name",
        "watermark",
        "layout",
        "file_size",
        "last_modified",
        "etag",
        "access_tier",
    ]

    def read_batches(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        backend = open_backend(spec)
        return header_batches(batches, lambda rows: extract_rows(backend, rows, options))

    return listed.select(*wanted).repartition(max(1, tasks)).mapInArrow(read_batches, HEADER_RESULT)


def split_results(
    results: DataFrame, *, ingested_at: datetime, run_id: str
) -> tuple[DataFrame, DataFrame]:
    """Split header results into (bronze_instances rows, bronze_quarantine rows)."""
    from pyspark.sql import functions as F

    stamped = results.withColumn("ingested_at", F.lit(ingested_at).cast("timestamp")).withColumn(
        "run_id", F.lit(run_id)
    )
    good = stamped.where(F.col("status") == "ingested").select(
        *[c.name for c in BRONZE_INSTANCE_COLUMNS]
    )
    bad = stamped.where(F.col("status") != "ingested").select(
        *[c.name for c in BRONZE_QUARANTINE_COLUMNS]
    )
    return good, bad
