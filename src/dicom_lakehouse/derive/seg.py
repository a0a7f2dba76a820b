"""``seg``: a BINARY DICOM Segmentation of one series, one segment, from a mask model.

The model (see :mod:`dicom_lakehouse.derive.model`) gets the sorted series as a float32
``(frames, rows, columns)`` array and returns a mask of the same shape. highdicom builds
the SEG: it references every source instance (ReferencedSeriesSequence and per-frame
derivation references) and copies the patient and study from the sources. The segment's
algorithm identification names the model (family, name, version; the model URI, run id
and logged-model id in AlgorithmParameters); the segment type is AUTOMATIC.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence

import highdicom as hd
from pydicom import Dataset
from pydicom.sr.codedict import codes
from pydicom.sr.coding import Code
from pydicom.uid import ExplicitVRLittleEndian

from dicom_lakehouse.derive.base import (
    MANUFACTURER,
    da_tm,
    derived_datetime,
    finalize,
    load_series,
    series_number,
    software_versions,
)
from dicom_lakehouse.derive.model import MaskFn, MaskModel, load_mask_model
from dicom_lakehouse.derive.uids import DEFAULT_UID_PREFIX
from dicom_lakehouse.errors import DeriveError

__all__ = ["SegmentationDeriver"]

logger = logging.getLogger(__name__)

_LO = 64  # maximum length of an LO value


def _lo(text: str) -> str:
    return text if len(text) <= _LO else text[: _LO - 3] + "..."


def _check_geometry(datasets: Sequence[Dataset]) -> None:
    """A SEG needs patient geometry: a Frame of Reference and plane position/orientation,
    at the top level (single-frame images) or in functional groups (enhanced multi-frame)."""
    for i, ds in enumerate(datasets):
        frames = int(ds.get("NumberOfFrames") or 1)
        if frames > 1:
            present = "FrameOfReferenceUID" in ds and "PerFrameFunctionalGroupsSequence" in ds
            needs = "a Frame of Reference and per-frame functional groups"
        else:
            present = all(
                k in ds
                for k in (
                    "FrameOfReferenceUID",
                    "ImagePositionPatient",
                    "ImageOrientationPatient",
                    "PixelSpacing",
                )
            )
            needs = (
                "FrameOfReferenceUID, ImagePositionPatient, ImageOrientationPatient, PixelSpacing"
            )
        if not present:
            raise DeriveError("missing_geometry", f"source #{i} lacks {needs}")


class SegmentationDeriver:
    """A BINARY Segmentation with one segment from ``model``.

    ``model`` is a :class:`MaskModel`, a plain ``mask_fn`` callable (wrapped with
    :meth:`MaskModel.from_callable`) or an MLflow model URI (loaded with
    :func:`load_mask_model`, once). The segment is described by ``segment_label`` and
    the coded ``segmented_property_category``/``segmented_property_type``; the
    algorithm family defaults to Artificial Intelligence. Frames the mask leaves empty
    are omitted unless ``omit_empty_frames`` is False.
    """

    name = "seg"
    version = "1"

    def __init__(
        self,
        model: MaskModel | MaskFn | str,
        *,
        segment_label: str = "Mask",
        segmented_property_category: Code = codes.SCT.Tissue,
        segmented_property_type: Code = codes.SCT.Tissue,
        algorithm_family: Code = codes.cid7162.ArtificialIntelligence,
        series_number_offset: int = 2000,
        uid_prefix: str = DEFAULT_UID_PREFIX,
        content_datetime: dt.datetime | None = None,
        series_description: str | None = None,
        content_label: str = "SEGMENTATION",
        omit_empty_frames: bool = True,
    ) -> None:
        if isinstance(model, str):
            model = load_mask_model(model)
        self.model = model if isinstance(model, MaskModel) else MaskModel.from_callable(model)
        self.segment_label = segment_label
        self.segmented_property_category = segmented_property_category
        self.segmented_property_type = segmented_property_type
        self.algorithm_family = algorithm_family
        self.series_number_offset = series_number_offset
        self.uid_prefix = uid_prefix
        self.content_datetime = content_datetime
        self.series_description = series_description or _lo(
            f"Segmentation {self.model.name} {self.model.version}"
        )
        self.content_label = content_label
        self.omit_empty_frames = omit_empty_frames

    def _algorithm(self) -> hd.AlgorithmIdentificationSequence:
        model = self.model
        parameters = {
            k: v
            for k, v in (
                ("model_uri", model.uri),
                ("run_id", model.run_id),
                ("model_id", model.model_id),
            )
            if v
        }
        return hd.AlgorithmIdentificationSequence(
            name=_lo(model.name),
            family=self.algorithm_family,
            version=_lo(model.version),
            source=model.uri if model.uri and len(model.uri) <= _LO else None,
            parameters=parameters or None,
        )

    def derive(self, sources: Sequence[Dataset]) -> list[Dataset]:
        """One SEG for the series ``sources``; see the module docstring."""
        series = load_series(sources)
        _check_geometry(series.datasets)
        mask = self.model(series.pixels())
        key = series.key(self.name, self.version, self.model.identity)
        when = derived_datetime(series.datasets, self.content_datetime)
        date, time = da_tm(when)
        versions = [
            *software_versions(self.name, self.version),
            _lo(f"model {self.model.name} {self.model.version}"),
        ]
        description = hd.seg.SegmentDescription(
            segment_number=1,
            segment_label=self.segment_label,
            segmented_property_category=self.segmented_property_category,
            segmented_property_type=self.segmented_property_type,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=self._algorithm(),
        )
        try:
            seg = hd.seg.Segmentation(
                source_images=list(series.datasets),
                pixel_array=mask,
                segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
                segment_descriptions=[description],
                series_instance_uid=key.uid("series", self.uid_prefix),
                series_number=series_number(series.datasets, self.series_number_offset),
                sop_instance_uid=key.uid("instance:1", self.uid_prefix),
                instance_number=1,
                manufacturer=MANUFACTURER,
                manufacturer_model_name=f"{MANUFACTURER}.derive.{self.name}",
                software_versions=versions,  # type: ignore[arg-type]  # highdicom: tuple[str]
                device_serial_number=f"{self.name}-{self.version}",
                content_description=_lo(
                    f"Automatic segmentation by {self.model.name} {self.model.version}"
                ),
                content_label=self.content_label,
                transfer_syntax_uid=ExplicitVRLittleEndian,
                omit_empty_frames=self.omit_empty_frames,
                series_description=self.series_description,
                content_date=date,
                content_time=time,
                series_date=date,
                series_time=time,
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise DeriveError(
                "build_failed", f"highdicom refused the segmentation ({type(exc).__name__})"
            ) from exc
        logger.debug("seg: %d of %d frames non-empty", int(mask.any(axis=(1, 2)).sum()), len(mask))
        return [finalize(seg, when, key, self.uid_prefix)]
