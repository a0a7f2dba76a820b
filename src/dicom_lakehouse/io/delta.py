"""Delta tables: names, creation with explicit properties, appends and replaces.

Tables are path-based under ``tables.location/{prefix}{name}``, or catalog
tables ``[catalog.]schema.{prefix}{name}`` when ``tables.schema`` is set.
Properties are set explicitly so that Synapse serverless SQL, the Fabric SQL
endpoint and delta-rs can read them (protocol 1/2: no deletion vectors, no
column mapping).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from dicom_lakehouse.config import TablesConfig
from dicom_lakehouse.errors import TableError

if TYPE_CHECKING:
    from pyspark.sql import Column, DataFrame, SparkSession
    from pyspark.sql.types import StructType

__all__ = ["TABLE_PROPERTIES", "DeltaTables", "commit_mark"]

logger = logging.getLogger(__name__)

TABLE_PROPERTIES: dict[str, str] = {
    "delta.minReaderVersion": "1",
    "delta.minWriterVersion": "2",
    "delta.enableDeletionVectors": "false",
    "delta.columnMapping.mode": "none",
    "delta.enableChangeDataFeed": "false",
    "delta.appendOnly": "false",
    "delta.checkpointInterval": "10",
}


# Creating one Delta table from several threads of one session can fail with
# DELTA_TABLE_NOT_FOUND for the table being created (seen under load): a table's
# creation and the existence check that precedes it are serialised per table, so
# different tables are still created side by side.
_CREATE_LOCKS: dict[str, threading.RLock] = {}
_LOCKS_LOCK = threading.Lock()


def _create_lock(ref: str) -> threading.RLock:
    with _LOCKS_LOCK:
        return _CREATE_LOCKS.setdefault(ref, threading.RLock())


def commit_mark(user_metadata: str | None, kind: str) -> dict[str, Any] | None:
    """A commit's user metadata written by this package as a JSON object marked
    ``kind`` (None for any other commit: another writer's, or none)."""
    try:
        meta = json.loads(user_metadata or "{}")
    except ValueError:
        return None
    return meta if isinstance(meta, dict) and meta.get("kind") == kind else None


class DeltaTables:
    """The package's tables in one location or catalog schema."""

    def __init__(self, spark: SparkSession, config: TablesConfig) -> None:
        self.spark = spark
        self.config = config

    def ref(self, name: str) -> str:
        """The table's path (path-based) or identifier (catalog)."""
        full = f"{self.config.prefix}{name}"
        if self.config.schema_name is not None:
            parts = [self.config.catalog, self.config.schema_name, full]
            return ".".join(p for p in parts if p)
        assert self.config.location is not None
        return f"{self.config.location.rstrip('/')}/{full}"

    @property
    def by_path(self) -> bool:
        return self.config.schema_name is None

    def exists(self, name: str) -> bool:
        from delta.tables import DeltaTable

        with _create_lock(self.ref(name)):
            if self.by_path:
                return DeltaTable.isDeltaTable(self.spark, self.ref(name))
            return self.spark.catalog.tableExists(self.ref(name))

    def ensure(
        self,
        name: str,
        schema: StructType,
        *,
        partition_by: Sequence[str] = (),
        comment: str = "",
        properties: dict[str, str] | None = None,
    ) -> bool:
        """Create the table with ``schema`` and the explicit properties (plus the
        table's own ``properties``) if missing; return whether this call created it
        (so it is known to be empty)."""
        with _create_lock(self.ref(name)):
            return self._create(name, schema, partition_by, comment, properties or {})

    def _create(
        self,
        name: str,
        schema: StructType,
        partition_by: Sequence[str],
        comment: str,
        properties: dict[str, str],
    ) -> bool:
        from delta.tables import DeltaTable

        if self.exists(name):
            return False
        builder = DeltaTable.createIfNotExists(self.spark)
        builder = (
            builder.location(self.ref(name)) if self.by_path else builder.tableName(self.ref(name))
        )
        builder = builder.addColumns(schema)
        if partition_by:
            builder = builder.partitionedBy(*partition_by)
        for key, value in {**TABLE_PROPERTIES, **properties}.items():
            builder = builder.property(key, value)
        if comment:
            builder = builder.comment(comment)
        for attempt in range(3):
            try:
                builder.execute()
                break
            except Exception as exc:  # a concurrent run may have created it first
                if self.exists(name):
                    return False
                if attempt == 2:
                    raise TableError(f"cannot create table {name}") from exc
                logger.info("creating table %s failed, retrying", name)
                time.sleep(0.5 * (attempt + 1))
        logger.info("created table %s", name)
        return True

    def create_with(
        self,
        df: DataFrame,
        name: str,
        *,
        comment: str = "",
        properties: dict[str, str] | None = None,
    ) -> bool:
        """Create the table holding ``df``'s rows in its first commit (one CTAS, with
        the explicit properties); return False when it exists already, also when a
        concurrent creation committed first."""
        with _create_lock(self.ref(name)):
            if self.exists(name):
                return False
            target = f"delta.`{self.ref(name)}`" if self.by_path else self.ref(name)
            writer = df.writeTo(target).using("delta")
            for key, value in {**TABLE_PROPERTIES, **(properties or {})}.items():
                writer = writer.tableProperty(key, value)
            if comment:
                writer = writer.tableProperty("comment", comment)
            try:
                writer.create()
            except Exception as exc:
                if self.exists(name):
                    return False
                raise TableError(f"cannot create table {name}") from exc
        logger.info("created table %s", name)
        return True

    def delta_table(self, name: str):  # type: ignore[no-untyped-def]
        """The ``delta.tables.DeltaTable`` handle of ``name``."""
        from delta.tables import DeltaTable

        if self.by_path:
            return DeltaTable.forPath(self.spark, self.ref(name))
        return DeltaTable.forName(self.spark, self.ref(name))

    def commits(self, name: str, limit: int) -> list[dict[str, Any]]:
        """The latest ``limit`` commits, newest first: each one's version, operation,
        operation metrics and user metadata (the table's history, no data read)."""
        history = self.delta_table(name).history(limit)
        rows = history.select("version", "operation", "operationMetrics", "userMetadata")
        return [row.asDict() for row in rows.collect()]

    def last_commit(self, name: str) -> dict[str, Any]:
        """The latest commit (see :meth:`commits`); empty for a table without one."""
        latest = self.commits(name, 1)
        return latest[0] if latest else {}

    def read(self, name: str) -> DataFrame:
        reader = self.spark.read.format("delta")
        return reader.load(self.ref(name)) if self.by_path else self.spark.table(self.ref(name))

    def _save(self, writer: object, name: str) -> None:
        if self.by_path:
            writer.save(self.ref(name))  # type: ignore[attr-defined]
        else:
            writer.saveAsTable(self.ref(name))  # type: ignore[attr-defined]

    def append(
        self,
        df: DataFrame,
        name: str,
        *,
        txn: tuple[str, int] | None = None,
        user_metadata: str | None = None,
    ) -> None:
        """Append ``df``; ``txn`` (app id, version) makes a retried write a no-op;
        ``user_metadata`` is stored in the commit (read back by :meth:`last_commit`)."""
        writer = df.write.format("delta").mode("append")
        if user_metadata is not None:
            writer = writer.option("userMetadata", user_metadata)
        if txn is not None:
            writer = writer.option("txnAppId", txn[0]).option("txnVersion", str(txn[1]))
        self._save(writer, name)

    def replace_where(self, df: DataFrame, name: str, predicate: str) -> None:
        """Atomically replace the rows matching ``predicate`` with ``df``."""
        writer = df.write.format("delta").mode("overwrite").option("replaceWhere", predicate)
        self._save(writer, name)

    def merge_with_deletes(self, source: DataFrame, name: str, keys: Sequence[str]) -> None:
        """Upsert ``source`` rows into ``name`` on ``keys``; rows whose ``_delete``
        column is true delete their match instead (one Delta commit)."""
        target = self.delta_table(name)
        columns = [c for c in source.columns if c != "_delete"]
        condition = " AND ".join(f"t.`{k}` <=> s.`{k}`" for k in keys)
        assignments: dict[str, str | Column] = {f"`{c}`": f"s.`{c}`" for c in columns}
        (
            target.alias("t")
            .merge(source.alias("s"), condition)
            .whenMatchedDelete(condition="s._delete")
            .whenMatchedUpdate(condition="NOT s._delete", set=assignments)
            .whenNotMatchedInsert(condition="NOT s._delete", values=assignments)
            .execute()
        )

    def overwrite(self, df: DataFrame, name: str) -> None:
        """Replace the table's rows (schema unchanged)."""
        self._save(df.write.format("delta").mode("overwrite"), name)
