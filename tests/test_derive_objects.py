"""Derived objects: dciodvfy-valid SC and SEG that reference their sources, round-trip the
mask, and come out identical on a re-run; the SEG model loaded from a real MLflow registry.

dciodvfy (Debian's dicom3tools) must be installed: ``bash scripts/install-dicom3tools.sh``.
Without it these tests fail, they do not skip.
"""

from __future__ import annotations

import io
import logging
import os
import random
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom import Dataset, dcmwrite
from pydicom.data import get_testdata_file
from pydicom.pixels import apply_modality_lut
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, SegmentationStorage

from dicom_lakehouse import __version__
from dicom_lakehouse.derive import (
    Deriver,
    MaskModel,
    SecondaryCaptureDeriver,
    SegmentationDeriver,
    get_deriver,
    load_mask_model,
)
from dicom_lakehouse.derive.sc import montage_frames
from dicom_lakehouse.errors import DeriveError
from dicom_lakehouse.testing.sample_lake import build_ct_lake
from tests.helpers import mlflow_store

Series = Callable[[], list[Dataset]]
THRESHOLD = 1500.0  # the phantom's bright core (~1800) and nothing else


def threshold_mask(pixels: np.ndarray) -> np.ndarray:
    """The core above THRESHOLD, with the first frame left empty (an omitted SEG frame)."""
    mask = pixels > THRESHOLD
    mask[0] = False
    return mask


# --- helpers ----------------------------------------------------------------------------


def find_dciodvfy() -> str | None:
    found = shutil.which("dciodvfy")
    if found:
        return found
    try:
        listed = subprocess.run(
            ["dpkg", "-L", "dicom3tools"], capture_output=True, text=True, check=False
        ).stdout
    except OSError:
        return None
    paths = [line for line in listed.splitlines() if line.endswith("/dciodvfy")]
    return next((p for p in paths if os.access(p, os.X_OK)), None)


@pytest.fixture(scope="session")
def dciodvfy() -> str:
    path = find_dciodvfy()
    if path is None:
        pytest.fail(
            "dciodvfy (Debian package dicom3tools) is not installed; run "
            "`bash scripts/install-dicom3tools.sh`"
        )
    return path


def assert_valid(ds: Dataset, dciodvfy: str, path: Path) -> list[str]:
    """Write ``ds`` as a Part 10 file, run dciodvfy on it, fail on any ``Error`` line.

    Returns the warnings.
    """
    dcmwrite(path, ds, enforce_file_format=True)
    result = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, check=False)
    lines = (result.stdout + result.stderr).splitlines()
    errors = [line for line in lines if line.startswith("Error")]
    assert not errors, "dciodvfy errors:\n" + "\n".join(lines)
    return [line for line in lines if line.startswith("Warning")]


