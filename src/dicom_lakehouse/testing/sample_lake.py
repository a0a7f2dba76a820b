"""Sample DICOM service lakes on local disk, with a manifest of what each file should become.

:func:`build_sample_lake` writes a small lake covering every case the ingest must handle
(generated CT/MR studies, pydicom's bundled files, a bulk update, the legacy layout, service
files, user-added files and broken instances). :func:`build_ct_lake` writes realistic CT files
with full-size pixel data for benchmarks, and :func:`build_listing_lake` writes many tiny
files for listing benchmarks. Each returns a :class:`SampleLake` whose ``files`` say, per
file, the expected kind, partition, watermark, UIDs and quarantine reason.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import random
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom import Dataset, FileMetaDataset
from pydicom.data import get_charset_files, get_testdata_file
from pydicom.filewriter import dcmwrite
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    CTImageStorage,
    ExplicitVRLittleEndian,
    MRImageStorage,
    generate_uid,
)

from dicom_lakehouse.lake.layout import (
    DEFAULT_PARTITION,
    FileKind,
    instance_file_name,
    is_valid_partition_name,
    name_prefix,
    service_root,
)

__all__ = [
    "BUNDLED_CHARSET_FILES",
    "BUNDLED_TEST_FILES",
    "MICROSOFT_IMPLEMENTATION_CLASS_UID",
    "SampleFile",
    "SampleLake",
    "build_ct_lake",
    "build_listing_lake",
    "build_sample_lake",
]

logger = logging.getLogger(__name__)

MICROSOFT_IMPLEMENTATION_CLASS_UID = "1.3.6.1.4.1.311.129"
"""File meta (0002,0012) of files the DICOM service rewrote in a bulk update."""

# Spread over the partitions by position (i % n): MR_small and MR_small_implicit hold the
# same UIDs, so they sit at an odd and an even index to land in different partitions.
BUNDLED_TEST_FILES: tuple[str, ...] = (
    "CT_small.dcm",
    "MR_small.dcm",
    "MR_small_implicit.dcm",
    "rtplan.dcm",
    "rtstruct.dcm",
    "waveform_ecg.dcm",
    "examples_overlay.dcm",
    "nested_priv_SQ.dcm",
    "ExplVR_BigEnd.dcm",
    "no_meta.dcm",
    "JPEG2000.dcm",
    "liver_1frame.dcm",
)
"""pydicom test files copied into :func:`build_sample_lake` lakes (when bundled)."""

BUNDLED_CHARSET_FILES: tuple[str, ...] = (
    "chrH31.dcm",
    "chrX1.dcm",
    "chrArab.dcm",
    "chrSQEncoding.dcm",
)
"""pydicom character-set files copied in after :data:`BUNDLED_TEST_FILES`."""

_UID_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
_SOP_CLASS = {"CT": CTImageStorage, "MR": MRImageStorage}
_VERSION_NAME = "DLH_SAMPLE_1"
_PATIENTS = (  # (PatientName, PatientSex); index 1 is written as ISO_IR 192
    ("Nuñez^Inés", "F"),
    ("Müller^Jürgen", "M"),
    ("Smith^John", "M"),
    ("Lefèvre^Chloé", "F"),
    ("Okafor^Ada", "F"),
    ("Kowalski^Piotr", "M"),
    ("Andersson^Greta", "F"),
    ("Tanaka^Kenji", "M"),
)
_PROTOCOLS = {  # (modality, body part) -> (study description, series descriptions)
    ("CT", "CHEST"): ("CT THORAX W/O CONTRAST", ("AX LUNG 1.25mm", "AX MEDIASTINUM 5.0mm")),
    ("CT", "ABDOMEN"): ("CT ABDOMEN PELVIS W CONTRAST", ("AX VENOUS 1.25mm", "COR 5.0mm")),
    ("MR", "BRAIN"): ("MR BRAIN W/O CONTRAST", ("AX T1", "AX T2 FLAIR")),
    ("MR", "KNEE"): ("MR KNEE LEFT", ("SAG PD FS", "COR T2")),
}
_UTF8_DESCRIPTION = "MRT Schädel nativ"


@dataclass(frozen=True, slots=True)
class SampleFile:
    """One file of a sample lake and what the ingest should make of it.

    ``path`` is relative to the container root (``AHDS/...``, ``/``-separated).
    ``partition_name`` and ``watermark`` are set for instance files only, the UIDs for
    readable instances only; ``expected_reason`` is the quarantine reason of an instance
    file that cannot be ingested. ``is_current`` is False for a superseded version.
    ``source`` says where the content came from (``generated``, ``testdata:CT_small.dcm``...).
    """

    path: str
    kind: FileKind
    partition_name: str | None = None
    watermark: int | None = None
    expected_reason: str | None = None
    study_instance_uid: str | None = None
    series_instance_uid: str | None = None
    sop_instance_uid: str | None = None
    is_current: bool = True
    source: str = ""


@dataclass(frozen=True, slots=True)
class SampleLake:
    """A lake written under ``root`` (the container root) with its manifest."""

    root: Path
    workspace: str
    service: str
    files: tuple[SampleFile, ...]

    @property
    def service_dir(self) -> Path:
        """The service folder on disk."""
        return self.root / service_root(self.workspace, self.service)

    def local_path(self, file: SampleFile) -> Path:
        """Where ``file`` is on disk."""
        return self.root / file.path

    @property
    def instances(self) -> tuple[SampleFile, ...]:
        """Instance files expected in bronze_instances (every version, not only current)."""
        return tuple(f for f in self.files if f.kind == FileKind.INSTANCE and not f.expected_reason)

    @property
    def quarantined(self) -> tuple[SampleFile, ...]:
        """Instance files expected in quarantine; each has an ``expected_reason``."""
        return tuple(f for f in self.files if f.kind == FileKind.INSTANCE and f.expected_reason)

    @property
    def ignored(self) -> tuple[SampleFile, ...]:
        """Service files (health checks, metadata JSON) the walker must skip."""
        return tuple(f for f in self.files if f.kind == FileKind.IGNORED)

    @property
    def foreign(self) -> tuple[SampleFile, ...]:
        """User-added files that do not match the instance pattern."""
        return tuple(f for f in self.files if f.kind == FileKind.FOREIGN)

    @property
    def current_instances(self) -> tuple[SampleFile, ...]:
        """One file per (partition, SOP Instance UID): the one with the highest watermark."""
        return tuple(f for f in self.instances if f.is_current)

    def counts(self) -> dict[str, int]:
        """The counts a first ingest of the whole lake must report."""
        return {
            "files_listed": len(self.files),
            "files_ingested": len(self.instances),
            "files_quarantined": len(self.quarantined),
            "files_ignored": len(self.ignored),
            "files_foreign": len(self.foreign),
        }


# --- datasets ---------------------------------------------------------------------------


def _uid(seed: int, *parts: object) -> str:
    return generate_uid(entropy_srcs=["dicom_lakehouse.sample", str(seed), *map(str, parts)])


def _ds_text(value: float) -> str:
    """A decimal string (DS) of at most 16 characters."""
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("", "-0") else text


def _age(birth: dt.date, on: dt.date) -> int:
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _study_attrs(
    rng: random.Random, seed: int, index: int, modality: str | None = None
) -> dict[str, Any]:
    """Patient and study attributes of generated study ``index`` (CT and MR alternate).

    Patient 0 (and every 4th study) is a woman aged 51-69 with a CT chest, so cohort
    queries have matches; patient 1 is written in ISO_IR 192.
    """
    patient = index % len(_PATIENTS)
    name, sex = _PATIENTS[patient]
    modality = modality or ("CT" if index % 2 == 0 else "MR")
    body_part = (("CHEST", "ABDOMEN") if modality == "CT" else ("BRAIN", "KNEE"))[index // 2 % 2]
    description, _ = _PROTOCOLS[modality, body_part]
    # Birth dates depend only on the patient, so a patient's studies agree.
    born = random.Random(f"{seed}:{patient}")
    birth_year = born.randint(1955, 1971) if sex == "F" else born.randint(1935, 2005)
    birth = dt.date(birth_year, 1, 1) + dt.timedelta(days=born.randint(0, 364))
    study_date = dt.date(2023, 1, 1) + dt.timedelta(days=rng.randint(0, 729))
    utf8 = patient == 1
    return {
        "SpecificCharacterSet": "ISO_IR 192" if utf8 else "ISO_IR 100",
        "PatientName": name,
        "PatientID": f"PID{seed % 1000:03d}{patient:05d}",
        "PatientSex": sex,
        "PatientBirthDate": birth.strftime("%Y%m%d"),
        "PatientAge": f"{_age(birth, study_date):03d}Y",
        "StudyInstanceUID": _uid(seed, "study", modality, index),
        "StudyDate": study_date.strftime("%Y%m%d"),
        "StudyTime": f"{rng.randint(7, 18):02d}{rng.randint(0, 59):02d}{rng.randint(0, 59):02d}",
        "StudyDescription": _UTF8_DESCRIPTION if utf8 else description,
        "StudyID": str(index + 1),
        "AccessionNumber": f"A{seed % 1000:03d}{index:07d}",
        "ReferringPhysicianName": ("House^Gregory", "Grey^Meredith", "Quinn^Michaela")[index % 3],
        "Modality": modality,
        "BodyPartExamined": body_part,
        "Manufacturer": "SIEMENS" if modality == "CT" else "Philips Medical Systems",
        "InstitutionName": "Sample General Hospital",
    }


def _series_attrs(study: Mapping[str, Any], seed: int, index: int) -> dict[str, Any]:
    """``study`` plus series ``index`` (0-based): even series are 1.25 mm, odd 5.0 mm."""
    modality = study["Modality"]
    _, names = _PROTOCOLS[modality, study["BodyPartExamined"]]
    attrs = {
        **study,
        "SeriesInstanceUID": _uid(seed, "series", study["StudyInstanceUID"], index),
        "SeriesNumber": index + 1,
        "SeriesDescription": names[index % len(names)],
        "SliceThickness": "1.25" if index % 2 == 0 else "5.0",
        "PixelSpacing": ["0.703125", "0.703125"] if modality == "CT" else ["0.9375", "0.9375"],
    }
    if modality == "CT":
        attrs |= {"KVP": "120", "ConvolutionKernel": "B30f"}
    else:
        attrs |= {"MagneticFieldStrength": "1.5", "RepetitionTime": "500", "EchoTime": "15"}
    return attrs


def _image_dataset(
    attrs: Mapping[str, Any],
    number: int,
    sop_uid: str | None,
    rows: int,
    columns: int,
    pixels: bytes,
    implementation_uid: str = PYDICOM_IMPLEMENTATION_UID,
) -> Dataset:
    """A CT/MR image (16-bit allocated, 12 stored) from series ``attrs``; no SOP UIDs if
    ``sop_uid`` is None (then the file meta carries no media-storage UIDs either)."""
    ds = Dataset()
    for keyword, value in attrs.items():
        setattr(ds, keyword, value)
    sop_class = _SOP_CLASS[attrs["Modality"]]
    spacing = float(attrs["PixelSpacing"][0])
    z = -(number - 1) * float(attrs["SliceThickness"])
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = number
    ds.ImagePositionPatient = [
        _ds_text(-spacing * columns / 2),
        _ds_text(-spacing * rows / 2),
        _ds_text(z),
    ]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.SliceLocation = _ds_text(z)
    if "SeriesInstanceUID" in attrs:
        ds.FrameOfReferenceUID = _uid(0, "frame", attrs["SeriesInstanceUID"])
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.WindowCenter, ds.WindowWidth = "40", "400"
    ds.add_new(0x7FE00010, "OW", pixels)
    meta = FileMetaDataset()
    meta.FileMetaInformationGroupLength = 0  # pydicom fills in the real length
    meta.FileMetaInformationVersion = b"\x00\x01"
    if sop_uid is not None:
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
        meta.MediaStorageSOPClassUID = sop_class
        meta.MediaStorageSOPInstanceUID = UID(sop_uid)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = UID(implementation_uid)
    meta.ImplementationVersionName = _VERSION_NAME
    ds.file_meta = meta
    ds.preamble = bytes(128)
    return ds


def _encode(ds: Dataset) -> bytes:
    """Part 10 bytes: zeroed preamble, ``DICM``, file meta, then the dataset."""
    buffer = io.BytesIO()
    # enforce_file_format requires media-storage UIDs; the no-UID sample has none.
    dcmwrite(buffer, ds, enforce_file_format="MediaStorageSOPInstanceUID" in ds.file_meta)
    return buffer.getvalue()


@cache
def _phantom(rows: int, columns: int) -> np.ndarray:
    """A disc phantom in the 12-bit range (body ~1000, air ~0)."""
    y, x = np.ogrid[:rows, :columns]
    r2 = ((y - rows / 2) / (rows / 2)) ** 2 + ((x - columns / 2) / (columns / 2)) ** 2
    image = np.where(r2 < 0.8, 1000, 24).astype(np.uint16)
    image[r2 < 0.05] = 1800  # a bright core
    image.setflags(write=False)
    return image


def _pixels(np_rng: np.random.Generator, rows: int, columns: int) -> bytes:
    noise = np_rng.integers(0, 64, size=(rows, columns), dtype=np.uint16)
    return (_phantom(rows, columns) + noise).astype("<u2").tobytes()


# --- writing ----------------------------------------------------------------------------


class _Writer:
    """Writes files below the service folder, assigning service-wide watermarks."""

    def __init__(self, root: Path, workspace: str, service: str) -> None:
        self.root = Path(root)
        self.workspace, self.service = workspace, service
        self.base = service_root(workspace, service)
        self.service_dir = self.root / self.base
        if self.service_dir.exists() and any(self.service_dir.iterdir()):
            raise FileExistsError(f"{self.service_dir} is not empty")
        self.files: list[SampleFile] = []
        self.watermark = 0
        self._dirs: set[Path] = set()

    def write(
        self, parts: Sequence[str], data: bytes, kind: FileKind, source: str, **fields: Any
    ) -> SampleFile:
        path = self.service_dir.joinpath(*parts)
        if path.parent not in self._dirs:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._dirs.add(path.parent)
        path.write_bytes(data)
        sample = SampleFile(f"{self.base}/{'/'.join(parts)}", kind, source=source, **fields)
        self.files.append(sample)
        return sample

    def instance(
        self,
        folder: tuple[str, ...],
        data: bytes,
        source: str,
        *,
        uids: tuple[str, str, str] | None = None,
        reason: str | None = None,
        legacy: bool = False,
    ) -> SampleFile:
        """Write an instance file in ``folder`` (``()``: the service folder itself)."""
        self.watermark += 1
        study, series, sop = uids or (None, None, None)
        parts = (*folder, instance_file_name(self.watermark))
        if legacy:
            parts = (*folder, str(study), str(series), f"{sop}_{self.watermark}.dcm")
        return self.write(
            parts,
            data,
            FileKind.INSTANCE,
            source,
            partition_name=folder[0] if folder else DEFAULT_PARTITION,
            watermark=self.watermark,
            expected_reason=reason,
            study_instance_uid=study,
            series_instance_uid=series,
            sop_instance_uid=sop,
        )

    def lake(self) -> SampleLake:
        """The manifest, with ``is_current`` False for superseded versions."""
        newest: dict[tuple[str | None, str], int] = {}
        for f in self.files:
            if f.kind == FileKind.INSTANCE and f.sop_instance_uid and f.watermark:
                key = (f.partition_name, f.sop_instance_uid)
                newest[key] = max(newest.get(key, 0), f.watermark)
        files = tuple(
            replace(f, is_current=False)
            if f.sop_instance_uid and newest[f.partition_name, f.sop_instance_uid] != f.watermark
            else f
            for f in self.files
        )
        return SampleLake(self.root, self.workspace, self.service, files)


def _partition_folders(partitions: Sequence[str], partitioned: bool) -> list[tuple[str, ...]]:
    if not partitioned:
        return [()]
    if not partitions:
        raise ValueError("partitions must not be empty")
    for name in partitions:
        if not is_valid_partition_name(name):
            raise ValueError(f"invalid partition name: {name!r}")
    if len(set(partitions)) != len(partitions):
        raise ValueError("partition names must be unique")
    return [(name,) for name in partitions]


def _triple(attrs: Mapping[str, Any], sop: str) -> tuple[str, str, str]:
    return attrs["StudyInstanceUID"], attrs["SeriesInstanceUID"], sop


def _uids_of(path: Path) -> tuple[str, str, str] | None:
    """Study, Series and SOP Instance UIDs as pydicom reads them, or None if any is missing."""
    ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    study, series, sop = (str(ds.get(keyword) or "") for keyword in _UID_KEYWORDS)
    return (study, series, sop) if study and series and sop else None


def _unreadable_reason(path: Path) -> str:
    """The quarantine reason for a file without all three UIDs: a file with no
    ``DICM`` prefix and no UID at all reads as junk (``not_dicom``)."""
    data = path.read_bytes()
    if data[128:132] != b"DICM":
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
        if not any(ds.get(keyword) for keyword in _UID_KEYWORDS):
            return "not_dicom"
    return "missing_uids"


def _bundled_files() -> Iterable[tuple[str, Path]]:
    for name in BUNDLED_TEST_FILES:
        found = get_testdata_file(name, download=False)
        if found is not None:
            yield f"testdata:{name}", Path(str(found))
        else:
            logger.warning("pydicom test file %s is not bundled; skipped", name)
    for name in BUNDLED_CHARSET_FILES:
        matches = get_charset_files(name)
        if matches:
            yield f"charset:{name}", Path(matches[0])
        else:
            logger.warning("pydicom charset file %s is not bundled; skipped", name)


def _service_files(w: _Writer, folder: tuple[str, ...], watermark: int, sop: str | None) -> None:
    guid = uuid.UUID(int=random.Random(f"health:{watermark}").getrandbits(128), version=4)
    for name in (f"health{guid}.txt", "health.txt"):
        w.write(("healthCheck", name), b"healthy\n", FileKind.IGNORED, "service")
    stem = instance_file_name(watermark).removesuffix(".dcm")
    metadata = json.dumps({"00080018": {"vr": "UI", "Value": [sop]}}).encode()
    frames = json.dumps({"1": {"offset": 0, "length": 0}}).encode()
    w.write((*folder, f"{stem}_metadata.json"), metadata, FileKind.IGNORED, "service")
    w.write((*folder, f"{stem}_frames_range.json"), frames, FileKind.IGNORED, "service")
    spaced = f"{name_prefix(watermark)}_ {watermark}_frames_range.json"
    w.write((*folder, spaced), frames, FileKind.IGNORED, "service")


def build_sample_lake(
    root: str | Path,
    *,
    workspace: str = "ws1",
    service: str = "svc1",
    partitions: Sequence[str] = (DEFAULT_PARTITION, "research"),
    partitioned: bool = True,
    studies_per_partition: int = 2,
    series_per_study: int = 2,
    instances_per_series: int = 3,
    image_size: int = 32,
    include_testdata: bool = True,
    include_service_files: bool = True,
    include_broken: bool = True,
    include_legacy: bool = True,
    include_update: bool = True,
    seed: int = 0,
) -> SampleLake:
    """Write a small lake with every case the ingest handles under ``root`` (container root).

    Watermarks run from 1 across the whole service in write order: generated studies,
    bundled files, broken files, the legacy series, then the bulk update. With
    ``partitioned=False`` instance files sit directly under the service folder and belong
    to ``Microsoft.Default``; ``partitions`` is then unused. The same arguments always
    give the same bytes. Raises FileExistsError if the service folder is not empty.
    """
    if min(studies_per_partition, series_per_study, instances_per_series) < 0 or image_size < 1:
        raise ValueError("counts must be >= 0 and image_size >= 1")
    w = _Writer(Path(root), workspace, service)
    folders = _partition_folders(partitions, partitioned)
    rng, np_rng = random.Random(seed), np.random.default_rng(seed)
    size = image_size
    first: tuple[tuple[str, ...], dict[str, Any], str, bytes, bytes] | None = None  # to update

    study_index = 0
    for folder in folders:
        for _ in range(studies_per_partition):
            study = _study_attrs(rng, seed, study_index)
            study_index += 1
            for series_index in range(series_per_study):
                attrs = _series_attrs(study, seed, series_index)
                for number in range(1, instances_per_series + 1):
                    sop = _uid(seed, "sop", attrs["SeriesInstanceUID"], number)
                    pixels = _pixels(np_rng, size, size)
                    data = _encode(_image_dataset(attrs, number, sop, size, size, pixels))
                    w.instance(folder, data, "generated", uids=_triple(attrs, sop))
                    if first is None:
                        first = (folder, attrs, sop, pixels, data)

    if include_testdata:
        for i, (source, path) in enumerate(_bundled_files()):
            found = _uids_of(path)
            reason = None if found else _unreadable_reason(path)
            w.instance(
                folders[i % len(folders)], path.read_bytes(), source, uids=found, reason=reason
            )

    if include_broken:
        attrs = _series_attrs(_study_attrs(random.Random(seed), seed, 10_000, "CT"), seed, 0)
        pixels = _pixels(np_rng, size, size)
        marker = "TRUNCATED SAMPLE HEADER"
        sop = _uid(seed, "broken", 1)
        whole = _encode(
            _image_dataset({**attrs, "StudyDescription": marker}, 1, sop, size, size, pixels)
        )
        cut = whole.index(marker.encode()) + len(marker) // 2  # mid-value, far from Pixel Data
        no_uids = {k: v for k, v in attrs.items() if k not in _UID_KEYWORDS}
        for data, reason in (
            (b"", "empty_file"),
            (b"This is not a DICOM file.\nIt only has a service-style name.\n", "not_dicom"),
            (whole[:cut], "truncated_header"),
            (_encode(_image_dataset(no_uids, 1, None, size, size, pixels)), "missing_uids"),
        ):
            w.instance(folders[0], data, f"broken:{reason}", reason=reason)

    if include_legacy:
        folder = folders[min(1, len(folders) - 1)]
        attrs = _series_attrs(_study_attrs(random.Random(seed + 1), seed, 20_000, "MR"), seed, 0)
        for number in (1, 2):
            sop = _uid(seed, "legacy", number)
            pixels = _pixels(np_rng, size, size)
            data = _encode(_image_dataset(attrs, number, sop, size, size, pixels))
            w.instance(folder, data, "legacy", uids=_triple(attrs, sop), legacy=True)

    if include_update and first is not None:
        folder, attrs, sop, pixels, _ = first
        updated = {**attrs, "StudyDescription": f"{attrs['StudyDescription']} (updated)"}
        ds = _image_dataset(updated, 1, sop, size, size, pixels, MICROSOFT_IMPLEMENTATION_CLASS_UID)
        data = _encode(ds)
        w.instance(folder, data, "update", uids=_triple(attrs, sop))

    if include_service_files:
        target = next((f for f in w.files if f.kind == FileKind.INSTANCE), None)
        if target is not None and target.watermark is not None:
            folder = () if not partitioned else (str(target.partition_name),)
            _service_files(w, folder, target.watermark, target.sop_instance_uid)

    # User-added files; the .dcm ones hold valid DICOM, so only the name makes them foreign.
    example = first[4] if first is not None else b"DICM"
    deep = (*(*folders[0], "exports", "2024", "01", "batch1")[:4], "scan_0001.dcm")  # depth 5
    for parts, data in (
        ((*folders[0], "README.txt"), b"Files our team copied in by hand.\n"),
        ((*folders[0], "notes.dcm"), example),
        (deep, example),
    ):
        w.write(parts, data, FileKind.FOREIGN, "foreign")
    lake = w.lake()
    logger.info("sample lake written: %s", lake.counts())
    return lake


def build_ct_lake(
    root: str | Path,
    *,
    n_instances: int = 2000,
    rows: int = 512,
    columns: int = 512,
    instances_per_series: int = 200,
    partitions: Sequence[str] = (DEFAULT_PARTITION,),
    workspace: str = "ws1",
    service: str = "svc1",
    seed: int = 0,
) -> SampleLake:
    """Write ``n_instances`` CT images with full-size 16-bit pixel data, for benchmarks.

    Studies have two series of ``instances_per_series`` images; studies go round-robin
    over ``partitions``. All files share one pixel buffer, so writing is I/O bound.
    """
    if n_instances < 0 or instances_per_series < 1 or rows < 1 or columns < 1:
        raise ValueError("n_instances must be >= 0, the other sizes >= 1")
    w = _Writer(Path(root), workspace, service)
    folders = _partition_folders(partitions, True)
    rng = random.Random(seed)
    pixels = _pixels(np.random.default_rng(seed), rows, columns)
    series_count = -(-n_instances // instances_per_series)
    written = 0
    for series_index in range(series_count):
        study_index = series_index // 2
        if series_index % 2 == 0:
            study = _study_attrs(rng, seed, study_index * 2, "CT")  # even index: CT patients
        attrs = _series_attrs(study, seed, series_index % 2)
        folder = folders[study_index % len(folders)]
        for number in range(1, min(instances_per_series, n_instances - written) + 1):
            sop = _uid(seed, "sop", attrs["SeriesInstanceUID"], number)
            data = _encode(_image_dataset(attrs, number, sop, rows, columns, pixels))
            w.instance(folder, data, "generated", uids=_triple(attrs, sop))
            written += 1
    return w.lake()


def build_listing_lake(
    root: str | Path,
    n_files: int,
    *,
    partitions: Sequence[str] = (DEFAULT_PARTITION,),
    workspace: str = "ws1",
    service: str = "svc1",
    content: bytes = b"listing\n",
) -> SampleLake:
    """Write ``n_files`` tiny files with service instance names, for listing benchmarks.

    Files go round-robin over ``partitions`` with watermarks 1..n. The content is not
    DICOM, so an ingest would quarantine them (``expected_reason`` is ``not_dicom``).
    """
    if n_files < 0:
        raise ValueError("n_files must be >= 0")
    w = _Writer(Path(root), workspace, service)
    folders = _partition_folders(partitions, True)
    for i in range(n_files):
        w.instance(folders[i % len(folders)], content, "listing", reason="not_dicom")
    return w.lake()
