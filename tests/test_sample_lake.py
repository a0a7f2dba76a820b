"""The sample-lake generator: its manifest must agree with the bytes it writes."""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from pydicom.errors import InvalidDicomError
from pydicom.uid import ExplicitVRLittleEndian

from dicom_lakehouse.lake.layout import DEFAULT_PARTITION, FileKind, Layout, classify, service_root
from dicom_lakehouse.testing.sample_lake import (
    MICROSOFT_IMPLEMENTATION_CLASS_UID,
    SampleFile,
    SampleLake,
    build_ct_lake,
    build_listing_lake,
    build_sample_lake,
)

GENERATED = ("generated", "legacy", "update")
REASONS = {"empty_file", "not_dicom", "truncated_header", "missing_uids"}


@pytest.fixture(scope="module", params=[True, False], ids=["partitioned", "flat"])
def lake(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SampleLake:
    return build_sample_lake(tmp_path_factory.mktemp("lake"), partitioned=request.param)


def below_service(lake: SampleLake, file: SampleFile) -> list[str]:
    prefix = service_root(lake.workspace, lake.service) + "/"
    assert file.path.startswith(prefix)
    return file.path.removeprefix(prefix).split("/")


def read(lake: SampleLake, file: SampleFile) -> pydicom.Dataset:
    return pydicom.dcmread(lake.local_path(file), stop_before_pixels=True, force=True)


def by_source(lake: SampleLake, source: str) -> list[SampleFile]:
    return [f for f in lake.files if f.source == source]


def test_manifest_matches_disk(lake: SampleLake) -> None:
    on_disk = {p.relative_to(lake.root).as_posix() for p in lake.root.rglob("*") if p.is_file()}
    listed = [f.path for f in lake.files]
    assert len(listed) == len(set(listed))
    assert set(listed) == on_disk
    assert all(path.startswith("AHDS/ws1/dicom/svc1/") for path in listed)


def test_classify_agrees_with_manifest(lake: SampleLake) -> None:
    for f in lake.files:
        verdict = classify(below_service(lake, f), verify_prefix=True)
        assert verdict.kind == f.kind, f.path
        assert verdict.partition_name == f.partition_name, f.path
        assert verdict.watermark == f.watermark, f.path
        assert (verdict.layout == Layout.LEGACY) == (f.source == "legacy"), f.path


def test_watermarks_unique_and_increasing_from_one(lake: SampleLake) -> None:
    marks = [f.watermark for f in lake.files if f.kind == FileKind.INSTANCE]
    assert marks == list(range(1, len(marks) + 1))
    assert all(f.watermark is None for f in lake.files if f.kind != FileKind.INSTANCE)


def test_counts_add_up(lake: SampleLake, request: pytest.FixtureRequest) -> None:
    counts = lake.counts()
    assert (
        counts["files_listed"]
        == len(lake.files)
        == sum(v for k, v in counts.items() if k != "files_listed")
    )
    assert counts["files_ingested"] == len(lake.instances) > 20
    assert {f.expected_reason for f in lake.quarantined} == REASONS
    assert counts["files_ignored"] == 5 and counts["files_foreign"] == 3
    # Superseded: the bulk-updated original; without partitions also MR_small, whose UIDs
    # MR_small_implicit repeats (same partition, higher watermark).
    superseded = sorted(f.source for f in lake.instances if not f.is_current)
    partitioned = request.node.callspec.params["lake"]
    expected = ["generated"] if partitioned else ["generated", "testdata:MR_small.dcm"]
    assert superseded == expected
    assert len(lake.current_instances) == len(lake.instances) - len(superseded)
    keys = [(f.partition_name, f.sop_instance_uid) for f in lake.current_instances]
    assert len(keys) == len(set(keys))


def test_instances_reread_with_manifest_uids(lake: SampleLake) -> None:
    for f in lake.instances:
        ds = read(lake, f)
        assert (ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID) == (
            f.study_instance_uid,
            f.series_instance_uid,
            f.sop_instance_uid,
        ), f.path
        if f.source in GENERATED:
            data = lake.local_path(f).read_bytes()
            assert data[:128] == bytes(128) and data[128:132] == b"DICM"
            assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            assert ds.file_meta.MediaStorageSOPInstanceUID == f.sop_instance_uid


def test_bundled_files_copied_with_expected_outcome(lake: SampleLake) -> None:
    outcome = {f.source.split(":", 1)[1]: f for f in lake.files if ":" in f.source}
    expected = {
        "nested_priv_SQ.dcm": "missing_uids",
        "chrSQEncoding.dcm": "missing_uids",
        # no DICM prefix and a misaligned dataset: pydicom reads junk
        "no_meta.dcm": "not_dicom",
    }
    for name, reason in expected.items():
        assert outcome[name].expected_reason == reason
        assert outcome[name].sop_instance_uid is None
    for name in ("CT_small.dcm", "rtstruct.dcm", "ExplVR_BigEnd.dcm", "JPEG2000.dcm", "chrH31.dcm"):
        assert outcome[name].expected_reason is None and outcome[name].sop_instance_uid
    ct = outcome["CT_small.dcm"]
    assert ct.sop_instance_uid == "1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"
    source = pydicom.data.get_testdata_file("CT_small.dcm", download=False)
    assert lake.local_path(ct).read_bytes() == Path(str(source)).read_bytes()
    # Same UIDs in two bundled files: they must not collide in one partition.
    assert (
        outcome["MR_small.dcm"].sop_instance_uid
        == outcome["MR_small_implicit.dcm"].sop_instance_uid
    )
    if len({f.partition_name for f in lake.instances}) > 1:
        assert (
            outcome["MR_small.dcm"].partition_name
            != outcome["MR_small_implicit.dcm"].partition_name
        )


def test_update_keeps_original_and_marks_newer_current(lake: SampleLake) -> None:
    (newer,) = by_source(lake, "update")
    older = [
        f for f in lake.instances if f.sop_instance_uid == newer.sop_instance_uid and f is not newer
    ]
    assert len(older) == 1
    (older_file,) = older
    assert older_file.partition_name == newer.partition_name
    assert newer.watermark == max(f.watermark or 0 for f in lake.files)
    assert (older_file.is_current, newer.is_current) == (False, True)
    old_ds, new_ds = read(lake, older_file), read(lake, newer)
    assert new_ds.file_meta.ImplementationClassUID == MICROSOFT_IMPLEMENTATION_CLASS_UID
    assert old_ds.file_meta.ImplementationClassUID != MICROSOFT_IMPLEMENTATION_CLASS_UID
    assert new_ds.StudyDescription != old_ds.StudyDescription
    assert new_ds.SeriesInstanceUID == old_ds.SeriesInstanceUID


def iter_elements(data: bytes) -> Iterator[tuple[int, int, int]]:
    """(tag, value start, value end) of explicit-VR little-endian elements after the preamble."""
    long_vrs = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"UC", b"UN", b"UR", b"UT"}
    pos = 132
    while pos + 8 <= len(data):
        group, element = struct.unpack_from("<HH", data, pos)
        if data[pos + 4 : pos + 6] in long_vrs:
            start, length = pos + 12, struct.unpack_from("<I", data, pos + 8)[0]
        else:
            start, length = pos + 8, struct.unpack_from("<H", data, pos + 6)[0]
        yield group << 16 | element, start, start + length
        pos = start + length