def encoded(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    dcmwrite(buffer, ds, enforce_file_format=True)
    return buffer.getvalue()


def bundled(name: str) -> Dataset:
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.fail(f"pydicom test file {name} is not bundled with this pydicom")
    return pydicom.dcmread(path)


def expected_stack(sources: list[Dataset]) -> tuple[list[str], np.ndarray]:
    """SOP UIDs and float frames in ascending z (the axial series' normal is +z)."""
    ordered = sorted(sources, key=lambda ds: float(ds.ImagePositionPatient[2]))
    frames = np.stack([apply_modality_lut(ds.pixel_array, ds) for ds in ordered])
    return [str(ds.SOPInstanceUID) for ds in ordered], frames.astype(np.float32)


def segment_mask(seg_ds: Dataset, uids: list[str]) -> np.ndarray:
    seg = hd.seg.Segmentation.from_dataset(seg_ds, copy=True)
    pixels = seg.get_pixels_by_source_instance(uids, segment_numbers=[1])
    return pixels[..., 0].astype(bool)


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    lake = build_ct_lake(
        tmp_path_factory.mktemp("ct"), n_instances=4, rows=64, columns=64, instances_per_series=4
    )
    return lake.root


@pytest.fixture
def ct_series(ct_dir: Path) -> Series:
    """Reads the 4-slice CT series afresh on each call, so two runs share nothing."""
    paths = sorted(ct_dir.rglob("*.dcm"))
    assert len(paths) == 4
    return lambda: [pydicom.dcmread(p) for p in paths]


def check_common(derived: Dataset, sources: list[Dataset]) -> None:
    """Study, patient, encoding and provenance every derived object shares."""
    first = sources[0]
    assert derived.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert not derived.original_encoding[0]  # read back as explicit VR
    assert derived.StudyInstanceUID == first.StudyInstanceUID
    assert derived.SeriesInstanceUID != first.SeriesInstanceUID
    for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate"):
        assert derived[keyword].value == first[keyword].value, keyword
    assert derived.AccessionNumber == first.AccessionNumber
    assert derived.get("SpecificCharacterSet") == first.get("SpecificCharacterSet")
    assert derived.Manufacturer == "dicom_lakehouse"
    assert f"dicom_lakehouse {__version__}" in derived.SoftwareVersions
    date_kw, time_kw = next(
        pair
        for pair in (
            ("SeriesDate", "SeriesTime"),
            ("AcquisitionDate", "AcquisitionTime"),
            ("ContentDate", "ContentTime"),
            ("StudyDate", "StudyTime"),
        )
        if first.get(pair[0])
    )
    assert derived.ContentDate == derived.InstanceCreationDate == first[date_kw].value
    assert float(derived.ContentTime) == float(first[time_kw].value)
    assert int(derived.InstanceNumber) == 1


# --- secondary capture ------------------------------------------------------------------


def test_sc_is_valid_and_references_every_source(
    ct_series: Series, dciodvfy: str, tmp_path: Path
) -> None:
    sources = ct_series()
    (sc,) = SecondaryCaptureDeriver().derive(random.Random(1).sample(sources, 4))
    check_common(sc, sources)
    assert sc.SOPClassUID == SecondaryCaptureImageStorage
    assert sc.PhotometricInterpretation == "MONOCHROME2"
    assert (sc.BitsAllocated, sc.Rows, sc.Columns) == (8, 128, 128)  # 2x2 montage of 64x64
    assert int(sc.SeriesNumber) == int(sources[0].SeriesNumber) + 1000
    referenced = {str(item.ReferencedSOPInstanceUID) for item in sc.SourceImageSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in sources}
    assert all(
        item.ReferencedSOPClassUID == sources[0].SOPClassUID for item in sc.SourceImageSequence
    )
    assert sc.BodyPartExamined == sources[0].BodyPartExamined

    # tiles row by row in spatial order (ascending z), windowed with the source's 40/400
    uids, frames = expected_stack(sources)
    assert [str(i.ReferencedSOPInstanceUID) for i in sc.SourceImageSequence] == uids
    windowed = np.rint(np.clip((frames - 39.5) / 399 + 0.5, 0, 1) * 255).astype(np.uint8)
    expected = np.block([[windowed[0], windowed[1]], [windowed[2], windowed[3]]])
    assert np.array_equal(sc.pixel_array, expected)
    assert sc.pixel_array[32, 32] == 255  # the core (~1800) is above 40 + 400 / 2

    warnings = assert_valid(sc, dciodvfy, tmp_path / "sc.dcm")
    print("\n".join(warnings))


def test_sc_middle_frame_and_multiframe_source(dciodvfy: str, tmp_path: Path) -> None:
    dose = bundled("rtdose.dcm")  # 15 frames of 10x10
    (sc,) = SecondaryCaptureDeriver().derive([dose])
    assert (sc.Rows, sc.Columns) == (30, 30)  # 3x3 montage
    (item,) = sc.SourceImageSequence
    assert item.ReferencedSOPInstanceUID == dose.SOPInstanceUID
    assert list(item.ReferencedFrameNumber) == [i + 1 for i in montage_frames(15, 9)]
    assert_valid(sc, dciodvfy, tmp_path / "dose_sc.dcm")

    (middle,) = SecondaryCaptureDeriver(max_frames=1).derive([dose])
    assert (middle.Rows, middle.Columns) == (10, 10)
    assert int(middle.SourceImageSequence[0].ReferencedFrameNumber) == 8


def test_sc_of_a_long_series_shows_nine_spread_frames_and_decodes_only_those(
    tmp_path: Path, dciodvfy: str
) -> None:
    lake = build_ct_lake(
        tmp_path / "long", n_instances=12, rows=32, columns=32, instances_per_series=12
    )
    sources = [pydicom.dcmread(p) for p in sorted(lake.root.rglob("*.dcm"))]
    uids, _ = expected_stack(sources)
    shown = montage_frames(12, 9)
    hidden = next(i for i in range(12) if i not in shown)
    broken = next(ds for ds in sources if ds.SOPInstanceUID == uids[hidden])
    broken.PixelData = broken.PixelData[:10]  # never decoded for the SC

    (sc,) = SecondaryCaptureDeriver().derive(sources)
    assert (sc.Rows, sc.Columns) == (96, 96)  # 3x3 tiles of 32x32
    assert [i.ReferencedSOPInstanceUID for i in sc.SourceImageSequence] == [uids[i] for i in shown]
    assert_valid(sc, dciodvfy, tmp_path / "long_sc.dcm")
    with pytest.raises(DeriveError) as info:
        SegmentationDeriver(threshold_mask).derive(sources)  # the SEG needs every frame
    assert info.value.reason == "invalid_pixels"


@pytest.mark.parametrize(
    "name", ["MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm", "CT_small.dcm"]
)
def test_sc_and_seg_from_bundled_files(name: str, dciodvfy: str, tmp_path: Path) -> None:
    source = bundled(name)
    (sc,) = SecondaryCaptureDeriver().derive([source])
    (seg,) = SegmentationDeriver(lambda p: p > np.median(p)).derive([source])
    for derived, label in ((sc, "sc"), (seg, "seg")):
        check_common(derived, [source])
        assert_valid(derived, dciodvfy, tmp_path / f"{label}.dcm")


# --- segmentation -----------------------------------------------------------------------


def test_seg_is_valid_references_sources_and_round_trips(
    ct_series: Series, dciodvfy: str, tmp_path: Path
) -> None:
    sources = ct_series()
    deriver = SegmentationDeriver(MaskModel(threshold_mask, "core-threshold", "3"))
    (seg,) = deriver.derive(sources[::-1])
    check_common(seg, sources)
    assert seg.SOPClassUID == SegmentationStorage
    assert seg.SegmentationType == "BINARY"
    assert int(seg.SeriesNumber) == int(sources[0].SeriesNumber) + 2000
    assert seg.FrameOfReferenceUID == sources[0].FrameOfReferenceUID

    (series_ref,) = seg.ReferencedSeriesSequence
    assert series_ref.SeriesInstanceUID == sources[0].SeriesInstanceUID
    referenced = {str(i.ReferencedSOPInstanceUID) for i in series_ref.ReferencedInstanceSequence}
    assert referenced == {str(ds.SOPInstanceUID) for ds in sources}

    (segment,) = seg.SegmentSequence
    assert segment.SegmentAlgorithmType == "AUTOMATIC"
    assert segment.SegmentAlgorithmName == "core-threshold"
    (algorithm,) = segment.SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("core-threshold", "3")
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeMeaning == "Artificial Intelligence"
    assert "model core-threshold 3" in seg.SoftwareVersions

    uids, frames = expected_stack(sources)
    expected = threshold_mask(frames)
    assert expected[1:].any() and not expected[0].any()
    assert int(seg.NumberOfFrames) == 3  # the empty first frame is omitted
    assert np.array_equal(segment_mask(seg, uids), expected)

    warnings = assert_valid(seg, dciodvfy, tmp_path / "seg.dcm")
    print("\n".join(warnings))
    reread = hd.seg.segread(tmp_path / "seg.dcm")
    assert np.array_equal(reread.get_pixels_by_source_instance(uids)[..., 0] > 0, expected)


def test_seg_of_an_empty_mask_is_still_valid(
    ct_series: Series, dciodvfy: str, tmp_path: Path
) -> None:
    sources = ct_series()
    (seg,) = SegmentationDeriver(lambda p: np.zeros(p.shape, bool)).derive(sources)
    uids, _ = expected_stack(sources)
    assert not segment_mask(seg, uids).any()
    assert_valid(seg, dciodvfy, tmp_path / "empty.dcm")


# --- determinism ------------------------------------------------------------------------


DERIVERS: dict[str, Callable[[], Deriver]] = {
    "sc": SecondaryCaptureDeriver,
    "seg": lambda: get_deriver("seg", mask_fn=threshold_mask, model_version="1"),
}


@pytest.mark.parametrize("name", sorted(DERIVERS))
def test_rerun_gives_identical_objects(ct_series: Series, name: str) -> None:
    first = DERIVERS[name]().derive(ct_series())
    again = DERIVERS[name]().derive(random.Random(7).sample(ct_series(), 4))
    assert len(first) == len(again) == 1
    a, b = first[0], again[0]
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID", "SeriesNumber", "InstanceNumber"):
        assert a[keyword].value == b[keyword].value, keyword
    assert a.file_meta.MediaStorageSOPInstanceUID == a.SOPInstanceUID
    assert a.to_json() == b.to_json()
    assert encoded(a) == encoded(b)


def test_uids_follow_the_inputs(ct_series: Series) -> None:
    def seg(version: str, sources: list[Dataset]) -> Dataset:
        return SegmentationDeriver(MaskModel(threshold_mask, "m", version)).derive(sources)[0]

    base = seg("1", ct_series())
    other_model = seg("2", ct_series())
    fewer = seg("1", ct_series()[:3])
    (sc,) = SecondaryCaptureDeriver().derive(ct_series())
    uids = {ds.SOPInstanceUID for ds in (base, other_model, fewer, sc)}
    series = {ds.SeriesInstanceUID for ds in (base, other_model, fewer, sc)}
    assert len(uids) == len(series) == 4


def test_uid_prefix_and_content_datetime_are_injectable(ct_series: Series) -> None:
    import datetime as dt

    when = dt.datetime(2030, 1, 2, 3, 4, 5)
    (sc,) = SecondaryCaptureDeriver(uid_prefix="1.2.3.4.", content_datetime=when).derive(
        ct_series()
    )
    assert sc.SOPInstanceUID.startswith("1.2.3.4.")
    assert sc.SeriesInstanceUID.startswith("1.2.3.4.")
    assert (sc.ContentDate, sc.ContentTime) == ("20300102", "030405")
    assert (sc.DateOfSecondaryCapture, sc.InstanceCreationTime) == ("20300102", "030405")


def test_no_phi_in_logs(ct_series: Series, caplog: pytest.LogCaptureFixture) -> None:
    sources = ct_series()
    with caplog.at_level(logging.DEBUG, logger="dicom_lakehouse"):
        SecondaryCaptureDeriver().derive(sources)
        SegmentationDeriver(threshold_mask).derive(sources)
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("dicom_lakehouse")]
    assert ours
    for value in (sources[0].PatientName, sources[0].PatientID, sources[0].AccessionNumber):
        assert all(str(value) not in message for message in ours)


