"""The Spark-native path (``lake.access: hadoop``): list and read through Hadoop.

For clusters that hold only cluster-level credentials (a Databricks external
location, a Synapse linked service, ``fs.azure.*`` keys in the Spark conf): the
lake is listed with Spark's ``binaryFile`` source, content pruned, and headers
come from the first ``lake.hadoop_head_bytes`` of each file read by the same
source. It is slower than the direct backends, and documented so:

- ``binaryFile`` reads whole files on the executors (no ranged reads), so the
  read pass costs the lake's bytes, and files above ``lake.hadoop_max_file_bytes``
  are quarantined unread (``file_too_large``);
- Hadoop gives no ETag: a new version is a new size or modification time;
- Spark's file index hides names starting with ``_`` or ``.``; the service never
  writes such names, but a foreign file named so is not reported.

The parsing is the direct path's: :func:`extract_rows` over a backend that
serves each file's head from memory.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import pyarrow as pa

from dicom_lakehouse.bronze import header_batches
from dicom_lakehouse.columns import LISTING_COLUMNS, arrow_schema
from dicom_lakehouse.errors import StorageError, StorageNotFoundError, StorageTooLargeError
from dicom_lakehouse.extract import ExtractOptions, extract_row
from dicom_lakehouse.lake.backend import FileInfo
from dicom_lakehouse.lake.layout import DEFAULT_PARTITION, service_root
from dicom_lakehouse.lake.walker import classify_entry

if TYPE_CHECKING:
    from pyspark.sql import DataFrame, SparkSession

    from dicom_lakehouse.config import LakeConfig

__all__ = ["HeadBackend", "hadoop_headers", "hadoop_listing", "qualified_root"]


def qualified_root(spark: SparkSession, root: str) -> str:
    """``root`` as Hadoop qualifies it (``/data/lake`` -> ``file:/data/lake``), no
    trailing slash: the prefix of every path ``binaryFile`` reports."""
    from py4j.protocol import Py4JJavaError

    jvm: Any = spark.sparkContext._jvm
    path = jvm.org.apache.hadoop.fs.Path(root)
    try:
        fs = path.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration())  # type: ignore[attr-defined]
    except Py4JJavaError as exc:  # keep only the Java error's class
        raise StorageError(
            f"Hadoop has no filesystem for the lake root's scheme ({_java_class(exc)}): "
            "add the connector's package (spark.extra_packages) or use lake.access: direct"
        ) from None
    return str(fs.makeQualified(path).toString()).rstrip("/")


def _java_class(exc: Exception) -> str:
    java = getattr(exc, "java_exception", None)
    return str(java.getClass().getName()) if java is not None else type(exc).__name__


def _files(spark: SparkSession, folder_uri: str) -> DataFrame:
    """Every file below ``folder_uri`` (``binaryFile`` columns, lazily read)."""
    from pyspark.errors import AnalysisException

    try:
        return (
            spark.read.format("binaryFile").option("recursiveFileLookup", "true").load(folder_uri)
        )
    except AnalysisException as exc:
        if "PATH_NOT_FOUND" in str(exc) or "Path does not exist" in str(exc):
            raise StorageError("the service folder does not exist under the lake root") from None
        raise StorageError(f"Hadoop cannot list the lake ({type(exc).__name__})") from None


def _relative(uri: str, prefix: str, service: str) -> str:
    """The container-relative path of a listed URI."""
    if uri.startswith(prefix):
        return uri[len(prefix) :]
    at = uri.find(f"/{service}/")
    return uri[at + 1 :] if at >= 0 else uri


def hadoop_listing(spark: SparkSession, lake: LakeConfig, root_uri: str) -> DataFrame:
    """The lake's listing (LISTING schema) from ``binaryFile`` with content pruned."""
    from pyspark.sql import functions as F

    from dicom_lakehouse.schemas import LISTING

    service = service_root(lake.workspace, lake.service)
    prefix = root_uri + "/"
    wanted = set(lake.partitions) if lake.partitions is not None else None
    if wanted is not None and DEFAULT_PARTITION in wanted:
        wanted.add("")  # files directly under the service folder
    verify = lake.verify_name_prefix
    schema = arrow_schema(LISTING_COLUMNS)

    def rows(infos: Iterable[FileInfo]) -> list[dict[str, Any]]:
        classified = (classify_entry(info, service, verify_prefix=verify) for info in infos)
        return [
            row
            for row in classified
            if row is not None and (wanted is None or row["partition_folder"] in wanted)
        ]

    def classify_batches(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        for batch in batches:
            columns = (c.to_pylist() for c in batch.columns)
            infos = (
                FileInfo(_relative(uri, prefix, service), size, mtime)
                for uri, size, mtime in zip(*columns, strict=True)
            )
            yield pa.RecordBatch.from_pylist(rows(infos), schema=schema)

    # without content the scan's tasks only carry metadata: a few of them will do
    files = (
        _files(spark, prefix + service)
        .select("path", "length", F.col("modificationTime").alias("mtime"))
        .coalesce(max(1, spark.sparkContext.defaultParallelism))
    )
    listing = files.mapInArrow(classify_batches, LISTING)
    empty = rows(_empty_files(spark, files, prefix, service))
    if empty:
        listing = listing.unionByName(spark.createDataFrame(empty, LISTING))
    return listing


def _empty_files(
    spark: SparkSession, files: DataFrame, prefix: str, service: str
) -> list[FileInfo]:
    """Zero-byte files: the file index lists them, but Spark's scans skip them.

    Counting costs one metadata-only job; the names are fetched only when the counts
    differ (fetching them costs a py4j call per file)."""
    from py4j.protocol import Py4JJavaError

    indexed = files._jdf.inputFiles()  # type: ignore[attr-defined]
    if len(indexed) == files.count():
        return []
    # the index and the scan spell URIs differently (file:/// and file:/): compare
    # container-relative paths
    scanned = {_relative(row[0], prefix, service) for row in files.select("path").collect()}
    jvm: Any = spark.sparkContext._jvm
    conf = spark.sparkContext._jsc.hadoopConfiguration()  # type: ignore[attr-defined]
    found = []
    for uri in (str(u) for u in indexed):
        rel = _relative(uri, prefix, service)
        if rel in scanned:
            continue
        path = jvm.org.apache.hadoop.fs.Path(uri)
        try:
            status = path.getFileSystem(conf).getFileStatus(path)
        except Py4JJavaError:  # gone since it was indexed: nothing to account for
            continue
        mtime = datetime.fromtimestamp(status.getModificationTime() / 1000, tz=UTC)
        found.append(FileInfo(rel, int(status.getLen()), mtime))
    return found


class HeadBackend:
    """One file's first bytes as a read-only backend (``None``: the file is gone)."""

    def __init__(self, head: bytes | None, *, too_large: bool = False) -> None:
        self.head = head
        self.too_large = too_large

    def list_dir(self, prefix: str) -> Iterator[FileInfo]:
        raise StorageError("a file's head cannot be listed")

    def list_tree(self, prefix: str, shard: str, digits: int) -> Iterator[FileInfo]:
        raise StorageError("a file's head cannot be listed")

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        if self.too_large:
            raise StorageTooLargeError(
                "the file is larger than lake.hadoop_max_file_bytes, and lake.access: "
                "hadoop reads whole files"
            )
        if self.head is None:
            raise StorageNotFoundError("file vanished before it was read")
        return self.head[offset : offset + length]


def extract_from_heads(
    rows: Iterable[dict[str, Any]], options: ExtractOptions, max_file_bytes: int
) -> Iterator[dict[str, Any]]:
    """Header-result rows for listed rows that carry ``head`` (their first bytes) and
    ``read_size`` (the file's size when it was read, ``None`` when it was not)."""
    for row in rows:
        head, size = row.pop("head"), row.pop("read_size")
        if head is None and row["file_size"] == 0:
            head, size = b"", 0  # Spark's scans skip empty files: nothing to read
        too_large = (row["file_size"] or 0) > max_file_bytes
        whole = head is not None and size is not None and len(head) >= size
        # a head shorter than its file ends the header search where the head ends
        limit = options.max_header_bytes if whole or head is None else len(head)
        opts = dataclasses.replace(options, max_header_bytes=limit)
        listed = {**row, "file_size": size if size is not None else row["file_size"]}
        result = extract_row(HeadBackend(head, too_large=too_large), listed, opts)
        result["file_size"] = row["file_size"]
        if result["reason"] == "header_too_large" and not whole:
            result["detail"] = f"{result['detail']}; raise lake.hadoop_head_bytes"
        # binaryFile read the whole file: report those bytes, not the head's
        result["header_bytes_read"] = size if head is not None else 0
        yield result


def hadoop_headers(
    spark: SparkSession,
    listed: DataFrame,
    lake: LakeConfig,
    root_uri: str,
    options: ExtractOptions,
    *,
    broadcast: bool = True,
) -> DataFrame:
    """Header results (HEADER_RESULT schema) for the instance files in ``listed``.

    One ``binaryFile`` pass over the service folder, with the size limit and the
    oldest candidate's modification time pushed down so older files are skipped
    unread, joined to ``listed`` on the path (``broadcast``: ``listed`` is small
    enough to send to every task)."""
    from pyspark.sql import functions as F

    from dicom_lakehouse.schemas import HEADER_RESULT

    service = service_root(lake.workspace, lake.service)
    prefix = root_uri + "/"
    head_bytes, max_file = lake.hadoop_head_bytes, lake.hadoop_max_file_bytes
    oldest = listed.agg(F.min("last_modified")).first()[0]  # type: ignore[index]
    content = _files(spark, prefix + service).where(F.col("length") <= max_file)
    if oldest is not None:
        content = content.where(F.col("modificationTime") >= F.lit(oldest))
    uri = F.col("path")
    heads = content.select(
        # the container-relative path, as _relative finds it
        F.when(uri.startswith(prefix), F.substring(uri, len(prefix) + 1, 1 << 30))
        .otherwise(F.regexp_extract(uri, f"/({re.escape(service)}/.*)$", 1))
        .alias("file_path"),
        F.substring("content", 1, head_bytes).alias("head"),
        F.col("length").alias("read_size"),
    )
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
    rows = listed.select(*wanted)
    # The heads stay where the scan read them: the (small) listing is broadcast to
    # them, and the listed files the scan did not return (gone, too large, empty)
    # are found by a content-free scan, so no head is ever shuffled.
    found = heads.join(F.broadcast(rows) if broadcast else rows, "file_path")
    missing = rows.join(heads.select("file_path"), "file_path", "left_anti").select(
        *wanted,
        F.lit(None).cast("binary").alias("head"),
        F.lit(None).cast("long").alias("read_size"),
    )
    joined = found.select(*wanted, "head", "read_size").unionByName(missing)

    def read_batches(batches: Iterable[pa.RecordBatch]) -> Iterator[pa.RecordBatch]:
        return header_batches(batches, lambda rows: extract_from_heads(rows, options, max_file))

    return joined.mapInArrow(read_batches, HEADER_RESULT)


def hadoop_probe(spark: SparkSession, lake: LakeConfig, *, limit: int = 1000) -> tuple[int, bool]:
    """For ``doctor``: (files found below the service folder, at most ``limit``;
    whether the first instance file among them starts like DICOM)."""
    from pyspark.sql import functions as F

    root_uri = qualified_root(spark, lake.root)
    service = service_root(lake.workspace, lake.service)
    files = _files(spark, f"{root_uri}/{service}").where(F.col("length") > 132)
    found = [row[0] for row in files.select("path").limit(limit).collect()]
    instance = next((p for p in found if p.endswith(".dcm")), None)
    if instance is None:
        return len(found), False
    head = (
        files.where(F.col("path") == instance)
        .select(F.substring("content", 129, 4).alias("magic"))
        .first()
    )
    return len(found), head is not None and bytes(head["magic"]) == b"DICM"