def test_broken_files_are_broken_as_declared(lake: SampleLake) -> None:
    broken = {
        f.expected_reason: lake.local_path(f)
        for f in lake.quarantined
        if f.source.startswith("broken:")
    }
    assert set(broken) == REASONS
    assert broken["empty_file"].stat().st_size == 0
    with pytest.raises(InvalidDicomError):
        pydicom.dcmread(broken["not_dicom"])
    no_uids = pydicom.dcmread(broken["missing_uids"])
    assert not any(
        k in no_uids for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    )
    assert "MediaStorageSOPInstanceUID" not in no_uids.file_meta and "PatientID" in no_uids

    data = broken["truncated_header"].read_bytes()
    assert data[128:132] == b"DICM"
    elements = list(iter_elements(data))
    tag, start, end = elements[-1]
    assert tag >> 16 != 0x0002  # cut in the dataset, past the file meta
    assert start < len(data) < end  # cut inside a value: the header claims more bytes
    assert all(t < 0x7FE00010 for t, _, _ in elements)  # never reached Pixel Data
    assert all(e <= len(data) for _, _, e in elements[:-1])


def test_cohort_and_charsets_present(lake: SampleLake) -> None:
    headers = [read(lake, f) for f in by_source(lake, "generated")]
    assert {ds.Modality for ds in headers} == {"CT", "MR"}
    cohort = [
        ds
        for ds in headers
        if ds.PatientSex == "F"
        and ds.Modality == "CT"
        and ds.BodyPartExamined == "CHEST"
        and 50 <= int(ds.PatientAge[:3]) <= 70
        and float(ds.SliceThickness) <= 1.25
    ]
    assert cohort
    assert {str(ds.SliceThickness) for ds in headers} == {"1.25", "5.0"}
    utf8 = [ds for ds in headers if ds.SpecificCharacterSet == "ISO_IR 192"]
    assert utf8 and all(str(ds.PatientName) == "Müller^Jürgen" for ds in utf8)
    raw = {f.path: lake.local_path(f).read_bytes() for f in by_source(lake, "generated")}
    assert any("Müller^Jürgen".encode() in b for b in raw.values())
    assert any("Nuñez^Inés".encode("latin-1") in b for b in raw.values())


