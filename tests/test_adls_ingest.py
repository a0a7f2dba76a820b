"""The same sample lake ingested from local disk and from Azurite (through the ADLS
backend's blob listing) gives identical bronze tables."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_lakehouse.ingest import run_ingest
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.testing import build_sample_lake
from tests.conftest import settings_for

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
