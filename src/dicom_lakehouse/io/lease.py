"""An explicit lease on a Delta table, so overlapping scheduled runs never both write.

``job_lease(tables, name, holder)`` inserts or takes over (when expired) the
row ``name`` of the ``job_leases`` table with one MERGE; Delta's optimistic
concurrency lets exactly one of two racing MERGEs commit, the other gets a
named conflict exception and reads who holds the lease. The very first lease
creates the table already holding its row (one commit; a racing creation loses
version 0 and falls back to the MERGE). A heartbeat thread
extends the lease while the job runs; a killed job's lease expires after
``ttl``. A job that durably records its own completion elsewhere (ingest's
``ingest_runs``, refine's ``refined_ingest_runs``) says so with
``handle.recorded()`` and skips the release commit: the next run passes the
finished holder in ``finished`` and takes the lease over at once. Works wherever Delta
does (local, ADLS, Volumes, OneLake).
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Collection, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from dicom_lakehouse.errors import DicomLakehouseError, TableError
from dicom_lakehouse.io.delta import DeltaTables

if TYPE_CHECKING:
    from pyspark.sql.types import StructType

__all__ = ["LEASES", "LeaseHandle", "LeaseHeldError", "ensure_lease_table", "job_lease"]

logger = logging.getLogger(__name__)

LEASES = "job_leases"
_CONFLICTS = (
    "ConcurrentAppendException",
    "ConcurrentDeleteReadException",
    "ConcurrentDeleteDeleteException",
    "ConcurrentTransactionException",
    "MetadataChangedException",
    "ProtocolChangedException",
)


class LeaseHeldError(DicomLakehouseError):
    """Another run holds the lease; this run must not write."""

    def __init__(self, name: str, holder: str, expires_at: datetime) -> None:
        super().__init__(
            f"another run ({holder}) holds the {name!r} lease until {expires_at:%Y-%m-%d %H:%M}Z"
        )
        self.name, self.holder, self.expires_at = name, holder, expires_at


@dataclass(frozen=True, slots=True)
class _Lease:
    name: str
    holder: str
    expires_at: datetime


def is_conflict(exc: BaseException) -> bool:
    """Whether ``exc`` is one of Delta's named concurrent-modification conflicts."""
    text = f"{type(exc).__name__} {exc}"
    return any(name in text for name in _CONFLICTS)


_COMMENT = "Who may write for each job scope, until when"


def _schema() -> StructType:
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField("name", T.StringType()),
            T.StructField("holder", T.StringType()),
            T.StructField("acquired_at", T.TimestampType()),
            T.StructField("expires_at", T.TimestampType()),
        ]
    )


def ensure_lease_table(tables: DeltaTables) -> bool:
    """Create ``job_leases`` if missing."""
    return tables.ensure(LEASES, _schema(), comment=_COMMENT)


def _create_holding(tables: DeltaTables, name: str, holder: str, ttl: timedelta) -> _Lease | None:
    """A first run: create ``job_leases`` already holding this lease (one commit
    instead of a creation and a MERGE). None when the table exists, also when a
    concurrent run created it first (version 0 is committed once), or when that
    creation failed."""
    now = datetime.now(UTC)
    row = tables.spark.createDataFrame([(name, holder, now, now + ttl)], _schema())
    try:
        if tables.create_with(row, LEASES, comment=_COMMENT):
            return _Lease(name, holder, now + ttl)
    except TableError:  # the caller creates it empty (with retries) and MERGEs
        logger.info("lease %s: creating %s with its row failed", name, LEASES)
    return None


def _current(tables: DeltaTables, name: str) -> _Lease | None:
    from pyspark.sql import functions as F

    row = tables.read(LEASES).where(F.col("name") == name).first()
    if row is None:
        return None
    expires = row["expires_at"]
    if expires is not None and expires.tzinfo is None:
        expires = expires.replace(tzinfo=UTC)
    return _Lease(row["name"], row["holder"], expires)