# --- an MLflow pyfunc model -------------------------------------------------------------


@pytest.fixture(scope="module")
def registered_model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A threshold segmenter logged to a SQLite tracking store and registered as version 1."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK", "true")
    import mlflow
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    class ThresholdSegmenter(mlflow.pyfunc.PythonModel):
        """Input float32 (frames, rows, columns); output a bool mask of the same shape."""

        def __init__(self, threshold: float) -> None:
            self.threshold = threshold

        # No type hints: MLflow would read them as an (unsupported) input schema.
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
            return np.asarray(model_input) > self.threshold

    root = tmp_path_factory.mktemp("mlflow")
    # tracking and registry URIs are put back as they were afterwards (unset, not pinned
    # to the default store: a pinned registry sent later tests' models to ./mlflow.db)
    with mlflow_store(f"sqlite:///{root}/mlflow.db"):
        experiment = mlflow.create_experiment(
            "derive", artifact_location=(root / "artifacts").as_uri()
        )
        signature = ModelSignature(
            inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, -1, -1))]),
            outputs=Schema([TensorSpec(np.dtype(np.bool_), (-1, -1, -1))]),
        )
        with mlflow.start_run(experiment_id=experiment) as run:
            info = mlflow.pyfunc.log_model(
                name="segmenter",
                python_model=ThresholdSegmenter(THRESHOLD),
                signature=signature,
                pip_requirements=[],
                registered_model_name="core-threshold",
            )
        mlflow.MlflowClient().set_registered_model_alias("core-threshold", "champion", "1")
        yield {"run_id": run.info.run_id, "model_id": info.model_id}


