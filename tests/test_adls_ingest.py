"""The same sample lake ingested from local disk and from Azurite (through the ADLS
backend's blob listing) gives identical bronze tables."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_lakehouse.ingest import run_ingest
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.testing import build_sample_lake
from tests.conftest import settings_for
from tests.services.azurite import ProxiedAzurite

pytestmark = pytest.mark.spark

_VOLATILE = {"etag", "last_modified", "ingested_at", "run_id"}
_CONN = "AZURE_STORAGE_CONNECTION_STRING"


@pytest.fixture
def executor_env(spark, monkeypatch) -> Iterator[dict[str, str]]:  # type: ignore[no-untyped-def]
    """Environment for Spark's Python workers too: new workers get sc.environment."""
    env = spark.sparkContext.environment
    added: dict[str, str] = {}
    yield added
    for key in added:
        env.pop(key, None)


def _upload(container, root: Path, files) -> None:  # type: ignore[no-untyped-def]
    for f in files:
        with (root / f.path).open("rb") as handle:
            container.upload_blob(f.path, handle, overwrite=True)


def _rows(tables: DeltaTables, name: str) -> list[tuple]:
    df = tables.read(name)
    keep = [c for c in df.columns if c not in _VOLATILE]
    return sorted(tuple(r) for r in df.select(*keep).collect())


def test_local_and_azurite_lakes_give_identical_bronze(
    spark, tmp_path: Path, azurite_container, azurite_env, executor_env, monkeypatch
) -> None:  # type: ignore[no-untyped-def]
    lake = build_sample_lake(tmp_path / "lake")
    _upload(azurite_container, tmp_path / "lake", lake.files)
    conn = azurite_env.connection_string
    spark.sparkContext.environment[_CONN] = conn
    executor_env[_CONN] = conn
    local = settings_for(tmp_path / "lake", tmp_path / "t-local")
    remote_root = (
        f"abfss://{azurite_container.container_name}@devstoreaccount1.dfs.core.windows.net"
    )
    remote = settings_for(
        tmp_path / "lake",
        tmp_path / "t-remote",
        lake={"root": remote_root, "storage": {"listing": "blob"}},
    )
    a = run_ingest(local, spark)
    b = run_ingest(remote, spark)
    for key in (
        "files_listed",
        "files_ingested",
        "files_quarantined",
        "files_ignored",
        "files_foreign",
        "bytes_read",
    ):
        assert getattr(a, key) == getattr(b, key), key
    ta, tb = DeltaTables(spark, local.tables), DeltaTables(spark, remote.tables)
    for name in ("bronze_instances", "bronze_quarantine"):
        assert _rows(ta, name) == _rows(tb, name), name
    listing = {"run_id", "listed_at", "etag", "last_modified", "access_tier"}
    la = sorted(tuple(r) for r in ta.read("lake_files").drop(*listing).collect())
    lb = sorted(tuple(r) for r in tb.read("lake_files").drop(*listing).collect())
    assert la == lb
    again = run_ingest(remote, spark)
    assert again.files_ingested == 0 and again.files_unchanged == a.files_ingested + (
        a.files_quarantined
    )


def _remote(tmp_path: Path, container: str, tables: str, **storage: str):  # type: ignore[no-untyped-def]
    root = f"abfss://{container}@devstoreaccount1.dfs.core.windows.net"
    options = {"listing": "blob", "connection_timeout": "1", "read_timeout": "2", **storage}
    lake = {"root": root, "storage": options}
    return settings_for(tmp_path / "lake", tmp_path / tables, lake=lake)


@pytest.fixture
def proxied_lake(  # type: ignore[no-untyped-def]
    spark,
    tmp_path: Path,
    azurite_container,
    azurite_proxy: ProxiedAzurite,
    executor_env,
    monkeypatch,
):
    """The sample lake in Azurite, reached through Toxiproxy (20 ms each way), plus
    the local ingest of the same lake as the reference."""
    lake = build_sample_lake(tmp_path / "lake")
    _upload(azurite_container, tmp_path / "lake", lake.files)
    conn = azurite_proxy.connection_string
    monkeypatch.setenv(_CONN, conn)
    spark.sparkContext.environment[_CONN] = conn  # executors: a new worker pool
    executor_env[_CONN] = conn
    local = settings_for(tmp_path / "lake", tmp_path / "t-local")
    reference = run_ingest(local, spark)
    azurite_proxy.add_toxic("latency", latency=20, jitter=5)
    return DeltaTables(spark, local.tables), reference


def test_ingest_rides_out_a_storage_outage_during_the_reads(
    spark, tmp_path: Path, azurite_container, azurite_proxy: ProxiedAzurite, proxied_lake
) -> None:  # type: ignore[no-untyped-def]
    """Every connection is reset from the moment the lake is listed until 2 s later:
    the header reads retry through it and bronze ends equal to the local ingest's."""
    local, reference = proxied_lake
    timers: list[threading.Timer] = []

    def outage(message: str) -> None:
        if message.startswith("listed ") and not timers:
            toxic = azurite_proxy.add_toxic("reset_peer", timeout=0)
            timers.append(threading.Timer(2.0, toxic.remove))
            timers[0].start()

    settings = _remote(
        tmp_path,
        azurite_container.container_name,
        "t-remote",
        retry_total="12",
        retry_backoff="0.1",
        retry_backoff_max="0.4",
    )
    summary = run_ingest(settings, spark, progress=outage)
    timers[0].join()  # the outage really started while the headers were read
    # the reads could only finish once the outage was over
    assert summary.phase_seconds["read"] >= 1.5
    assert summary.accounted == summary.files_listed == reference.files_listed
    assert summary.files_ingested == reference.files_ingested
    assert summary.quarantine_reasons == reference.quarantine_reasons
    remote = DeltaTables(spark, settings.tables)
    for name in ("bronze_instances", "bronze_quarantine"):
        assert _rows(remote, name) == _rows(local, name), name


def test_reads_failed_without_retries_are_quarantined_then_landed_by_the_next_run(
    spark, tmp_path: Path, azurite_container, azurite_proxy: ProxiedAzurite, proxied_lake
) -> None:  # type: ignore[no-untyped-def]
    """With retries off, an outage over the whole read phase gives read_error rows
    (counted, not a crash); the next run (retries on) re-reads exactly those files,
    once."""
    local, reference = proxied_lake
    toxics = []

    def outage(message: str) -> None:
        if message.startswith("listed ") and not toxics:
            toxics.append(azurite_proxy.add_toxic("reset_peer", timeout=0))
        elif message.startswith("batch ") and toxics:
            toxics[0].remove()

    settings = _remote(tmp_path, azurite_container.container_name, "t-remote", retry_total="0")
    first = run_ingest(settings, spark, progress=outage)
    assert toxics, "the outage never started"
    assert first.accounted == first.files_listed == reference.files_listed
    failed = first.quarantine_reasons.get("read_error", 0)
    assert failed > 0 and first.files_ingested + failed <= reference.files_ingested + sum(
        reference.quarantine_reasons.values()
    )
    # the next run has retries on, as a scheduled run would: a pooled connection the
    # reset killed is then retried, not counted as a fresh failure
    retrying = _remote(tmp_path, azurite_container.container_name, "t-remote", retry_total="3")
    second = run_ingest(retrying, spark)
    assert second.files_ingested + first.files_ingested == reference.files_ingested
    remote = DeltaTables(spark, settings.tables)
    assert _rows(remote, "bronze_instances") == _rows(local, "bronze_instances")
    retried = [r for r in _rows(remote, "bronze_quarantine") if "read_error" not in r]
    assert retried == _rows(local, "bronze_quarantine")
