"""``sc``: one Secondary Capture per series, a montage of up to nine frames (no model).

The frames are picked evenly over the sorted series (all of them when there are at most
``max_frames``; ``max_frames=1`` gives the middle frame), windowed to 8-bit MONOCHROME2
with the source's first Window Center/Width (else each montage's minimum..maximum) and
laid out row by row on a near-square grid at full resolution, black where tiles are
missing. The image lists the instances (and, for a multi-frame source, the frame
numbers) it shows in SourceImageSequence.
"""

from __future__ import annotations

import datetime as dt
import logging
import math
from collections.abc import Sequence

import highdicom as hd
import numpy as np
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import ExplicitVRLittleEndian

from dicom_lakehouse.derive.base import (
    MANUFACTURER,
    SourceSeries,
    da_tm,
    derived_datetime,
    finalize,
    load_series,
    series_number,
    software_versions,
)
from dicom_lakehouse.derive.pixels import display_window, to_uint8
from dicom_lakehouse.derive.uids import DEFAULT_UID_PREFIX
from dicom_lakehouse.errors import DeriveError

__all__ = ["SecondaryCaptureDeriver", "montage_frames", "patient_orientation"]

logger = logging.getLogger(__name__)

_AXIS_LETTERS = (("L", "R"), ("P", "A"), ("H", "F"))  # +x, -x / +y, -y / +z, -z (LPS)


