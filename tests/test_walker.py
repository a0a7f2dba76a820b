"""The walker over a real local lake (no Spark)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dicom_lakehouse.errors import StorageError
from dicom_lakehouse.lake.backend import FileInfo, LocalBackend
from dicom_lakehouse.lake.layout import service_root
from dicom_lakehouse.lake.walker import classify_entry, plan_listing, run_listing_task
from dicom_lakehouse.testing import build_sample_lake


def _walk(backend: LocalBackend, digits: int, partitions: list[str] | None = None) -> list[str]:
    tasks = plan_listing(backend, "ws1", "svc1", partitions=partitions, digits=digits)
    return [info.path for task in tasks for info in run_listing_task(backend, task)]


def _disk_files(root: Path) -> set[str]:
    out = set()
    for folder, _, files in os.walk(root):
        for name in files:
            out.add(str((Path(folder) / name).relative_to(root)).replace(os.sep, "/"))
    return out


@pytest.mark.parametrize("digits", [0, 1, 2])
def test_shards_together_list_every_file_exactly_once(tmp_path: Path, digits: int) -> None:
    lake = build_sample_lake(tmp_path)
    listed = _walk(LocalBackend(tmp_path), digits)
    assert len(listed) == len(set(listed))
    assert set(listed) == _disk_files(tmp_path)
    assert set(listed) == {f.path for f in lake.files}


def test_classification_matches_the_manifest(tmp_path: Path) -> None:
    lake = build_sample_lake(tmp_path)
    backend = LocalBackend(tmp_path)
    root = service_root("ws1", "svc1")
    rows = {}
    for task in plan_listing(backend, "ws1", "svc1", digits=1):
        for info in run_listing_task(backend, task):
            row = classify_entry(info, root)
            assert row is not None
            rows[row["file_path"]] = row
    for expected in lake.files:
        row = rows[expected.path]
        assert row["kind"] == expected.kind, expected.path
        if expected.kind == "instance":
            assert row["partition_name"] == expected.partition_name
            assert row["watermark"] == expected.watermark
        assert row["file_size"] == (tmp_path / expected.path).stat().st_size
        assert row["etag"] and row["last_modified"] is not None


def test_partition_less_service_maps_to_default(tmp_path: Path) -> None:
    lake = build_sample_lake(tmp_path, partitioned=False)
    backend = LocalBackend(tmp_path)
    root = service_root("ws1", "svc1")
    rows = [
        classify_entry(info, root)
        for task in plan_listing(backend, "ws1", "svc1", digits=1)
        for info in run_listing_task(backend, task)
    ]
    instances = [r for r in rows if r and r["kind"] == "instance"]
    assert len(instances) == len([f for f in lake.files if f.kind == "instance"])
    assert {r["partition_name"] for r in instances} == {"Microsoft.Default"}


def test_partition_filter_lists_only_named_partitions(tmp_path: Path) -> None:
    lake = build_sample_lake(tmp_path)
    listed = _walk(LocalBackend(tmp_path), 1, partitions=["research"])
    expected = {f.path for f in lake.files if f.path.split("/")[4] == "research"}
    assert set(listed) == expected


def test_missing_service_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="service folder"):
        plan_listing(LocalBackend(tmp_path), "ws1", "nope")


class _FlatListingWithFolders(LocalBackend):
    """A local backend that also reports folders the way a flat HNS blob listing
    does (zero-length entries with hdi_isfolder=true); Azurite never does."""

    def list_tree(self, prefix: str, shard: str, digits: int) -> Iterator[FileInfo]:
        yield FileInfo(f"{prefix}/fake-folder", 0, None, None, is_dir=True)
        yield from super().list_tree(prefix, shard, digits)


def test_folder_entries_of_flat_listings_are_skipped(tmp_path: Path) -> None:
    lake = build_sample_lake(tmp_path)
    backend = _FlatListingWithFolders(tmp_path)
    root = service_root("ws1", "svc1")
    entries = [
        info
        for task in plan_listing(backend, "ws1", "svc1", digits=0)
        for info in run_listing_task(backend, task)
    ]
    assert any(e.is_dir for e in entries)
    rows = [classify_entry(e, root) for e in entries]
    assert {r["file_path"] for r in rows if r} == {f.path for f in lake.files}


def test_driver_listing_classifies_every_file_and_stops_past_its_limit(tmp_path: Path) -> None:
    from dicom_lakehouse.bronze import list_on_driver
    from dicom_lakehouse.lake.backend import BackendSpec

    lake = build_sample_lake(tmp_path)
    spec = BackendSpec(str(tmp_path), ())
    tasks = plan_listing(LocalBackend(tmp_path), "ws1", "svc1", digits=1)
    table = list_on_driver(spec, tasks, "ws1", "svc1", limit=len(lake.files))
    assert table is not None
    rows = table.to_pylist()
    assert sorted(r["file_path"] for r in rows) == sorted(f.path for f in lake.files)
    assert {r["file_path"]: r["kind"] for r in rows} == {f.path: str(f.kind) for f in lake.files}
    # one file more than the limit allows: the caller lists on executors instead
    assert list_on_driver(spec, tasks, "ws1", "svc1", limit=len(lake.files) - 1) is None
    assert list_on_driver(spec, tasks, "ws1", "svc1", limit=0) is None
