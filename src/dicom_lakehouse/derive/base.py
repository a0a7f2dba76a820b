"""The deriver interface and what every deriver shares: checking, sorting and decoding one
series, deterministic dates and UIDs, provenance.

A deriver turns the full datasets (pixels included) of ONE series into derived datasets
(a secondary capture, a segmentation, ...) that reference their sources, belong to the
sources' study and are encoded in Explicit VR Little Endian, the only encoding the Azure
DICOM service accepts. Given the same sources, a deriver returns the same datasets: UIDs,
numbers and dates derive from the inputs (see :mod:`dicom_lakehouse.derive.uids`).
"""

from __future__ import annotations

import datetime as dt
import io
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
from pydicom import Dataset, dcmread, dcmwrite
from pydicom.uid import UID, ExplicitVRLittleEndian
from pydicom.valuerep import DA, TM

from dicom_lakehouse import __version__
from dicom_lakehouse.derive.pixels import check_decodable, decode_frames, has_pixel_data
from dicom_lakehouse.derive.uids import DEFAULT_UID_PREFIX, DerivationKey
from dicom_lakehouse.errors import DeriveError

__all__ = [
    "EPOCH",
    "MANUFACTURER",
    "Deriver",
    "SourceSeries",
    "da_tm",
    "derived_datetime",
    "finalize",
    "load_series",
    "series_number",
    "software_versions",
    "sort_sources",
]

logger = logging.getLogger(__name__)

MANUFACTURER = "dicom_lakehouse"
"""Manufacturer (0008,0070) of every derived object."""

EPOCH = dt.datetime(1970, 1, 1)
"""Content date/time of a derived object whose sources carry no date at all."""

_MONOCHROME = ("MONOCHROME1", "MONOCHROME2")
_DATE_PAIRS = (
    ("SeriesDate", "SeriesTime"),
    ("AcquisitionDate", "AcquisitionTime"),
    ("ContentDate", "ContentTime"),
    ("StudyDate", "StudyTime"),
)


@runtime_checkable
class Deriver(Protocol):
    """Makes derived DICOM objects from the datasets of one series.

    ``name`` and ``version`` identify the algorithm: they go into the derived UIDs, so
    bump ``version`` whenever the output changes for the same input.
    """

    name: str
    version: str

    def derive(self, sources: Sequence[Dataset]) -> list[Dataset]:
        """Derived datasets for ``sources`` (one series, any order, pixels included)."""
        ...


@dataclass(frozen=True, slots=True)
class SourceSeries:
    """One checked series: its datasets in spatial order, and its frames.

    ``frame_refs[i]`` is ``(index into datasets, 1-based frame number)`` of frame ``i``;
    :meth:`pixels` decodes frames (only the instances asked for).
    """

    datasets: tuple[Dataset, ...]
    frame_refs: tuple[tuple[int, int], ...]

    @property
    def study_instance_uid(self) -> str:
        """The sources' StudyInstanceUID."""
        return str(self.datasets[0].StudyInstanceUID)

    @property
    def series_instance_uid(self) -> str:
        """The sources' SeriesInstanceUID."""
        return str(self.datasets[0].SeriesInstanceUID)

    @property
    def sop_instance_uids(self) -> tuple[str, ...]:
        """The sources' SOP Instance UIDs in spatial order."""
        return tuple(str(ds.SOPInstanceUID) for ds in self.datasets)

    @property
    def n_frames(self) -> int:
        """Frames in the series (instances times their Number of Frames)."""
        return len(self.frame_refs)

    def pixels(self, frames: Sequence[int] | None = None) -> np.ndarray:
        """Frames ``frames`` (default: all) as float32 ``(n, rows, columns)``, Modality LUT
        applied. Only the instances holding them are decoded. Raises ``invalid_pixels``."""
        wanted = range(self.n_frames) if frames is None else frames
        decoded: dict[int, np.ndarray] = {}
        out = []
        for frame in wanted:
            index, number = self.frame_refs[frame]
            if index not in decoded:
                decoded[index] = decode_frames(self.datasets[index], index)
            out.append(decoded[index][number - 1])
        return np.stack(out).astype(np.float32, copy=False)

    def key(self, deriver: str, deriver_version: str, model: str = "") -> DerivationKey:
        """The :class:`DerivationKey` of an object derived from this series."""
        return DerivationKey.of(
            self.series_instance_uid, self.sop_instance_uids, deriver, deriver_version, model
        )


