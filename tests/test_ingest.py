"""Bronze ingest on a real local Spark session with Delta."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from dicom_lakehouse.cli import main
from dicom_lakehouse.ingest import RunContext, run_ingest
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.testing import build_sample_lake
from tests.conftest import settings_for, write_config

pytestmark = pytest.mark.spark

FIXED = RunContext(run_id="run-1", started_at=datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


@pytest.fixture(scope="module", params=["driver", "executors"])
def ingested(spark, tmp_path_factory, request):  # type: ignore[no-untyped-def]
    """The sample lake ingested once with a driver listing (the default for a small
    lake) and once listed on executors (``lake.driver_listing_limit: 0``)."""
    root = tmp_path_factory.mktemp("ingest")
    lake = build_sample_lake(root / "lake")
    limit = {} if request.param == "driver" else {"driver_listing_limit": 0}
    settings = settings_for(root / "lake", root / "tables", lake=limit)
    summary = run_ingest(settings, spark, run=FIXED)
    return lake, settings, summary, DeltaTables(spark, settings.tables)


def test_first_run_accounts_for_every_file(ingested) -> None:  # type: ignore[no-untyped-def]
    lake, _, summary, tables = ingested
    expected = lake.counts()
    for key, value in expected.items():
        assert getattr(summary, key) == value, key
    assert summary.files_unchanged == 0
    assert summary.accounted == summary.files_listed == len(lake.files)
    listed = {r["file_path"]: r["kind"] for r in tables.read("lake_files").collect()}
    assert listed == {f.path: str(f.kind) for f in lake.files}


def test_bronze_rows_carry_the_headers_uids(ingested) -> None:  # type: ignore[no-untyped-def]
    lake, _, _, tables = ingested
    rows = {r["file_path"]: r for r in tables.read("bronze_instances").collect()}
    assert set(rows) == {f.path for f in lake.instances}
    for f in lake.instances:
        row = rows[f.path]
        assert (row["study_instance_uid"], row["series_instance_uid"], row["sop_instance_uid"]) == (
            f.study_instance_uid,
            f.series_instance_uid,
            f.sop_instance_uid,
        )
        assert row["partition_name"] == f.partition_name
        assert row["watermark"] == f.watermark
        assert row["run_id"] == "run-1"
        meta = json.loads(row["metadata_json"])
        assert meta["00080018"]["Value"] == [f.sop_instance_uid]
        assert "7FE00010" not in meta
        assert row["header_bytes_read"] <= row["file_size"]


def test_quarantine_reasons_match_the_broken_files(ingested) -> None:  # type: ignore[no-untyped-def]
    lake, _, summary, tables = ingested
    rows = {r["file_path"]: r["reason"] for r in tables.read("bronze_quarantine").collect()}
    assert rows == {f.path: f.expected_reason for f in lake.quarantined}
    assert {"empty_file", "not_dicom", "truncated_header", "missing_uids"} <= set(rows.values())
    assert sum(summary.quarantine_reasons.values()) == len(rows)


def test_bulk_update_keeps_both_versions(ingested) -> None:  # type: ignore[no-untyped-def]
    lake, _, _, tables = ingested
    df = tables.read("bronze_instances")
    originals = [f for f in lake.instances if not f.is_current]
    assert originals
    for f in originals:
        versions = (
            df.where(df.sop_instance_uid == f.sop_instance_uid)
            .where(df.partition_name == f.partition_name)
            .collect()
        )
        assert len(versions) == 2
        newest = max(versions, key=lambda r: r["watermark"])
        assert newest["is_updated_version"] is True
        assert newest["implementation_class_uid"] == "1.3.6.1.4.1.311.129"


def test_typed_key_columns(ingested) -> None:  # type: ignore[no-untyped-def]
    _, _, _, tables = ingested
    df = tables.read("bronze_instances")
    ct = df.where("modality = 'CT' AND rows IS NOT NULL").first()
    assert ct is not None
    assert isinstance(ct["rows"], int) and ct["rows"] > 0
    assert ct["transfer_syntax_uid"].startswith("1.2.840.10008.1.2")
    names = {r["patient_name"] for r in df.select("patient_name").collect()}
    assert "Müller^Jürgen" in names


def test_tables_are_readable_by_delta_rs_with_basic_protocol(ingested) -> None:  # type: ignore[no-untyped-def]
    from deltalake import DeltaTable

    _, _, summary, tables = ingested
    for name in ("bronze_instances", "bronze_quarantine", "lake_files"):
        table = DeltaTable(tables.ref(name))
        protocol = table.protocol()
        assert (protocol.min_reader_version, protocol.min_writer_version) == (1, 2)
        config = table.metadata().configuration
        assert config["delta.enableDeletionVectors"] == "false"
    rows = DeltaTable(tables.ref("bronze_instances")).to_pyarrow_table().num_rows
    assert rows == summary.files_ingested


def test_bronze_file_stats_cover_run_id_and_leave_patients_out(ingested) -> None:  # type: ignore[no-untyped-def]
    """Refine finds a run's rows by run_id file statistics; PHI stays out of the log."""
    import pyarrow as pa
    from deltalake import DeltaTable

    _, _, _, tables = ingested
    actions = DeltaTable(tables.ref("bronze_instances")).get_add_actions(flatten=True)
    stats = pa.table(actions).to_pydict()
    assert stats["min.run_id"] and all(v == FIXED.run_id for v in stats["max.run_id"])
    assert "min.study_instance_uid" in stats
    assert not [k for k in stats if "patient" in k and k.startswith(("min.", "max."))]


