"""Header extraction on pydicom's bundled files (no Spark)."""

from __future__ import annotations

import base64
import io
import json
import warnings
from pathlib import Path

import pydicom
import pytest
from pydicom import config as pydicom_config
from pydicom.data import get_charset_files, get_testdata_file, get_testdata_files

from dicom_lakehouse.dicom.header import RangedFile, read_header
from dicom_lakehouse.dicom.jsonmodel import dataset_to_json
from dicom_lakehouse.errors import DicomParseError


def _bundled() -> list[Path]:
    files = {Path(f) for f in get_testdata_files() + get_charset_files()}
    return sorted(f for f in files if f.is_file())


def _reader(data: bytes, calls: list[tuple[int, int]] | None = None):  # type: ignore[no-untyped-def]
    def fetch(offset: int, length: int) -> bytes:
        if calls is not None:
            calls.append((offset, length))
        return data[offset : offset + length]

    return fetch


def _uri(tag: int, offset: int, length: int) -> str:
    return f"bulk:{tag:08X}"


def test_fast_json_equals_pydicom_on_every_bundled_file() -> None:
    compared = 0
    with warnings.catch_warnings(), pydicom_config.disable_value_validation():
        warnings.simplefilter("ignore")
        for path in _bundled():
            data = path.read_bytes()
            try:
                ref_ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
                ref = ref_ds.to_json_dict(
                    bulk_data_threshold=1024,
                    bulk_data_element_handler=lambda e: f"bulk:{e.tag:08X}",
                )
            except Exception:  # noqa: BLE001 - files pydicom itself cannot convert
                continue
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True)
            assert dataset_to_json(ds, _uri) == ref, path.name
            compared += 1
    assert compared > 150


def test_initial_range_too_small_reads_more_and_gives_the_full_header() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    calls: list[tuple[int, int]] = []
    small = read_header(_reader(data, calls), len(data), path="x", initial_bytes=1024)
    full = read_header(_reader(data), len(data), path="x", initial_bytes=len(data))
    assert len(calls) > 1  # the first range was not enough
    assert small.metadata == full.metadata
    assert small.bytes_read < len(data) // 4  # pixel data was never read
    ref = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    assert small.metadata["00080018"]["Value"] == [ref.SOPInstanceUID]


def test_large_values_are_skipped_not_read_and_referenced_with_their_offset() -> None:
    path = Path(get_testdata_file("examples_overlay.dcm"))
    data = path.read_bytes()
    header = read_header(_reader(data), len(data), path="p.dcm", initial_bytes=4096)
    overlay = header.metadata["60003000"]
    assert "InlineBinary" not in overlay
    uri = overlay["BulkDataURI"]
    fields = dict(part.split("=") for part in uri.split("#", 1)[1].split("&"))
    offset, length = int(fields["offset"]), int(fields["length"])
    reference = pydicom.dcmread(path)
    assert data[offset : offset + length] == reference[0x60003000].value
    assert header.bytes_read < len(data) // 2


def test_small_binary_values_are_inlined_as_base64() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    header = read_header(_reader(data), len(data), path="x")
    inline = [e for e in header.metadata.values() if "InlineBinary" in e]
    assert inline
    for element in inline:
        assert len(base64.b64decode(element["InlineBinary"])) <= 768


def test_charsets_are_decoded_like_pydicom() -> None:
    for name in ("chrH31.dcm", "chrX1.dcm", "chrArab.dcm"):
        path = next(p for p in _bundled() if p.name == name)
        data = path.read_bytes()
        header = read_header(_reader(data), len(data), path="x")
        ref = pydicom.dcmread(path, stop_before_pixels=True)
        name_json = header.metadata["00100010"]["Value"][0]
        assert name_json["Alphabetic"] == ref.PatientName.components[0]
        assert json.loads(header.metadata_json()) == header.metadata


def test_truncated_file_is_reported_not_silently_cut() -> None:
    data = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    with pytest.raises(DicomParseError) as err:
        read_header(_reader(data[:700]), 700, path="x", initial_bytes=1024)
    assert err.value.reason == "truncated_header"


