"""One file to one row, without Spark: storage outcomes and private tags."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pydicom.data import get_testdata_file

from dicom_lakehouse.extract import ExtractOptions, extract_row, extract_rows
from dicom_lakehouse.lake.backend import LocalBackend
from dicom_lakehouse.lake.layout import service_root
from dicom_lakehouse.lake.walker import classify_entry, plan_listing, run_listing_task
from dicom_lakehouse.testing import build_sample_lake


def _listed(root: Path) -> dict[str, dict]:
    backend = LocalBackend(root)
    prefix = service_root("ws1", "svc1")
    rows = {}
    for task in plan_listing(backend, "ws1", "svc1"):
        for info in run_listing_task(backend, task):
            row = classify_entry(info, prefix)
            if row and row["kind"] == "instance":
                rows[row["file_path"]] = row
    return rows


def test_file_vanishing_between_listing_and_reading_is_counted(tmp_path: Path) -> None:
    lake = build_sample_lake(tmp_path, include_testdata=False)
    listed = _listed(tmp_path)
    victim = lake.instances[0]
    (tmp_path / victim.path).unlink()
    row = extract_row(LocalBackend(tmp_path), listed[victim.path], ExtractOptions())
    assert row["status"] == "quarantined" and row["reason"] == "vanished"


def test_unreadable_path_is_a_read_error_and_retried(tmp_path: Path) -> None:
    from dicom_lakehouse.extract import is_retryable

    lake = build_sample_lake(tmp_path, include_testdata=False)
    listed = _listed(tmp_path)
    target = lake.instances[0]
    (tmp_path / target.path).unlink()
    (tmp_path / target.path).mkdir()  # the name is now a folder: reading it fails
    row = extract_row(LocalBackend(tmp_path), listed[target.path], ExtractOptions())
    assert row["reason"] == "read_error"
    assert is_retryable(row["reason"])


def test_archive_tier_blob_is_quarantined_without_a_read(tmp_path: Path) -> None:
    lake = build_sample_lake(tmp_path, include_testdata=False)
    listed = dict(_listed(tmp_path)[lake.instances[0].path], access_tier="Archive")
    row = extract_row(LocalBackend(tmp_path), listed, ExtractOptions())
    assert row["reason"] == "archived" and row["header_bytes_read"] == 0


def test_private_tags_and_nested_sequences_are_kept(tmp_path: Path) -> None:
    folder = tmp_path / "AHDS/ws1/dicom/svc1/Microsoft.Default"
    folder.mkdir(parents=True)
    shutil.copy(get_testdata_file("CT_small.dcm"), folder / "132_1.dcm")
    row = next(
        extract_rows(
            LocalBackend(tmp_path), _listed(tmp_path).values(), ExtractOptions(io_threads=2)
        )
    )
    meta = json.loads(row["metadata_json"])
    private = [k for k in meta if int(k[:4], 16) % 2 == 1]
    assert private, "CT_small carries private groups"
    assert row["modality"] == "CT" and row["rows"] == 128
    assert row["header_bytes_read"] < (folder / "132_1.dcm").stat().st_size


def test_threaded_extraction_keeps_order_and_results(tmp_path: Path) -> None:
    build_sample_lake(tmp_path)
    listed = list(_listed(tmp_path).values())
    backend = LocalBackend(tmp_path)
    serial = list(extract_rows(backend, listed, ExtractOptions(io_threads=1)))
    threaded = list(extract_rows(backend, listed, ExtractOptions(io_threads=8)))
    assert serial == threaded