def montage_frames(n_frames: int, max_frames: int) -> list[int]:
    """Indices of the frames a montage shows: all, or ``max_frames`` spread evenly (the
    centre of each of ``max_frames`` equal parts; one frame gives the middle one)."""
    if n_frames <= max_frames:
        return list(range(n_frames))
    return [((2 * i + 1) * n_frames) // (2 * max_frames) for i in range(max_frames)]


def _letter(direction: Sequence[float]) -> str:
    axis = int(np.argmax(np.abs(direction)))
    return _AXIS_LETTERS[axis][0 if direction[axis] > 0 else 1]


def patient_orientation(ds: Dataset) -> tuple[str, str] | None:
    """Patient Orientation (row, column direction) from ImageOrientationPatient: the
    dominant axis of each direction as one letter (``L``/``R``, ``P``/``A``, ``H``/``F``)."""
    try:
        values = [float(v) for v in ds.get("ImageOrientationPatient") or ()]
    except (TypeError, ValueError):
        return None
    if len(values) != 6 or not any(values[:3]) or not any(values[3:]):
        return None
    return _letter(values[:3]), _letter(values[3:])


def _montage(tiles: np.ndarray) -> np.ndarray:
    count, rows, columns = tiles.shape
    grid_columns = math.ceil(math.sqrt(count))
    grid_rows = math.ceil(count / grid_columns)
    canvas = np.zeros((grid_rows * rows, grid_columns * columns), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, grid_columns)
        canvas[r * rows : (r + 1) * rows, c * columns : (c + 1) * columns] = tile
    return canvas


def _source_image_sequence(series: SourceSeries, shown: Sequence[int]) -> list[Dataset]:
    purpose = hd.sr.CodedConcept.from_code(codes.DCM.SourceImageForImageProcessingOperation)
    by_source: dict[int, list[int]] = {}
    for frame in shown:
        index, number = series.frame_refs[frame]
        by_source.setdefault(index, []).append(number)
    items = []
    for index, numbers in by_source.items():
        source = series.datasets[index]
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        if int(source.get("NumberOfFrames") or 1) > 1:
            item.ReferencedFrameNumber = numbers if len(numbers) > 1 else numbers[0]
        item.PurposeOfReferenceCodeSequence = [purpose]
        items.append(item)
    return items


def _copy_body_part(image: Dataset, source: Dataset) -> None:
    """Laterality and Body Part Examined (General Series) from the source; without either,
    an empty Laterality (type 2C: unknown) rather than none."""
    for keyword in ("Laterality", "BodyPartExamined"):
        if source.get(keyword):
            setattr(image, keyword, source[keyword].value)
    if "Laterality" not in image and "BodyPartExamined" not in image:
        image.Laterality = None


class SecondaryCaptureDeriver:
    """A Secondary Capture montage (8-bit MONOCHROME2) of up to ``max_frames`` frames.

    ``window`` (center, width) overrides the sources' windows; ``content_datetime``
    overrides the date taken from the sources (see
    :func:`~dicom_lakehouse.derive.base.derived_datetime`); the derived SeriesNumber is
    the source's plus ``series_number_offset``.
    """

    name = "sc"
    version = "1"

    def __init__(
        self,
        *,
        max_frames: int = 9,
        window: tuple[float, float] | None = None,
        series_number_offset: int = 1000,
        uid_prefix: str = DEFAULT_UID_PREFIX,
        content_datetime: dt.datetime | None = None,
        series_description: str = "Secondary capture",
    ) -> None:
        if max_frames < 1:
            raise ValueError("max_frames must be >= 1")
        if window is not None and window[1] < 1:
            raise ValueError("window width must be >= 1")
        self.max_frames = max_frames
        self.window = window
        self.series_number_offset = series_number_offset
        self.uid_prefix = uid_prefix
        self.content_datetime = content_datetime
        self.series_description = series_description

    def derive(self, sources: Sequence[Dataset]) -> list[Dataset]:
        """One SC image for the series ``sources``; see the module docstring."""
        series = load_series(sources)
        shown = montage_frames(series.n_frames, self.max_frames)
        first_shown = series.datasets[series.frame_refs[shown[0]][0]]
        middle = series.datasets[series.frame_refs[shown[len(shown) // 2]][0]]
        window = self.window or display_window(middle)
        invert = str(middle.PhotometricInterpretation) == "MONOCHROME1"
        pixels = _montage(to_uint8(series.pixels(shown), window, invert=invert))

        key = series.key(self.name, self.version)
        when = derived_datetime(series.datasets, self.content_datetime)
        date, time = da_tm(when)
        spacing = middle.get("PixelSpacing")
        orientation = patient_orientation(middle)
        lossy = [ds for ds in series.datasets if ds.get("LossyImageCompression") == "01"]
        try:
            image = hd.sc.SCImage(
                pixel_array=pixels,
                photometric_interpretation="MONOCHROME2",
                bits_allocated=8,
                coordinate_system="PATIENT",
                study_instance_uid=series.study_instance_uid,
                series_instance_uid=key.uid("series", self.uid_prefix),
                series_number=series_number(series.datasets, self.series_number_offset),
                sop_instance_uid=key.uid("instance:1", self.uid_prefix),
                instance_number=1,
                manufacturer=MANUFACTURER,
                pixel_spacing=(float(spacing[0]), float(spacing[1])) if spacing else None,
                patient_orientation=orientation or ("L", "P"),
                transfer_syntax_uid=ExplicitVRLittleEndian,
                series_description=self.series_description,
                manufacturer_model_name=f"{MANUFACTURER}.derive.{self.name}",
                software_versions=software_versions(self.name, self.version),  # type: ignore[arg-type]
                content_date=date,
                content_time=time,
                series_date=date,
                series_time=time,
                specific_character_set=first_shown.get("SpecificCharacterSet"),
            )
        except (ValueError, TypeError) as exc:
            raise DeriveError(
                "build_failed", f"highdicom refused the secondary capture ({type(exc).__name__})"
            ) from exc
        image.copy_patient_and_study_information(first_shown)
        _copy_body_part(image, first_shown)
        if orientation is None:
            image.PatientOrientation = list(first_shown.get("PatientOrientation") or [])
        image.ConversionType = "WSD"  # made on a workstation from DICOM images, not digitised
        image.SecondaryCaptureDeviceManufacturer = MANUFACTURER
        image.SecondaryCaptureDeviceManufacturerModelName = f"{MANUFACTURER}.derive.{self.name}"
        image.SecondaryCaptureDeviceSoftwareVersions = software_versions(self.name, self.version)
        burned = any(ds.get("BurnedInAnnotation") == "YES" for ds in series.datasets)
        image.BurnedInAnnotation = "YES" if burned else "NO"
        image.SourceImageSequence = _source_image_sequence(series, shown)
        window_kind = "given" if self.window else "source" if window else "min-max"
        image.DerivationDescription = (
            f"Montage of {len(shown)} of {series.n_frames} frames, {window_kind} window to 8 bits"
        )
        if lossy:
            image.LossyImageCompression = "01"
        logger.debug("sc: %d of %d frames in a montage", len(shown), series.n_frames)
        return [finalize(image, when, key, self.uid_prefix)]