def test_bundled_truncated_rtplan_is_truncated_header() -> None:
    data = Path(get_testdata_file("rtplan_truncated.dcm")).read_bytes()
    with pytest.raises(DicomParseError) as err:
        read_header(_reader(data), len(data), path="x")
    assert err.value.reason == "truncated_header"


def test_file_shorter_than_listed_is_truncated() -> None:
    data = Path(get_testdata_file("rtplan.dcm")).read_bytes()
    cut = data[: len(data) // 2]
    with pytest.raises(DicomParseError) as err:
        read_header(_reader(cut), len(data), path="x")  # the listing said it was longer
    assert err.value.reason == "truncated_header"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty_file"),
        (b"hello, this is not DICOM at all\n" * 20, "not_dicom"),
        (b"\x00" * 128 + b"DICX" + b"\x00" * 64, "not_dicom"),
    ],
)
def test_bad_content_reasons(content: bytes, reason: str) -> None:
    with pytest.raises(DicomParseError) as err:
        read_header(_reader(content), len(content), path="x")
    assert err.value.reason == reason


def test_files_without_preamble_are_read() -> None:
    for name in ("rtstruct.dcm", "ExplVR_LitEndNoMeta.dcm"):
        data = Path(get_testdata_file(name)).read_bytes()
        assert data[128:132] != b"DICM"
        header = read_header(_reader(data), len(data), path="x")
        assert header.metadata["00080018"]["Value"]


def test_parse_error_detail_carries_no_header_values() -> None:
    data = Path(get_testdata_file("badVR.dcm")).read_bytes()
    with pytest.raises(DicomParseError) as err:
        read_header(_reader(data), len(data), path="x")
    ds = pydicom.dcmread(get_testdata_file("badVR.dcm"), stop_before_pixels=True, force=True)
    for elem in ds.iterall():
        raw = ds.get_item(elem.tag) if elem.tag in ds else None
        value = getattr(raw, "value", None)
        if isinstance(value, bytes) and len(value) > 3:
            assert value.decode("latin-1").strip() not in err.value.detail


def test_header_larger_than_the_cap_is_quarantined() -> None:
    data = Path(get_testdata_file("waveform_ecg.dcm")).read_bytes()  # ~290 KB of sequences
    with pytest.raises(DicomParseError) as err:
        read_header(_reader(data), len(data), path="x", initial_bytes=4096, max_bytes=65536)
    assert err.value.reason == "header_too_large"


def test_file_larger_than_2_gib_reads_only_its_header(tmp_path: Path) -> None:
    """A sparse 3 GiB file: the header is read with a few KiB, offsets past 2**31 work."""
    ds = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    head = io.BytesIO()
    ds.PixelData = b""
    ds.save_as(head, enforce_file_format=True)
    raw = head.getvalue()
    # rewrite the empty Pixel Data as a 3 GiB value (OW, 4-byte length) in a sparse file
    marker = raw.rfind(b"\xe0\x7f\x10\x00")
    big = tmp_path / "big.dcm"
    length = 3 * 1024**3
    with big.open("wb") as handle:
        handle.write(raw[:marker] + b"\xe0\x7f\x10\x00OW\x00\x00" + length.to_bytes(4, "little"))
        handle.truncate(marker + 12 + length)
    size = big.stat().st_size
    assert size > 2**31

    def fetch(offset: int, n: int) -> bytes:
        with big.open("rb") as handle:
            handle.seek(offset)
            return handle.read(n)

    header = read_header(fetch, size, path="big.dcm")
    assert header.metadata["00080018"]["Value"] == [ds.SOPInstanceUID]
    assert header.bytes_read <= 16384


def test_ranged_file_seek_past_end_flags_truncation() -> None:
    source = RangedFile(_reader(b"x" * 100), 100, 1024, 1 << 20)
    source.seek(150)
    assert source.past_end
