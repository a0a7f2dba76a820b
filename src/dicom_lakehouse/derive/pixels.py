"""Pixel decoding and display windowing for derivers (pydicom's pixel handlers).

Compressed sources decode with the pydicom plugins that are installed: pylibjpeg with
pylibjpeg-openjpeg (JPEG 2000, HTJ2K) and pylibjpeg-libjpeg (JPEG baseline, extended and
lossless), pyjpegls (JPEG-LS), and pydicom's own RLE and Deflate support. A transfer
syntax no installed plugin can decode (MPEG/H.264/HEVC video, JPIP, JPEG-XL without a
plugin, ...) raises :class:`DeriveError` ``undecodable_pixels``.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydicom import Dataset
from pydicom.multival import MultiValue
from pydicom.pixels import apply_modality_lut, get_decoder
from pydicom.uid import UID

from dicom_lakehouse.errors import DeriveError

__all__ = [
    "PIXEL_DATA_KEYWORDS",
    "check_decodable",
    "decode_frames",
    "display_window",
    "has_pixel_data",
    "to_uint8",
    "transfer_syntax_of",
]

logger = logging.getLogger(__name__)

PIXEL_DATA_KEYWORDS = ("PixelData", "FloatPixelData", "DoubleFloatPixelData")


def has_pixel_data(ds: Dataset) -> bool:
    """Whether ``ds`` carries an image: pixel data and its size."""
    return any(k in ds for k in PIXEL_DATA_KEYWORDS) and "Rows" in ds and "Columns" in ds


def transfer_syntax_of(ds: Dataset) -> UID | None:
    """The file meta TransferSyntaxUID of ``ds``, or None when it has none."""
    meta = getattr(ds, "file_meta", None)
    value = meta.get("TransferSyntaxUID") if meta is not None else None
    return UID(str(value)) if value else None


def check_decodable(ds: Dataset, index: int | None = None) -> None:
    """Raise ``undecodable_pixels`` unless an installed pydicom plugin decodes ``ds``'s syntax.

    The message names the transfer syntax UID (and name), never a header value.
    """
    where = "" if index is None else f"source #{index}: "
    syntax = transfer_syntax_of(ds)
    if syntax is None:
        raise DeriveError(
            "undecodable_pixels", f"{where}no TransferSyntaxUID in the file meta information"
        )
    label = f"{syntax} ({syntax.name})" if syntax.is_transfer_syntax else str(syntax)
    try:
        decoder = get_decoder(syntax)
    except NotImplementedError as exc:
        raise DeriveError(
            "undecodable_pixels", f"{where}no pixel decoder for transfer syntax {label}"
        ) from exc
    if not decoder.is_available:
        missing = "; ".join(decoder.missing_dependencies)
        detail = f"{where}no installed plugin decodes transfer syntax {label}"
        raise DeriveError("undecodable_pixels", f"{detail} ({missing})" if missing else detail)


def decode_frames(ds: Dataset, index: int | None = None) -> np.ndarray:
    """Decoded frames of ``ds`` as float32 ``(frames, rows, columns)``, Modality LUT applied.

    The Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence at the top level)
    gives the modality's units, e.g. Hounsfield units for CT. Raises :class:`DeriveError`
    ``undecodable_pixels`` when no plugin decodes the transfer syntax and
    ``invalid_pixels`` when decoding fails or gives an unexpected shape.
    """
    check_decodable(ds, index)
    where = "" if index is None else f"sorted source #{index}: "
    try:
        stored = ds.pixel_array
        values = apply_modality_lut(stored, ds)
    except (ValueError, RuntimeError, TypeError, KeyError, AttributeError) as exc:
        raise DeriveError(
            "invalid_pixels",
            f"{where}pixel data in transfer syntax {transfer_syntax_of(ds)} could not be "
            f"decoded ({type(exc).__name__})",
        ) from exc
    rows, columns = int(ds.Rows), int(ds.Columns)
    frames = int(ds.get("NumberOfFrames") or 1)
    if values.size != frames * rows * columns:
        raise DeriveError(
            "invalid_pixels",
            f"{where}decoded {values.shape} values, expected {frames}x{rows}x{columns}",
        )
    return np.asarray(values, dtype=np.float32).reshape(frames, rows, columns)


def display_window(ds: Dataset) -> tuple[float, float] | None:
    """The first Window Center/Width of ``ds`` (after the Modality LUT), or None."""
    center, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if center is None or width is None or center == "" or width == "":
        return None
    try:
        c, w = float(center), float(width)
    except (TypeError, ValueError):
        return None
    return (c, w) if w >= 1 else None


def _first(value: Any) -> Any:
    if isinstance(value, MultiValue | list | tuple):
        return value[0] if len(value) else None
    return value


def to_uint8(
    values: np.ndarray, window: tuple[float, float] | None, *, invert: bool = False
) -> np.ndarray:
    """Map ``values`` to 8-bit display values with a linear window (PS3.3 C.11.2.1.2.1).

    ``window`` is ``(center, width)``; without one the values' own minimum and maximum
    span the output range. ``invert`` flips the result (for MONOCHROME1 sources), so the
    output always reads as MONOCHROME2.
    """
    data = np.asarray(values, dtype=np.float64)
    if window is None:
        low, high = (float(data.min()), float(data.max())) if data.size else (0.0, 0.0)
        scaled = np.zeros(data.shape) if high <= low else (data - low) / (high - low)
    else:
        center, width = window
        if width <= 1:
            scaled = (data > center - 0.5).astype(np.float64)
        else:
            scaled = (data - (center - 0.5)) / (width - 1) + 0.5
    out = np.rint(np.clip(scaled, 0.0, 1.0) * 255.0).astype(np.uint8)
    return (255 - out) if invert else out