def test_rerun_on_unchanged_lake_adds_nothing(spark, ingested) -> None:  # type: ignore[no-untyped-def]
    _, settings, summary, tables = ingested
    before = (tables.read("bronze_instances").count(), tables.read("bronze_quarantine").count())
    again = run_ingest(settings, spark)
    assert again.files_ingested == again.files_quarantined == 0
    assert again.files_unchanged == summary.files_ingested + summary.files_quarantined
    assert again.bytes_read == 0
    after = (tables.read("bronze_instances").count(), tables.read("bronze_quarantine").count())
    assert after == before


def test_driver_and_executor_listings_fingerprint_the_lake_alike(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A run listed on the driver, then one listed on executors: the second sees the
    same listing (same fingerprint, timestamps included) and has nothing to compare."""
    build_sample_lake(tmp_path / "lake", studies_per_partition=1, include_testdata=False)
    first = run_ingest(settings_for(tmp_path / "lake", tmp_path / "tables"), spark)
    executors = settings_for(
        tmp_path / "lake", tmp_path / "tables", lake={"driver_listing_limit": 0}
    )
    again = run_ingest(executors, spark)
    assert again.files_listed == first.files_listed
    assert again.files_unchanged == first.files_ingested + first.files_quarantined > 0
    assert "compare" not in again.phase_seconds and "read" not in again.phase_seconds


def test_changed_file_lands_as_a_new_version(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    lake = build_sample_lake(tmp_path / "lake", studies_per_partition=1, include_testdata=False)
    settings = settings_for(tmp_path / "lake", tmp_path / "tables")
    first = run_ingest(settings, spark)
    target = lake.instances[0]
    path = tmp_path / "lake" / target.path
    data = path.read_bytes()
    time.sleep(0.01)
    path.write_bytes(data)  # same bytes, new mtime: a new file version (e.g. a PUT upsert)
    os.utime(path, ns=(time.time_ns(), time.time_ns() + 10**9))
    second = run_ingest(settings, spark)
    assert second.files_ingested == 1
    assert second.files_unchanged == first.files_ingested + first.files_quarantined - 1
    rows = (
        DeltaTables(spark, settings.tables)
        .read("bronze_instances")
        .where(f"file_path = '{target.path}'")
        .collect()
    )
    assert len(rows) == 2 and len({r["last_modified"] for r in rows}) == 2


def test_cli_json_summary_is_the_last_line(spark, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    build_sample_lake(tmp_path / "lake", studies_per_partition=1, include_testdata=False)
    config = tmp_path / "minimal.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "lake": {"root": str(tmp_path / "lake"), "workspace": "ws1", "service": "svc1"},
                "tables": {"location": str(tmp_path / "tables")},
                "spark": {"master": "local[2]"},
            }
        )
    )
    assert main(["ingest", "--config", str(config), "--json"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    summary = json.loads(last)
    for key in (
        "files_listed",
        "files_ingested",
        "files_unchanged",
        "files_quarantined",
        "files_ignored",
        "files_foreign",
        "bytes_read",
        "seconds",
    ):
        assert key in summary
    assert summary["files_ingested"] > 0
    assert summary["files_listed"] == (
        summary["files_ingested"]
        + summary["files_unchanged"]
        + summary["files_quarantined"]
        + summary["files_ignored"]
        + summary["files_foreign"]
    )


def _commits(table: Path) -> int:
    log = table / "_delta_log"
    return len(list(log.glob("*.json"))) if log.exists() else 0


def test_killed_run_rerun_ends_with_no_duplicates_and_nothing_missing(
    spark, tmp_path: Path
) -> None:  # type: ignore[no-untyped-def]
    """Kill a real CLI process (SIGKILL) after its first batch commit, then re-run."""
    lake = build_sample_lake(tmp_path / "lake", studies_per_partition=3)
    config = write_config(
        tmp_path / "job.yaml",
        tmp_path / "lake",
        tmp_path / "tables",
        spark={"master": "local[1]"},
        ingest={"batch_files": 8, "lease_minutes": 0.05},
    )
    bronze = tmp_path / "tables" / "bronze_instances"
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_lakehouse", "ingest", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 240
        while _commits(bronze) < 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.05)  # commit 0 creates the table, commit 1 is the first batch
        assert _commits(bronze) >= 2, "the job never committed a batch"
        assert proc.poll() is None, "the job finished before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    time.sleep(6.5)  # the killed run's lease (3 s TTL, no more heartbeats) has expired
    settings = settings_for(
        tmp_path / "lake", tmp_path / "tables", ingest={"batch_files": 8, "lease_minutes": 0.05}
    )
    partial = DeltaTables(spark, settings.tables).read("bronze_instances").count()
    assert 0 < partial < len(lake.instances)
    summary = run_ingest(settings, spark)
    assert summary.files_unchanged >= partial
    tables = DeltaTables(spark, settings.tables)
    paths = [r["file_path"] for r in tables.read("bronze_instances").select("file_path").collect()]
    assert len(paths) == len(set(paths))  # no duplicates
    assert set(paths) == {f.path for f in lake.instances}  # nothing missing
    quarantined = [r["file_path"] for r in tables.read("bronze_quarantine").collect()]
    assert sorted(quarantined) == sorted(f.path for f in lake.quarantined)
    shutil.rmtree(tmp_path / "tables", ignore_errors=True)