def test_service_and_foreign_files(lake: SampleLake) -> None:
    names = {below_service(lake, f)[-1] for f in lake.ignored}
    assert "health.txt" in names
    assert any(n.startswith("health") and len(n) == len("health.txt") + 36 for n in names)
    assert any(" " in n and n.endswith("_frames_range.json") for n in names)
    assert {len(below_service(lake, f)) for f in lake.foreign} >= {5}
    for f in lake.foreign:
        if f.path.endswith(".dcm"):
            assert read(lake, f).SOPInstanceUID  # valid DICOM, foreign by name only


def test_partitioned_false_writes_under_service_folder(
    lake: SampleLake, request: pytest.FixtureRequest
) -> None:
    partitions = {f.partition_name for f in lake.files if f.kind == FileKind.INSTANCE}
    if not request.node.callspec.params["lake"]:
        assert partitions == {DEFAULT_PARTITION}
        assert not (lake.service_dir / DEFAULT_PARTITION).exists()
        assert {len(below_service(lake, f)) for f in lake.files if f.kind == FileKind.INSTANCE} == {
            1,
            3,
        }
    else:
        assert partitions == {DEFAULT_PARTITION, "research"}


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    def contents(lake: SampleLake) -> dict[str, bytes]:
        return {f.path: lake.local_path(f).read_bytes() for f in lake.files}

    first = build_sample_lake(tmp_path / "a", seed=3)
    again = build_sample_lake(tmp_path / "b", seed=3)
    other = build_sample_lake(tmp_path / "c", seed=4)
    assert first.files == again.files
    assert contents(first) == contents(again)
    differ = [f.path for f in first.instances if f.source == "generated"]
    assert all(contents(first)[p] != contents(other).get(p) for p in differ)


def test_refuses_non_empty_service_folder_and_bad_partitions(tmp_path: Path) -> None:
    build_sample_lake(tmp_path, include_testdata=False)
    with pytest.raises(FileExistsError):
        build_sample_lake(tmp_path)
    with pytest.raises(ValueError, match="partition"):
        build_sample_lake(tmp_path / "x", partitions=("bad/name",))


def test_ct_lake(tmp_path: Path) -> None:
    lake = build_ct_lake(
        tmp_path, n_instances=5, rows=64, columns=48, instances_per_series=2, partitions=("a", "b")
    )
    assert lake.counts()["files_ingested"] == 5 == len(lake.current_instances)
    assert [f.watermark for f in lake.files] == [1, 2, 3, 4, 5]
    assert len({f.series_instance_uid for f in lake.files}) == 3
    assert {f.partition_name for f in lake.files} == {"a", "b"}
    for f in lake.files:
        assert classify(below_service(lake, f), verify_prefix=True).kind == FileKind.INSTANCE
        ds = pydicom.dcmread(lake.local_path(f))
        assert ds.SOPInstanceUID == f.sop_instance_uid and ds.Modality == "CT"
        assert (ds.Rows, ds.Columns, len(ds.PixelData)) == (64, 48, 64 * 48 * 2)
        assert ds.pixel_array.max() < 4096


def test_listing_lake(tmp_path: Path) -> None:
    lake = build_listing_lake(tmp_path, 25, partitions=("p1", "p2"))
    assert len(list(lake.service_dir.rglob("*.dcm"))) == 25
    assert [f.watermark for f in lake.files] == list(range(1, 26))
    assert Counter(f.partition_name for f in lake.files) == {"p1": 13, "p2": 12}
    for f in lake.files:
        verdict = classify(below_service(lake, f), verify_prefix=True)
        assert (verdict.kind, verdict.watermark) == (FileKind.INSTANCE, f.watermark)
