"""``lake.access: hadoop``: the lake listed and read through Spark's Hadoop
filesystem (here Hadoop's local filesystem, ``file:``), against the direct path."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_lakehouse.errors import StorageError
from dicom_lakehouse.extract import ExtractOptions
from dicom_lakehouse.ingest import run_ingest
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.lake.hadoop import extract_from_heads
from dicom_lakehouse.spark import hadoop_azure_package
from dicom_lakehouse.testing import build_sample_lake
from tests.conftest import settings_for, write_config
from tests.services.azurite import AzuriteServer, run_azurite

pytestmark = pytest.mark.spark

# Hadoop has no ETag, rounds times to milliseconds and reads whole files
_VOLATILE = {"etag", "last_modified", "ingested_at", "run_id", "header_bytes_read"}
_COUNTS = ("files_listed", "files_ingested", "files_quarantined", "files_ignored", "files_foreign")


def _rows(tables: DeltaTables, name: str) -> list[tuple]:
    df = tables.read(name)
    return sorted(
        tuple(r) for r in df.select(*(c for c in df.columns if c not in _VOLATILE)).collect()
    )


def test_hadoop_access_lands_the_same_bronze_as_the_direct_path(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lake = build_sample_lake(tmp_path / "lake")
    direct = settings_for(lake.root, tmp_path / "t-direct")
    hadoop = settings_for(lake.root, tmp_path / "t-hadoop", lake={"access": "hadoop"})
    a = run_ingest(direct, spark)
    b = run_ingest(hadoop, spark)
    for key in _COUNTS:
        assert getattr(a, key) == getattr(b, key), key
    assert b.files_listed == len(lake.files) == b.accounted
    assert b.quarantine_reasons == a.quarantine_reasons
    ta, tb = DeltaTables(spark, direct.tables), DeltaTables(spark, hadoop.tables)
    for name in ("bronze_instances", "bronze_quarantine"):
        assert _rows(ta, name) == _rows(tb, name), name
    # the Hadoop path reads whole files, and says so
    read = {
        f.path: (lake.root / f.path).stat().st_size
        for f in lake.files
        if f.kind.value == "instance"
    }
    assert b.bytes_read == sum(read.values()) > a.bytes_read
    lake_files = {r["file_path"]: r for r in tb.read("lake_files").collect()}
    assert set(lake_files) == {f.path for f in lake.files}
    again = run_ingest(hadoop, spark)
    assert again.files_ingested == 0
    assert again.files_unchanged == b.files_ingested + b.files_quarantined


def test_hadoop_access_quarantines_what_it_will_not_read_whole(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lake = build_sample_lake(tmp_path / "lake")
    sizes = sorted(
        (lake.root / f.path).stat().st_size for f in lake.files if f.kind.value == "instance"
    )
    limit = sizes[len(sizes) // 2]
    settings = settings_for(
        lake.root,
        tmp_path / "t",
        lake={
            "access": "hadoop",
            "hadoop_max_file_bytes": limit,
            "partitions": ["Microsoft.Default"],
        },
    )
    summary = run_ingest(settings, spark)
    assert summary.accounted == summary.files_listed
    assert set(summary.partitions) == {"Microsoft.Default"}
    rows = DeltaTables(spark, settings.tables).read("bronze_quarantine").collect()
    too_large = [r for r in rows if r["reason"] == "file_too_large"]
    assert too_large and all(r["file_size"] > limit for r in too_large)
    assert summary.quarantine_reasons["file_too_large"] == len(too_large)
    assert "hadoop_max_file_bytes" in too_large[0]["detail"]
    landed = DeltaTables(spark, settings.tables).read("bronze_instances").collect()
    assert landed and all(r["file_size"] <= limit for r in landed)


def test_a_head_shorter_than_the_header_is_quarantined_as_header_too_large() -> None:
    from pydicom.data import get_testdata_file

    data = Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()
    base = {
        "file_path": "AHDS/ws/dicom/svc/p/1_1.dcm",
        "partition_name": "p",
        "watermark": 1,
        "layout": "flat",
        "file_size": len(data),
        "last_modified": None,
        "etag": None,
        "access_tier": None,
    }
    rows = [
        {**base, "head": data, "read_size": len(data)},
        {**base, "head": data[:1024], "read_size": len(data)},
        {**base, "head": None, "read_size": None},
    ]
    whole, cut, gone = extract_from_heads(rows, ExtractOptions(), max_file_bytes=len(data))
    assert whole["status"] == "ingested" and whole["header_bytes_read"] == len(data)
    assert (cut["status"], cut["reason"]) == ("quarantined", "header_too_large")
    assert "lake.hadoop_head_bytes" in cut["detail"]
    assert (gone["reason"], gone["header_bytes_read"]) == ("vanished", 0)


def test_hadoop_access_names_a_missing_service_folder(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty").mkdir()
    settings = settings_for(tmp_path / "empty", tmp_path / "t", lake={"access": "hadoop"})
    with pytest.raises(StorageError, match="service folder does not exist"):
        run_ingest(settings, spark)


# WASB's emulator mode always talks to the development storage at 127.0.0.1:10000
_WASB_PORT = 10000


@pytest.fixture(scope="module")
def azurite_wasb(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """An Azurite of its own on port 10000, for Hadoop's WASB emulator mode."""
    with socket.socket() as probe:
        if probe.connect_ex(("127.0.0.1", _WASB_PORT)) == 0:
            pytest.fail(f"port {_WASB_PORT} is taken: WASB's emulator mode needs it for Azurite")
    with run_azurite(tmp_path_factory.mktemp("azurite-wasb"), port=_WASB_PORT) as server:
        yield server


def test_the_cli_ingests_azurite_through_hadoop_wasb(
    spark, tmp_path: Path, azurite_wasb: AzuriteServer
) -> None:  # type: ignore[no-untyped-def]
    """Hadoop's own Azure connector (hadoop-azure, WASB in emulator mode) against
    Azurite, in a fresh JVM started by the CLI with the connector in
    ``spark.extra_packages``, as a cluster with only cluster-level credentials would
    read the lake. (ABFS needs the dfs endpoint, which Azurite does not have.)"""
    lake = build_sample_lake(tmp_path / "lake")
    container = azurite_wasb.service_client().create_container("lake")
    for f in lake.files:
        container.upload_blob(f.path, (lake.root / f.path).read_bytes())
    config = write_config(
        tmp_path / "wasb.yaml",
        lake.root,
        tmp_path / "t-wasb",
        lake={"root": "wasb://lake@devstoreaccount1/", "access": "hadoop"},
        spark={
            "extra_packages": [hadoop_azure_package()],
            "conf": {"spark.hadoop.fs.azure.storage.emulator.account.name": "devstoreaccount1"},
        },
    )
    done = subprocess.run(
        [sys.executable, "-m", "dicom_lakehouse", "ingest", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    remote = json.loads(done.stdout.strip().splitlines()[-1])
    direct = settings_for(lake.root, tmp_path / "t-direct")
    local = run_ingest(direct, spark)
    for key in _COUNTS:
        assert remote[key] == getattr(local, key), key
    assert remote["files_listed"] == len(lake.files)
    ta = DeltaTables(spark, direct.tables)
    tb = DeltaTables(spark, settings_for(lake.root, tmp_path / "t-wasb").tables)
    for name in ("bronze_instances", "bronze_quarantine"):
        assert _rows(ta, name) == _rows(tb, name), name