# MLflow's advice on input examples and its SQLAlchemy deprecations. (Its advice to add
# type hints to predict is issued where pytest's filters do not reach: one warning stays.)
MLFLOW_NOISE = pytest.mark.filterwarnings(
    "ignore:.*input_example:UserWarning", "ignore::DeprecationWarning"
)


@MLFLOW_NOISE
def test_seg_from_a_registered_mlflow_model(
    registered_model: dict[str, Any], ct_series: Series, dciodvfy: str, tmp_path: Path
) -> None:
    model = load_mask_model("models:/core-threshold/1")
    assert (model.name, model.version) == ("core-threshold", "1")
    assert model.run_id == registered_model["run_id"]
    assert model.model_id == registered_model["model_id"]
    assert model.uri == "models:/core-threshold/1"

    sources = ct_series()
    (seg,) = get_deriver("seg", model=model).derive(sources)
    uids, frames = expected_stack(sources)
    assert np.array_equal(segment_mask(seg, uids), frames > THRESHOLD)

    (algorithm,) = seg.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence
    assert (algorithm.AlgorithmName, algorithm.AlgorithmVersion) == ("core-threshold", "1")
    assert algorithm.AlgorithmSource == "models:/core-threshold/1"
    assert f"run_id={registered_model['run_id']}" in algorithm.AlgorithmParameters
    assert "model_uri=models:/core-threshold/1" in algorithm.AlgorithmParameters
    assert "model core-threshold 1" in seg.SoftwareVersions
    assert_valid(seg, dciodvfy, tmp_path / "mlflow_seg.dcm")

    # alias and latest resolve (and pin) to the same version: same model, same UIDs
    for uri in ("models:/core-threshold@champion", "models:/core-threshold/latest"):
        (again,) = get_deriver("seg", model_uri=uri).derive(sources)
        assert again.SOPInstanceUID == seg.SOPInstanceUID
        assert again.to_json() == seg.to_json()