def _floats(value: object, count: int) -> list[float] | None:
    try:
        numbers = [float(v) for v in value]  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return numbers if len(numbers) == count else None


def _position_along_normal(ds: Dataset, normal: np.ndarray | None) -> float | None:
    position = _floats(ds.get("ImagePositionPatient"), 3)
    if normal is None or position is None:
        return None
    return float(np.dot(np.asarray(position), normal))


def _normal(sources: Iterable[Dataset]) -> np.ndarray | None:
    for ds in sources:
        orientation = _floats(ds.get("ImageOrientationPatient"), 6)
        if orientation is not None:
            normal = np.cross(orientation[:3], orientation[3:])
            if np.linalg.norm(normal) > 0:
                return normal / np.linalg.norm(normal)
    return None


def _instance_number(ds: Dataset) -> int:
    try:
        return int(ds.get("InstanceNumber") or 0)
    except (TypeError, ValueError):
        return 0


def sort_sources(sources: Sequence[Dataset]) -> list[Dataset]:
    """``sources`` in spatial order: ImagePositionPatient along the slice normal (taken from
    the first ImageOrientationPatient), then InstanceNumber, then SOPInstanceUID.

    Datasets without a position sort after those with one, by InstanceNumber.
    """
    normal = _normal(sources)

    def key(ds: Dataset) -> tuple[int, float, int, str]:
        position = _position_along_normal(ds, normal)
        return (
            0 if position is not None else 1,
            position or 0.0,
            _instance_number(ds),
            str(ds.get("SOPInstanceUID", "")),
        )

    return sorted(sources, key=key)


def _check_sources(sources: Sequence[Dataset]) -> None:
    """Raise :class:`DeriveError` unless ``sources`` are monochrome images of one series."""
    if not sources:
        raise DeriveError("empty_series", "no source datasets")
    for i, ds in enumerate(sources):
        missing = [
            k
            for k in ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")
            if not str(ds.get(k) or "").strip()
        ]
        if missing:
            raise DeriveError("missing_uids", f"source #{i} lacks {missing}")
    series = {str(ds.SeriesInstanceUID) for ds in sources}
    studies = {str(ds.StudyInstanceUID) for ds in sources}
    if len(series) > 1 or len(studies) > 1:
        raise DeriveError(
            "mixed_series",
            f"sources come from {len(series)} series in {len(studies)} studies; "
            "pass one series at a time",
        )
    if len({str(ds.SOPInstanceUID) for ds in sources}) != len(sources):
        raise DeriveError("duplicate_instances", "a SOPInstanceUID occurs more than once")
    for i, ds in enumerate(sources):
        if not has_pixel_data(ds):
            sop_class = UID(str(ds.SOPClassUID))
            raise DeriveError(
                "not_an_image", f"source #{i} ({sop_class.name}) has no pixel data or size"
            )
        samples = int(ds.get("SamplesPerPixel") or 1)
        photometric = str(ds.get("PhotometricInterpretation") or "")
        if samples != 1 or photometric not in _MONOCHROME:
            raise DeriveError(
                "unsupported_pixels",
                f"source #{i} is {photometric or 'unknown'} with {samples} samples per "
                "pixel; only MONOCHROME1/2 images are supported",
            )
    sizes = sorted({(int(ds.Rows), int(ds.Columns)) for ds in sources})
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c}" for r, c in sizes)
        raise DeriveError(
            "mixed_geometry", f"sources have different sizes (rows x columns: {shown})"
        )
    if len(sources) > 1 and any(int(ds.get("NumberOfFrames") or 1) > 1 for ds in sources):
        raise DeriveError(
            "unsupported_series",
            "a series of several multi-frame instances is not supported; pass one "
            "multi-frame instance or single-frame instances",
        )
    for i, ds in enumerate(sources):
        check_decodable(ds, i)


def load_series(sources: Sequence[Dataset]) -> SourceSeries:
    """Check and sort (:func:`sort_sources`) one series; pixels decode on demand.

    Raises :class:`DeriveError`: ``empty_series``, ``missing_uids``, ``mixed_series``,
    ``duplicate_instances``, ``not_an_image``, ``unsupported_pixels``,
    ``mixed_geometry``, ``unsupported_series``, ``undecodable_pixels`` (every source's
    transfer syntax is checked here, before any decoding).
    """
    _check_sources(sources)
    datasets = tuple(sort_sources(sources))
    refs = tuple(
        (i, number)
        for i, ds in enumerate(datasets)
        for number in range(1, int(ds.get("NumberOfFrames") or 1) + 1)
    )
    return SourceSeries(datasets, refs)


