"""Overlapping runs: an explicit Delta lease lets exactly one writer in."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from datetime import timedelta
from pathlib import Path

import pytest

from dicom_lakehouse.ingest import run_ingest
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.io.lease import LEASES, LeaseHeldError, job_lease
from dicom_lakehouse.refine import run_refine
from dicom_lakehouse.testing import build_sample_lake
from tests.conftest import settings_for, write_config

pytestmark = pytest.mark.spark


def test_two_racing_acquisitions_let_exactly_one_in(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    settings = settings_for(tmp_path / "lake", tmp_path / "tables")
    tables = DeltaTables(spark, settings.tables)
    outcomes: dict[str, str] = {}
    inside = threading.Event()
    release = threading.Event()
    start = threading.Barrier(2)

    def contender(name: str) -> None:
        start.wait()
        try:
            with job_lease(tables, "race", name, ttl=timedelta(minutes=1)) as held:
                held.wait()
                outcomes[name] = "held"
                inside.set()
                release.wait(60)
        except LeaseHeldError:
            outcomes[name] = "refused"

    threads = [threading.Thread(target=contender, args=(n,)) for n in ("a", "b")]
    for t in threads:
        t.start()
    assert inside.wait(120)
    time.sleep(2)  # the loser has had its turn while the winner holds the lease
    release.set()
    for t in threads:
        t.join(120)
    assert sorted(outcomes.values()) == ["held", "refused"]
    assert tables.read(LEASES).where("name = 'race'").count() == 0  # released


def test_the_first_lease_creates_its_table_in_one_commit(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """No table yet: the lease's row lands with the table's creation (version 0, no
    MERGE), with the explicit properties; the next holder goes through the MERGE."""
    tables = DeltaTables(spark, settings_for(tmp_path / "l", tmp_path / "t").tables)
    with job_lease(tables, "first", "a", ttl=timedelta(minutes=1)) as held:
        held.wait()
        history = tables.delta_table(LEASES).history().select("version", "operation").collect()
        assert [(r["version"], r["operation"]) for r in history] == [(0, "CREATE TABLE AS SELECT")]
        assert [r["holder"] for r in tables.read(LEASES).collect()] == ["a"]
        detail = spark.sql(f"DESCRIBE DETAIL delta.`{tables.ref(LEASES)}`").first()
        assert detail["properties"]["delta.enableDeletionVectors"] == "false"
        assert (detail["minReaderVersion"], detail["minWriterVersion"]) == (1, 2)
    with job_lease(tables, "first", "b", ttl=timedelta(minutes=1)) as held:
        held.wait()  # a released lease is taken by the next run's MERGE
        assert [r["holder"] for r in tables.read(LEASES).collect()] == ["b"]
    operations = [r["operation"] for r in tables.delta_table(LEASES).history().collect()]
    assert operations[:3] == ["DELETE", "MERGE", "DELETE"]


def test_expired_lease_is_taken_over(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    tables = DeltaTables(spark, settings_for(tmp_path / "l", tmp_path / "t").tables)
    with (
        pytest.raises(LeaseHeldError),
        job_lease(tables, "x", "a", ttl=timedelta(seconds=2)) as first,
        job_lease(tables, "x", "b", ttl=timedelta(seconds=2)) as second,
    ):
        first.wait()
        second.wait()  # b is refused while a holds the lease
    from dicom_lakehouse.io import lease as lease_module

    # a crashed holder: its row stays, with no heartbeat
    lease_module.ensure_lease_table(tables)
    lease_module._try_acquire(tables, "y", "crashed", timedelta(seconds=1))
    time.sleep(1.5)
    with job_lease(tables, "y", "next", ttl=timedelta(seconds=5)) as held:
        held.wait()
        assert lease_module._current(tables, "y").holder == "next"


def test_overlapping_ingests_never_duplicate_rows(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A slow ingest (a real CLI process) still running when the next one starts."""
    lake = build_sample_lake(tmp_path / "lake", studies_per_partition=4)
    config = write_config(
        tmp_path / "job.yaml",
        tmp_path / "lake",
        tmp_path / "tables",
        spark={"master": "local[1]"},
        ingest={"batch_files": 6},
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "dicom_lakehouse", "ingest", "--config", str(config)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    settings = settings_for(tmp_path / "lake", tmp_path / "tables")
    tables = DeltaTables(spark, settings.tables)
    leases = tmp_path / "tables" / LEASES / "_delta_log"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            committed = (leases / "00000000000000000000.json").exists()
            if committed and tables.read(LEASES).count() == 1:
                break
            time.sleep(0.2)
        assert proc.poll() is None, "the first run ended before the overlap"
        second = run_ingest(settings, spark)
        assert second.skipped_reason == "lease_held"
        assert second.files_ingested == 0
    finally:
        assert proc.wait(300) == 0
    third = run_ingest(settings, spark)
    assert third.files_ingested == 0
    paths = [r["file_path"] for r in tables.read("bronze_instances").select("file_path").collect()]
    assert len(paths) == len(set(paths)) == len(lake.instances)
    quarantined = [r["file_path"] for r in tables.read("bronze_quarantine").collect()]
    assert len(quarantined) == len(set(quarantined)) == len(lake.quarantined)


def test_a_recorded_ingest_hands_its_lease_to_the_next_run(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A successful ingest skips the release commit: its ingest_runs row releases
    the lease, so the next run takes it over at once; a failing block releases."""
    lake = build_sample_lake(tmp_path / "lake", studies_per_partition=1, include_testdata=False)
    settings = settings_for(tmp_path / "lake", tmp_path / "tables")
    tables = DeltaTables(spark, settings.tables)
    first = run_ingest(settings, spark)
    holders = [r["holder"] for r in tables.read(LEASES).collect()]
    assert holders == [first.run_id]  # still there, well within its TTL
    (lake.root / lake.instances[0].path).unlink()  # a changed lake: no shortcut
    second = run_ingest(settings, spark)
    assert second.skipped_reason is None
    assert [r["holder"] for r in tables.read(LEASES).collect()] == [second.run_id]

    with (
        pytest.raises(RuntimeError, match="boom"),
        job_lease(tables, "other", "z") as held,
    ):
        held.wait()
        held.recorded()
        raise RuntimeError("boom")
    assert tables.read(LEASES).where("name = 'other'").count() == 0


def test_a_recorded_refine_hands_its_lease_to_the_next_refine(spark, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A refine that records refined runs skips its release commit; the next refine
    takes the lease over at once (not after the TTL), and a refine that had
    nothing to record releases it."""
    lake = build_sample_lake(tmp_path / "lake", studies_per_partition=1, include_testdata=False)
    settings = settings_for(tmp_path / "lake", tmp_path / "tables")
    tables = DeltaTables(spark, settings.tables)

    def holders() -> list[str]:
        return [r["holder"] for r in tables.read(LEASES).where("name = 'refine'").collect()]

    run_ingest(settings, spark)
    first = run_refine(settings, spark)
    assert holders() == [first.run_id]  # kept, well within its TTL
    (lake.root / lake.instances[0].path).unlink()
    run_ingest(settings, spark)
    second = run_refine(settings, spark)
    assert second.skipped_reason is None and second.ingest_runs_refined == 1
    assert holders() == [second.run_id]
    idle = run_refine(settings, spark)
    assert idle.skipped_reason is None and idle.ingest_runs_refined == 0
    assert holders() == []