@MLFLOW_NOISE
def test_a_named_store_wins_over_mlflow_process_state(
    registered_model: dict[str, Any], ct_series: Series, tmp_path: Path
) -> None:
    """What the executors do: the store is passed, whatever MLflow's globals point at."""
    import mlflow

    store = mlflow.get_tracking_uri()  # the fixture's store
    expected = get_deriver("seg", model_uri="models:/core-threshold/1").derive(ct_series())
    with mlflow_store(f"sqlite:///{tmp_path}/elsewhere.db"):
        with pytest.raises(DeriveError):
            load_mask_model("models:/core-threshold/1")  # not in that store
        model = load_mask_model("models:/core-threshold/1", tracking_uri=store)
        assert (model.name, model.version) == ("core-threshold", "1")
        assert model.run_id == registered_model["run_id"]
        assert model.model_id == registered_model["model_id"]
        assert model.uri == "models:/core-threshold/1"
        (seg,) = get_deriver(
            "seg", model_uri="models:/core-threshold/1", tracking_uri=store
        ).derive(ct_series())
    assert seg.SOPInstanceUID == expected[0].SOPInstanceUID
    assert mlflow.get_tracking_uri() == store


@MLFLOW_NOISE
def test_unregistered_mlflow_model_and_load_failures(registered_model: dict[str, Any]) -> None:
    by_run = load_mask_model(f"runs:/{registered_model['run_id']}/segmenter")
    assert by_run.name == "segmenter"
    assert by_run.version == registered_model["model_id"]
    by_id = load_mask_model(f"models:/{registered_model['model_id']}")
    assert by_id.version == registered_model["model_id"]
    assert by_id.identity == by_run.identity

    for uri in ("models:/no-such-model/1", "models:/core-threshold@nobody"):
        with pytest.raises(DeriveError) as info:
            load_mask_model(uri)
        assert info.value.reason == "model_load_failed"