def _parse_datetime(ds: Dataset, date_kw: str, time_kw: str) -> dt.datetime | None:
    date_value = str(ds.get(date_kw) or "").strip()
    if not date_value:
        return None
    try:
        date = DA(date_value)
        time_value = str(ds.get(time_kw) or "").strip()
        time = TM(time_value) if time_value else None
    except ValueError:
        return None
    if not isinstance(date, dt.date):
        return None
    clock = time if isinstance(time, dt.time) else dt.time()
    return dt.datetime.combine(date, clock.replace(tzinfo=None))


def derived_datetime(
    sources: Sequence[Dataset], override: dt.datetime | None = None
) -> dt.datetime:
    """The content date/time of an object derived from ``sources`` (sorted).

    ``override`` when given; else the first of Series, Acquisition, Content and Study
    Date/Time that the first source with it carries; else :data:`EPOCH`. Taking it
    from the sources keeps re-runs identical.
    """
    if override is not None:
        return override.replace(tzinfo=None)
    for date_kw, time_kw in _DATE_PAIRS:
        for ds in sources:
            found = _parse_datetime(ds, date_kw, time_kw)
            if found is not None:
                return found
    logger.info("sources carry no date; derived content date set to %s", EPOCH.date())
    return EPOCH


def series_number(sources: Sequence[Dataset], offset: int) -> int:
    """SeriesNumber of the derived series: the source's SeriesNumber plus ``offset``."""
    try:
        number = int(sources[0].get("SeriesNumber") or 0)
    except (TypeError, ValueError):
        number = 0
    return max(1, min(number + offset, 2**31 - 1))


def software_versions(deriver: str, deriver_version: str) -> list[str]:
    """SoftwareVersions (0018,1020): the package and the deriver, with their versions."""
    return [f"{MANUFACTURER} {__version__}", f"{deriver} {deriver_version}"]


def da_tm(when: dt.datetime) -> tuple[str, str]:
    """``when`` as DICOM DA and TM strings (microseconds kept when not zero)."""
    time = when.strftime("%H%M%S") + (f".{when.microsecond:06d}" if when.microsecond else "")
    return when.strftime("%Y%m%d"), time


def finalize(
    ds: Dataset, when: dt.datetime, key: DerivationKey, prefix: str = DEFAULT_UID_PREFIX
) -> Dataset:
    """The derived dataset as it will be stored: deterministic and Explicit VR Little Endian.

    Replaces the clock readings and random UIDs highdicom puts in ``ds``: instance
    creation, secondary capture and contribution date/times become ``when``, a Dimension
    Organization UID becomes one derived from ``key``. Then writes the dataset as a
    Part 10 file (``enforce_file_format=True``) and reads it back, so the result is a
    plain pydicom Dataset with string values that encodes exactly as checked here.
    Raises :class:`DeriveError` ``encoding_failed``.
    """
    date, time = da_tm(when)
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    if "DateOfSecondaryCapture" in ds:
        ds.DateOfSecondaryCapture, ds.TimeOfSecondaryCapture = date, time
    for item in ds.get("ContributingEquipmentSequence") or ():
        if "ContributionDateTime" in item:
            item.ContributionDateTime = date + time
    dimension_uid = key.uid("dimension-organization", prefix)
    for keyword in ("DimensionOrganizationSequence", "DimensionIndexSequence"):
        for item in ds.get(keyword) or ():
            if "DimensionOrganizationUID" in item:
                item.DimensionOrganizationUID = dimension_uid
    syntax = ds.file_meta.get("TransferSyntaxUID")
    if syntax != ExplicitVRLittleEndian:
        raise DeriveError(
            "encoding_failed", f"derived dataset is {syntax}, not Explicit VR Little Endian"
        )
    buffer = io.BytesIO()
    try:
        dcmwrite(buffer, ds, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise DeriveError(
            "encoding_failed", f"derived dataset cannot be encoded ({type(exc).__name__})"
        ) from exc
    buffer.seek(0)
    return dcmread(buffer)
