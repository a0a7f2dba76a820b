"""Write-back under faults: the real job (Spark, the Delta ledger) storing secondary
captures into the real Orthanc through a real Toxiproxy proxy, or through the 503-storm
proxy of :mod:`tests.helpers`.

Every test uses its own sample lake (its own seed, hence its own UIDs) of four series,
so the Orthanc shared by the session holds nothing of it beforehand. Each checks that
the job finishes, what the ledger says, and that a re-run without the fault converges:
every derived instance in Orthanc exactly once (QIDO per study), the ledger all stored.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pydicom
import pytest

from dicom_lakehouse.config import Settings
from dicom_lakehouse.io.delta import DeltaTables
from dicom_lakehouse.testing import SampleLake
from dicom_lakehouse.writeback import LEDGER, WritebackSummary, run_writeback
from tests import helpers
from tests.services.azurite import Proxy, ToxiproxyServer
from tests.services.orthanc import OrthancServer

pytestmark = pytest.mark.spark

SERIES = 4  # 1 partition x 2 studies x 2 series; one SC per series
_LAKE: dict[str, Any] = {
    "partitions": ("Microsoft.Default",),
    "studies_per_partition": 2,
    "series_per_study": 2,
    "instances_per_series": 2,
    "image_size": 16,
    "include_testdata": False,
    "include_service_files": False,
    "include_broken": False,
    "include_legacy": False,
    "include_update": False,
}
# two attempts, short backoff: a fault outlasts the client's retries within seconds
_TUNING: dict[str, Any] = {
    "max_attempts": 2,
    "backoff_initial": 0.05,
    "backoff_max": 0.2,
    "connect_timeout": 2.0,
    "read_timeout": 10.0,
}
_DONE = {"stored", "already_stored"}


@pytest.fixture
def orthanc_proxy(orthanc: OrthancServer, toxiproxy: ToxiproxyServer) -> Iterator[Proxy]:
    """A fresh Toxiproxy proxy in front of Orthanc (deleted afterwards)."""
    proxy = toxiproxy.proxy(int(urlsplit(orthanc.root_url).port or 0))
    try:
        yield proxy
    finally:
        proxy.delete()


def _url(port: int) -> str:
    return f"http://127.0.0.1:{port}/dicom-web/"


def _job(
    spark: Any, orthanc: OrthancServer, root: Path, url: str, seed: int, **tuning: Any
) -> tuple[SampleLake, Settings]:
    config = helpers.dicomweb_config(orthanc, url, **{**_TUNING, **tuning})
    lake, settings, cohort = helpers.lake_with_cohort(
        spark, root, config, cohort="faults", where="true", seed=seed, **_LAKE
    )
    assert cohort.series == SERIES
    return lake, settings


def _run(spark: Any, settings: Settings, **options: Any) -> WritebackSummary:
    return run_writeback(settings, "faults", "sc", spark=spark, **options)


def _ledger(spark: Any, settings: Settings) -> list[Any]:
    return DeltaTables(spark, settings.tables).read(LEDGER).collect()


def _outcomes(rows: list[Any]) -> set[tuple[Any, ...]]:
    return {(r["status"], r["http_status"], r["failure_reason"], r["attempts"]) for r in rows}


def _in_orthanc(orthanc: OrthancServer, studies: set[str]) -> list[str]:
    """SOP Instance UIDs QIDO lists in ``studies`` (one entry per stored copy)."""
    client = orthanc.client()
    return [
        item["00080018"]["Value"][0] for study in studies for item in client.search_instances(study)
    ]


def _assert_converged(spark: Any, orthanc: OrthancServer, settings: Settings) -> None:
    rows = _ledger(spark, settings)
    reasons = sorted({(r["status"], r["failure_reason"]) for r in rows})
    assert len(rows) == SERIES, reasons  # one row per derived instance, no stale rows
    assert {r["status"] for r in rows} <= _DONE, reasons
    assert all(r["derived_sop_uid"] for r in rows)
    by_study: dict[str, set[str]] = defaultdict(set)
    for row in rows:
        by_study[row["source_study_uid"]].add(row["derived_sop_uid"])
    for study, uids in by_study.items():
        assert sorted(_in_orthanc(orthanc, {study})) == sorted(uids), "each exactly once"
    again = _run(spark, settings)
    assert (again.series_skipped, again.derived) == (SERIES, 0)


def test_server_down_before_the_run(spark, orthanc, orthanc_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, settings = _job(spark, orthanc, tmp_path, _url(orthanc_proxy.port), seed=701)
    orthanc_proxy.set_enabled(False)  # nothing listens: connection refused
    down = _run(spark, settings)
    assert (down.derived, down.stored, down.failed, down.retryable) == (SERIES, 0, 0, SERIES)
    rows = _ledger(spark, settings)
    assert len(rows) == SERIES and all(r["derived_sop_uid"] for r in rows)
    assert _outcomes(rows) == {("retryable", None, "connection_error", 2)}
    assert _in_orthanc(orthanc, {r["source_study_uid"] for r in rows}) == []

    orthanc_proxy.set_enabled(True)
    up = _run(spark, settings)
    assert (up.series_skipped, up.stored, up.failed, up.retryable) == (0, SERIES, 0, 0)
    assert _outcomes(_ledger(spark, settings)) == {("stored", 200, None, 1)}
    _assert_converged(spark, orthanc, settings)


class _AfterFirstChunk(logging.Handler):
    """Calls ``action`` once, when the job logs that its first chunk is in the ledger."""

    def __init__(self, action: Callable[[], None]) -> None:
        super().__init__(logging.INFO)
        self.action, self.fired = action, False

    def emit(self, record: logging.LogRecord) -> None:
        if not self.fired and record.getMessage().startswith("write-back: 1 of"):
            self.fired = True
            self.action()


def test_server_down_during_the_run(spark, orthanc, orthanc_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, settings = _job(spark, orthanc, tmp_path, _url(orthanc_proxy.port), seed=702)
    hook = _AfterFirstChunk(lambda: orthanc_proxy.set_enabled(False))
    job_logger = logging.getLogger("dicom_lakehouse.writeback")
    level = job_logger.level
    job_logger.addHandler(hook)
    job_logger.setLevel(logging.INFO)
    try:
        summary = _run(spark, settings, series_per_chunk=1)  # four chunks, one series each
    finally:
        job_logger.removeHandler(hook)
        job_logger.setLevel(level)
    assert hook.fired
    assert (summary.derived, summary.stored, summary.retryable, summary.failed) == (
        SERIES,
        1,
        SERIES - 1,
        0,
    )
    rows = _ledger(spark, settings)
    assert len(rows) == SERIES
    assert sorted(_outcomes(rows)) == [
        ("retryable", None, "connection_error", 2),
        ("stored", 200, None, 1),
    ]
    assert sum(r["status"] == "stored" for r in rows) == 1
    assert len(_in_orthanc(orthanc, {r["source_study_uid"] for r in rows})) == 1

    orthanc_proxy.set_enabled(True)
    again = _run(spark, settings, series_per_chunk=1)
    assert (again.series_skipped, again.stored, again.failed) == (1, SERIES - 1, 0)
    _assert_converged(spark, orthanc, settings)


def test_503_storm_is_ridden_out(spark, orthanc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    storms = 3
    with helpers.storm_proxy(orthanc.root_url, storms=storms) as storm:
        _, settings = _job(spark, orthanc, tmp_path, _url(storm.port), seed=703, max_attempts=5)
        summary = _run(spark, settings)
        assert (summary.derived, summary.stored, summary.failed, summary.retryable) == (
            SERIES,
            SERIES,
            0,
            0,
        )
        rows = _ledger(spark, settings)
        assert {(r["status"], r["http_status"], r["failure_reason"]) for r in rows} == {
            ("stored", 200, None)
        }
        # every 503 cost its series one more request, and the ledger counts them
        assert sum(r["attempts"] for r in rows) == SERIES + storms
        assert max(r["attempts"] for r in rows) > 1
        assert storm.seen == ["POST"] * (SERIES + storms)
        _assert_converged(spark, orthanc, settings)
        assert len(storm.seen) == SERIES + storms  # the converged re-run sent nothing


def test_timeout_after_the_server_stored(spark, orthanc, orthanc_proxy, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    _, settings = _job(
        spark, orthanc, tmp_path, _url(orthanc_proxy.port), seed=704, read_timeout=1.5
    )
    # requests reach Orthanc; its answers never come back
    toxic = orthanc_proxy.add_toxic("timeout", stream="downstream", timeout=0)
    lost = _run(spark, settings)
    assert (lost.derived, lost.stored, lost.failed, lost.retryable) == (SERIES, 0, 0, SERIES)
    rows = _ledger(spark, settings)
    assert len(rows) == SERIES
    assert _outcomes(rows) == {("retryable", None, "outcome_unknown", 2)}
    studies = {r["source_study_uid"] for r in rows}
    assert sorted(_in_orthanc(orthanc, studies)) == sorted(r["derived_sop_uid"] for r in rows)

    toxic.remove()
    again = _run(spark, settings)
    assert (again.derived, again.stored + again.already_stored, again.failed) == (
        SERIES,
        SERIES,
        0,
    )
    assert {(r["http_status"], r["attempts"]) for r in _ledger(spark, settings)} == {(200, 1)}
    _assert_converged(spark, orthanc, settings)  # the re-sent copies did not add any


def _change_study(lake: SampleLake, series_uid: str) -> tuple[str, dict[Path, bytes]]:
    """Rewrite the files of one series with another StudyInstanceUID of the same length
    (silver still has the old one); returns the new UID and the original bytes."""
    files = [f for f in lake.instances if f.series_instance_uid == series_uid]
    study = str(files[0].study_instance_uid)
    changed = study[:-1] + ("2" if study[-1] != "2" else "3")
    originals: dict[Path, bytes] = {}
    for file in files:
        path = lake.local_path(file)
        data = originals[path] = path.read_bytes()
        path.write_bytes(data.replace(study.encode(), changed.encode()))
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID) == (changed, series_uid)
        assert path.stat().st_size == len(data)
    return changed, originals


def test_one_rejected_instance(spark, orthanc, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    with helpers.storm_proxy(orthanc.root_url, storms=0) as counter:  # counts requests
        lake, settings = _job(spark, orthanc, tmp_path, _url(counter.port), seed=705)
        victim = str(lake.instances[0].series_instance_uid)
        # the derived SC follows its sources' study, the STOW URL names silver's study:
        # Orthanc refuses that instance (409, FailureReason 272; Azure says 43265)
        changed, originals = _change_study(lake, victim)
        first = _run(spark, settings)
        assert (first.derived, first.stored, first.failed, first.retryable) == (
            SERIES,
            SERIES - 1,
            1,
            0,
        )
        rows = _ledger(spark, settings)
        [rejected] = [r for r in rows if r["status"] == "failed"]
        assert rejected["source_series_uid"] == victim
        assert (rejected["http_status"], rejected["failure_reason"], rejected["attempts"]) == (
            409,
            "272",
            1,
        )
        others = [r for r in rows if r["status"] != "failed"]
        assert _outcomes(others) == {("stored", 200, None, 1)}
        assert _in_orthanc(orthanc, {changed}) == []
        assert len(counter.seen) == SERIES

        # a re-run sends the rejected one only (and it is refused again)
        second = _run(spark, settings)
        assert (second.series_skipped, second.derived, second.failed) == (SERIES - 1, 1, 1)
        assert len(counter.seen) == SERIES + 1
        assert len(_ledger(spark, settings)) == SERIES

        for path, data in originals.items():  # the source fixed
            path.write_bytes(data)
        third = _run(spark, settings)
        assert (third.series_skipped, third.stored, third.failed) == (SERIES - 1, 1, 0)
        assert len(counter.seen) == SERIES + 2
        _assert_converged(spark, orthanc, settings)