def _sql_str(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _try_acquire(
    tables: DeltaTables,
    name: str,
    holder: str,
    ttl: timedelta,
    finished: Collection[str] = (),
) -> _Lease:
    """One MERGE; its metrics say whether this holder got the row (no read-back).

    The row is taken when it is expired, already ours, or held by one of the
    ``finished`` holders (a compare-and-set on the holder: if another run took
    the lease meanwhile, the condition no longer matches)."""
    now = datetime.now(UTC)
    target = f"delta.`{tables.ref(LEASES)}`" if tables.by_path else tables.ref(LEASES)
    takeover = "t.expires_at < s.acquired_at OR t.holder = s.holder"
    if finished:
        takeover += f" OR t.holder IN ({', '.join(_sql_str(h) for h in sorted(finished))})"

    def micros(moment: datetime) -> str:  # time-zone independent literal
        return f"timestamp_micros({int(moment.timestamp() * 1_000_000)})"

    sql = f"""
        MERGE INTO {target} t
        USING (SELECT {_sql_str(name)} AS name, {_sql_str(holder)} AS holder,
                      {micros(now)} AS acquired_at,
                      {micros(now + ttl)} AS expires_at) s
        ON t.name = s.name
        WHEN MATCHED AND ({takeover})
            THEN UPDATE SET *
        WHEN NOT MATCHED THEN INSERT *
    """
    try:
        metrics = tables.spark.sql(sql).first()
        won = metrics is not None and (
            int(metrics["num_updated_rows"]) + int(metrics["num_inserted_rows"]) == 1
        )
    except Exception as exc:
        if not is_conflict(exc):
            raise
        logger.info("lease %s: lost a concurrent acquisition", name)
        won = False
    if won:
        return _Lease(name, holder, now + ttl)
    lease = _current(tables, name)
    if lease is not None and lease.holder == holder:
        return lease
    raise LeaseHeldError(
        name, lease.holder if lease else "unknown", lease.expires_at if lease else now
    )


def _extend(tables: DeltaTables, name: str, holder: str, ttl: timedelta) -> None:
    from pyspark.sql import functions as F

    expires = datetime.now(UTC) + ttl
    tables.delta_table(LEASES).update(
        condition=(F.col("name") == name) & (F.col("holder") == holder),
        set={"expires_at": F.lit(expires).cast("timestamp")},
    )


class LeaseHandle:
    """A lease being acquired in the background: ``wait()`` before the first write."""

    def __init__(self, future: Future[_Lease]) -> None:
        self._future = future
        self._recorded = False

    def wait(self) -> None:
        """Block until the lease is ours; raise :class:`LeaseHeldError` if it is not."""
        self._future.result()

    def recorded(self) -> None:
        """The caller's completion record has committed: a block that then ends
        without an error skips the release commit (the next run passes this
        holder in ``finished``)."""
        self._recorded = True

    @property
    def acquired(self) -> bool:
        return self._future.done() and self._future.exception() is None


@contextlib.contextmanager
def job_lease(
    tables: DeltaTables,
    name: str,
    holder: str,
    *,
    ttl: timedelta = timedelta(minutes=10),
    finished: Collection[str] = (),
) -> Iterator[LeaseHandle]:
    """Hold the lease ``name`` for the duration of the block (heartbeat every ttl/3).

    Acquisition runs in the background so read-only work can start at once; the
    block must call ``handle.wait()`` before it writes (it raises
    :class:`LeaseHeldError` when another run holds the lease). ``finished``:
    holders known to have completed, whose lease is taken over at once. The
    release commit is skipped when the block succeeds after
    ``handle.recorded()`` (the caller's own record of completion releases it,
    see above); a failing block always releases.
    """

    def acquire() -> _Lease:
        if not tables.exists(LEASES):
            created = _create_holding(tables, name, holder, ttl)
            if created is not None:
                return created
            ensure_lease_table(tables)  # it failed, or another run created it first
        return _try_acquire(tables, name, holder, ttl, finished)

    stop = threading.Event()
    pool = ThreadPoolExecutor(1, thread_name_prefix=f"dl-lease-{name}")
    handle = LeaseHandle(pool.submit(acquire))

    def heartbeat() -> None:
        try:
            handle.wait()
        except LeaseHeldError:
            return
        while not stop.wait(ttl.total_seconds() / 3):
            for attempt in range(3):
                try:
                    _extend(tables, name, holder, ttl)
                    break
                except Exception as exc:  # noqa: BLE001 - retried, then only logged
                    if not is_conflict(exc) or attempt == 2:
                        logger.warning("lease %s: heartbeat failed (%s)", name, type(exc).__name__)
                        break

    beat = threading.Thread(target=heartbeat, name=f"dl-heartbeat-{name}", daemon=True)
    beat.start()
    succeeded = False
    try:
        yield handle
        succeeded = True
    finally:
        stop.set()
        pool.shutdown(wait=True)
        beat.join(timeout=30)
        if handle.acquired and not (succeeded and handle._recorded):
            _release(tables, name, holder)


def _release(tables: DeltaTables, name: str, holder: str) -> None:
    from pyspark.sql import functions as F

    for attempt in range(3):
        try:
            tables.delta_table(LEASES).delete((F.col("name") == name) & (F.col("holder") == holder))
            return
        except Exception as exc:  # noqa: BLE001 - conflicts retried; the TTL is the backstop
            if not is_conflict(exc) or attempt == 2:
                logger.warning(
                    "lease %s: release failed (%s); it expires by itself",
                    name,
                    type(exc).__name__,
                )
                return
