"""Derivers' inputs: sorting, series checks, pixel decoding, mask checks, UIDs, registry.

The derived objects themselves (dciodvfy, references, round trips) are in
test_derive_objects.py.
"""

from __future__ import annotations

import copy
import datetime as dt
import random
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom import Dataset
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate
from pydicom.uid import MPEG4HP41, ExplicitVRLittleEndian

from dicom_lakehouse.derive import (
    DerivationKey,
    Deriver,
    MaskModel,
    SecondaryCaptureDeriver,
    SegmentationDeriver,
    as_mask,
    get_deriver,
    load_series,
    sort_sources,
)
from dicom_lakehouse.derive.base import EPOCH, derived_datetime
from dicom_lakehouse.derive.pixels import decode_frames, display_window, to_uint8
from dicom_lakehouse.derive.sc import montage_frames, patient_orientation
from dicom_lakehouse.errors import ConfigError, DeriveError
from dicom_lakehouse.testing.sample_lake import build_ct_lake

Series = Callable[[], list[Dataset]]


def bundled(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not bundled with this pydicom")
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = build_ct_lake(
        tmp_path_factory.mktemp("ct"), n_instances=4, rows=64, columns=64, instances_per_series=4
    )
    return lake.root


@pytest.fixture
def ct_series(ct_dir: Path) -> Series:
    """Reads the 4-slice CT series afresh on each call (datasets are mutable)."""
    paths = sorted(ct_dir.rglob("*.dcm"))
    assert len(paths) == 4
    return lambda: [pydicom.dcmread(p) for p in paths]


def same_series_as(ds: Dataset, template: Dataset) -> Dataset:
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID"):
        setattr(ds, keyword, getattr(template, keyword))
    return ds


def reason_of(deriver: Deriver, sources: list[Dataset]) -> DeriveError:
    with pytest.raises(DeriveError) as info:
        deriver.derive(sources)
    return info.value


# --- sorting ----------------------------------------------------------------------------


def test_sort_follows_position_along_the_normal_then_instance_number(ct_series: Series) -> None:
    sources = ct_series()
    shuffled = random.Random(3).sample(sources, len(sources))
    ordered = sort_sources(shuffled)
    z = [float(ds.ImagePositionPatient[2]) for ds in ordered]
    assert z == sorted(z)  # normal (0, 0, 1): ascending z
    assert [int(ds.InstanceNumber) for ds in ordered] == [4, 3, 2, 1]

    for ds in sources:  # no geometry: InstanceNumber decides
        del ds.ImagePositionPatient
        del ds.ImageOrientationPatient
    assert [int(ds.InstanceNumber) for ds in sort_sources(shuffled)] == [1, 2, 3, 4]


def test_load_series_decodes_frames_in_sorted_order(ct_series: Series) -> None:
    series = load_series(ct_series()[::-1])
    frames = series.pixels()
    assert frames.shape == (4, 64, 64)
    assert frames.dtype == np.float32
    assert series.n_frames == 4
    assert series.frame_refs == ((0, 1), (1, 1), (2, 1), (3, 1))
    first, last = series.datasets[0], series.datasets[3]
    assert np.array_equal(frames[0], first.pixel_array.astype(np.float32))
    assert np.array_equal(series.pixels([3]), last.pixel_array[None].astype(np.float32))


# --- series checks ----------------------------------------------------------------------


@pytest.mark.parametrize("deriver", [SecondaryCaptureDeriver(), SegmentationDeriver(np.isnan)])
def test_series_checks_name_the_problem(ct_series: Series, deriver: Deriver) -> None:
    assert reason_of(deriver, []).reason == "empty_series"

    mixed = ct_series()
    mixed[1].SeriesInstanceUID = pydicom.uid.generate_uid()
    assert reason_of(deriver, mixed).reason == "mixed_series"

    twice = ct_series()
    twice.append(twice[0])
    assert reason_of(deriver, twice).reason == "duplicate_instances"

    sized = ct_series()
    sized[2] = same_series_as(bundled("CT_small.dcm"), sized[0])  # 128x128 among 64x64
    error = reason_of(deriver, sized)
    assert error.reason == "mixed_geometry"
    assert "64x64" in str(error)
    assert "128x128" in str(error)

    plan = ct_series()
    plan[0] = same_series_as(bundled("rtplan.dcm"), plan[1])
    error = reason_of(deriver, plan)
    assert error.reason == "not_an_image"
    assert "RT Plan Storage" in str(error)

    color = ct_series()[:1]
    color.append(same_series_as(bundled("SC_rgb_small_odd.dcm"), color[0]))
    assert reason_of(deriver, color).reason == "unsupported_pixels"

    no_uid = ct_series()
    del no_uid[0].SOPInstanceUID
    assert reason_of(deriver, no_uid).reason == "missing_uids"


def test_seg_needs_patient_geometry(ct_series: Series) -> None:
    sources = ct_series()
    for ds in sources:
        del ds.FrameOfReferenceUID
    error = reason_of(SegmentationDeriver(np.isnan), sources)
    assert error.reason == "missing_geometry"
    assert "FrameOfReferenceUID" in str(error)


# --- pixels -----------------------------------------------------------------------------


def test_undecodable_transfer_syntax_names_the_uid_and_no_phi() -> None:
    ds = bundled("CT_small.dcm")
    ds.file_meta.TransferSyntaxUID = MPEG4HP41
    ds.PixelData = encapsulate([b"\x00" * 64])
    ds["PixelData"].VR = "OB"
    for deriver in (SecondaryCaptureDeriver(), SegmentationDeriver(np.isnan)):
        error = reason_of(deriver, [ds])
        assert error.reason == "undecodable_pixels"
        assert MPEG4HP41 in str(error)
        for phi in (ds.PatientName, ds.PatientID, ds.StudyInstanceUID, ds.SOPInstanceUID):
            assert str(phi) not in str(error)


def test_missing_transfer_syntax_is_undecodable(ct_series: Series) -> None:
    ds = ct_series()[0]
    del ds.file_meta.TransferSyntaxUID
    assert reason_of(SecondaryCaptureDeriver(), [ds]).reason == "undecodable_pixels"


def test_short_pixel_data_is_invalid_pixels(ct_series: Series) -> None:
    sources = ct_series()
    sources[1].PixelData = sources[1].PixelData[:100]
    error = reason_of(SecondaryCaptureDeriver(), sources)
    assert error.reason == "invalid_pixels"
    assert ExplicitVRLittleEndian in str(error)
    assert isinstance(error.__cause__, ValueError)


@pytest.mark.parametrize(
    "name",
    [
        "MR_small_jp2klossless.dcm",  # JPEG 2000 lossless (pylibjpeg-openjpeg)
        "MR_small_jpeg_ls_lossless.dcm",  # JPEG-LS lossless (pyjpegls)
        "MR_small_RLE.dcm",  # RLE lossless (pydicom)
        "MR_small_bigendian.dcm",  # Explicit VR Big Endian
        "MR_small_implicit.dcm",  # Implicit VR Little Endian
    ],
)
def test_compressed_and_other_encodings_decode_to_the_same_pixels(name: str) -> None:
    reference = decode_frames(bundled("MR_small.dcm"))
    assert np.array_equal(decode_frames(bundled(name)), reference)


def test_lossy_jpeg_decodes() -> None:
    for name in ("JPGExtended.dcm", "693_J2KI.dcm"):  # JPEG extended 12-bit, JPEG 2000
        ds = bundled(name)
        frames = decode_frames(ds)
        assert frames.shape == (1, ds.Rows, ds.Columns)
        assert frames.std() > 0


def test_modality_lut_is_applied() -> None:
    ds = bundled("CT_small.dcm")  # RescaleIntercept -1024
    frames = decode_frames(ds)
    expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
    assert np.allclose(frames[0], expected)


def test_linear_window_and_minmax_to_uint8() -> None:
    values = np.array([-1000.0, -160.0, 40.0, 240.0, 3000.0])
    out = to_uint8(values, (40.0, 400.0))
    assert out.dtype == np.uint8
    assert out[0] == 0 and out[-1] == 255
    assert 126 <= out[2] <= 129
    assert list(to_uint8(values, (40.0, 400.0), invert=True)) == list(255 - out)
    assert list(to_uint8(np.array([5.0, 10.0]), None)) == [0, 255]
    assert list(to_uint8(np.array([7.0, 7.0]), None)) == [0, 0]


def test_display_window_reads_the_first_value(ct_series: Series) -> None:
    ds = ct_series()[0]
    assert display_window(ds) == (40.0, 400.0)
    ds.WindowCenter, ds.WindowWidth = ["50", "500"], ["350", "2000"]
    assert display_window(ds) == (50.0, 350.0)
    del ds.WindowWidth
    assert display_window(ds) is None


def test_montage_frames_and_orientation() -> None:
    assert montage_frames(4, 9) == [0, 1, 2, 3]
    assert montage_frames(5, 1) == [2]
    picked = montage_frames(200, 9)
    assert len(picked) == 9 and picked == sorted(set(picked)) and picked[-1] < 200
    ds = Dataset()
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    assert patient_orientation(ds) == ("L", "P")
    ds.ImageOrientationPatient = [0, 1, 0, 0, 0, -1]  # sagittal
    assert patient_orientation(ds) == ("P", "F")
    assert patient_orientation(Dataset()) is None


# --- masks ------------------------------------------------------------------------------


def test_mask_contract() -> None:
    shape = (2, 3, 4)
    assert as_mask(np.ones(shape, np.uint8), shape).dtype == np.bool_
    assert as_mask(np.zeros(shape, np.float32), shape).dtype == np.bool_
    for bad, expected in (
        (np.ones((2, 3)), "shape"),
        (np.full(shape, 2), "0 and 1"),
        (np.full(shape, 0.5), "0 and 1"),
        (np.full(shape, "x"), "dtype"),
    ):
        with pytest.raises(DeriveError, match=expected) as info:
            as_mask(bad, shape)
        assert info.value.reason == "invalid_mask"


def test_failing_or_wrong_models_raise(ct_series: Series) -> None:
    def broken(pixels: np.ndarray) -> np.ndarray:
        raise RuntimeError("boom")

    error = reason_of(SegmentationDeriver(broken), ct_series())
    assert error.reason == "model_failed"
    assert isinstance(error.__cause__, RuntimeError)
    flat = reason_of(SegmentationDeriver(lambda p: p[0] > 0), ct_series())
    assert flat.reason == "invalid_mask"


def test_mask_model_from_callable_names() -> None:
    def threshold(pixels: np.ndarray) -> np.ndarray:
        return pixels > 0

    model = MaskModel.from_callable(threshold)
    assert (model.name, model.version) == ("threshold", "0")
    named = MaskModel.from_callable(threshold, name="thr", version="2")
    assert (named.name, named.version) == ("thr", "2")
    assert named.identity != model.identity


# --- UIDs, dates, registry --------------------------------------------------------------


def test_derivation_key_is_order_free_and_unambiguous() -> None:
    a = DerivationKey.of("1.2.3", ["1.2.3.2", "1.2.3.1"], "seg", "1", "m")
    b = DerivationKey.of("1.2.3", ["1.2.3.1", "1.2.3.2"], "seg", "1", "m")
    assert a == b and a.uid("series") == b.uid("series")
    assert a.uid("series") != a.uid("instance:1")
    assert a.uid("series").startswith("1.2.826.0.1.3680043.8.498.")
    assert a.uid("series").is_valid
    # boundaries count: plain concatenation would give these the same hash
    c = DerivationKey.of("1.2.3", ["1.2.3.1"], "se", "g1", "m")
    d = DerivationKey.of("1.2.3", ["1.2.3.1"], "seg", "1", "m")
    assert c.uid("series") != d.uid("series")
    for changed in (
        DerivationKey.of("1.2.4", a.sop_instance_uids, "seg", "1", "m"),
        DerivationKey.of("1.2.3", ["1.2.3.1"], "seg", "1", "m"),
        DerivationKey.of("1.2.3", a.sop_instance_uids, "sc", "1", "m"),
        DerivationKey.of("1.2.3", a.sop_instance_uids, "seg", "2", "m"),
        DerivationKey.of("1.2.3", a.sop_instance_uids, "seg", "1", "m2"),
    ):
        assert changed.uid("series") != a.uid("series")
    assert a.uid("series", prefix="1.2.3.4.").startswith("1.2.3.4.")


def test_derived_datetime_prefers_series_then_falls_back(ct_series: Series) -> None:
    sources = ct_series()
    sources[0].SeriesDate, sources[0].SeriesTime = "20240102", "030405.5"
    assert derived_datetime(sources) == dt.datetime(2024, 1, 2, 3, 4, 5, 500000)
    for ds in sources:
        for keyword in ("SeriesDate", "StudyDate"):
            if keyword in ds:
                delattr(ds, keyword)
    assert derived_datetime(sources) == EPOCH
    when = dt.datetime(2025, 6, 7, 8, 9, 10)
    assert derived_datetime(sources, when) == when


def test_registry() -> None:
    sc = get_deriver("sc", max_frames=1)
    assert isinstance(sc, SecondaryCaptureDeriver) and isinstance(sc, Deriver)
    seg = get_deriver("seg", mask_fn=np.isnan, model_name="nan", model_version="7")
    assert isinstance(seg, SegmentationDeriver)
    assert (seg.model.name, seg.model.version) == ("nan", "7")
    assert isinstance(get_deriver("seg", model=np.isnan), SegmentationDeriver)
    with pytest.raises(ConfigError, match="unknown deriver"):
        get_deriver("sr")
    with pytest.raises(ConfigError, match="exactly one"):
        get_deriver("seg")
    with pytest.raises(ConfigError, match="invalid options"):
        get_deriver("sc", colour="red")
    with pytest.raises(ConfigError):
        get_deriver("seg", model=np.isnan, model_version="1")


def test_sources_are_not_modified(ct_series: Series) -> None:
    sources = ct_series()
    before = [copy.deepcopy(ds) for ds in sources]
    SecondaryCaptureDeriver().derive(sources)
    SegmentationDeriver(lambda p: p > 1500).derive(sources)
    for ds, original in zip(sources, before, strict=True):
        assert ds.to_json() == original.to_json()
