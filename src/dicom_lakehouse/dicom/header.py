"""Read a DICOM header from ranged reads, never the pixel data.

:class:`RangedFile` is a seekable file object over ``fetch(offset, length)``:
it starts with one read of ``initial_bytes`` and fetches the next range only
when pydicom's parser asks for bytes past what it holds. pydicom silently
returns a partial dataset from a cut buffer, so this never hands it one: a
header longer than the first range is completed by further ranged reads,
large values (pydicom's ``defer_size``) are skipped by seeking, and a parse
that runs past the real end of the file is reported as ``truncated_header``.
"""

from __future__ import annotations

import io
import json
import logging
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydicom
from pydicom import config as pydicom_config
from pydicom.errors import InvalidDicomError

from dicom_lakehouse.dicom.jsonmodel import dataset_to_json, sanitize_non_finite
from dicom_lakehouse.errors import DicomParseError, StorageError

__all__ = [
    "UPDATED_IMPLEMENTATION_CLASS_UID",
    "Header",
    "HeaderTooLargeError",
    "RangedFile",
    "read_header",
]

logger = logging.getLogger(__name__)

UPDATED_IMPLEMENTATION_CLASS_UID = "1.3.6.1.4.1.311.129"
"""File meta (0002,0012) of files the DICOM service rewrote in a bulk update."""

_REQUIRED = {
    "0020000D": "StudyInstanceUID",
    "0020000E": "SeriesInstanceUID",
    "00080018": "SOPInstanceUID",
}
_QUOTED = re.compile(r"'[^']*'|\"[^\"]*\"")

Fetch = Callable[[int, int], bytes]


class HeaderTooLargeError(Exception):
    """The header needs more bytes than the configured maximum."""


class RangedFile(io.RawIOBase):
    """A read-only, seekable view of ``size`` bytes fetched range by range."""

    def __init__(self, fetch: Fetch, size: int, initial_bytes: int, max_bytes: int) -> None:
        super().__init__()
        self._fetch = fetch
        self._size = size
        self._chunk = max(initial_bytes, 1024)
        self._max = max_bytes
        self._segments: list[tuple[int, bytes]] = []
        self._pos = 0
        self.bytes_fetched = 0
        self.fetches = 0
        self.past_end = False

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            target = offset
        elif whence == io.SEEK_CUR:
            target = self._pos + offset
        else:
            target = self._size + offset
        if target > self._size:
            self.past_end = True  # a value (deferred, skipped) runs past the file's end
        self._pos = max(target, 0)
        return self._pos

    def _cached(self, start: int, end: int) -> bytes | None:
        for seg_start, data in self._segments:
            if seg_start <= start and end <= seg_start + len(data):
                return data[start - seg_start : end - seg_start]
        return None

    def _load(self, start: int, end: int) -> None:
        """Fetch at least ``[start, end)``, growing ranges geometrically."""
        held = sum(len(data) for _, data in self._segments)
        want = max(end - start, self._chunk if not self._segments else held)
        want = min(want, self._size - start)
        if held + want > self._max:
            raise HeaderTooLargeError(f"header needs more than {self._max} bytes")
        data = self._fetch(start, want)
        self.fetches += 1
        self.bytes_fetched += len(data)
        if len(data) < want:
            self._size = start + len(data)  # the file is shorter than listed
        # merge with a segment that ends where this one starts
        for i, (seg_start, seg) in enumerate(self._segments):
            if seg_start + len(seg) == start:
                self._segments[i] = (seg_start, seg + data)
                return
        self._segments.append((start, data))

    def read(self, size: int = -1) -> bytes:
        if size is None or size < 0:
            size = self._size - self._pos
        start = self._pos
        end = min(start + size, self._size)
        if size > 0 and start + size > self._size and (start < self._size or size != 8):
            # a read cut by the end of the file; an 8-byte tag read exactly at
            # the end is how a parse of a file without pixel data finishes
            self.past_end = True
        if end <= start:
            return b""
        data = self._cached(start, end)
        if data is None:
            have = start
            for seg_start, seg in self._segments:
                if seg_start <= start < seg_start + len(seg):
                    have = seg_start + len(seg)
            self._load(have, end)
            data = self._cached(start, min(end, self._size))
            if data is None:  # the file shrank under us
                self.past_end = True
                data = b""
        self._pos = start + len(data)
        return data

    def readinto(self, buffer: Any) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def read_at(self, offset: int, length: int) -> bytes:
        """Read ``length`` bytes at ``offset`` without moving the position."""
        saved = self._pos
        try:
            self._pos = offset
            return self.read(length)
        finally:
            self._pos = saved


@dataclass(frozen=True, slots=True)
class Header:
    """What one file's header yields."""

    metadata: dict[str, Any]
    file_meta: dict[str, Any]
    bytes_read: int
    fetches: int

    def metadata_json(self) -> str:
        return _dumps(self.metadata)

    def file_meta_json(self) -> str:
        return _dumps(self.file_meta)


def _dumps(obj: dict[str, Any]) -> str:
    try:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return json.dumps(sanitize_non_finite(obj), separators=(",", ":"))


def safe_detail(exc: BaseException) -> str:
    """An exception summary for the quarantine table, with quoted values removed
    (pydicom quotes offending values, which may be PHI)."""
    message = _QUOTED.sub("'…'", str(exc))[:300]
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _parse(source: RangedFile, force: bool, defer_size: int) -> pydicom.Dataset:
    source.seek(0)
    return pydicom.dcmread(source, stop_before_pixels=True, force=force, defer_size=defer_size)


def read_header(
    fetch: Fetch,
    size: int,
    *,
    path: str,
    initial_bytes: int = 16384,
    max_bytes: int = 64 * 1024 * 1024,
    bulk_threshold: int = 1024,
    defer_size: int = 4096,
) -> Header:
    """Parse the header of the file of ``size`` bytes read through ``fetch``.

    Raises :class:`DicomParseError` with a stable ``reason``: ``empty_file``,
    ``not_dicom``, ``truncated_header``, ``missing_uids``, ``header_too_large``,
    ``parse_error``. Storage errors from ``fetch`` propagate unchanged.
    """
    if size <= 0:
        raise DicomParseError("empty_file", "the file has no bytes")
    source = RangedFile(fetch, size, initial_bytes, max_bytes)
    forced = False

    def bulk_uri(tag: int, offset: int, length: int) -> str:
        return f"{path}#tag={tag:08X}&offset={offset}&length={length}"

    with warnings.catch_warnings(), pydicom_config.disable_value_validation():
        warnings.simplefilter("ignore")
        try:
            try:
                ds = _parse(source, False, defer_size)
            except InvalidDicomError:
                # no preamble or file meta: a raw dataset is DICOM if it parses
                # cleanly and carries the UIDs; garbage parses into junk
                forced = True
                source.past_end = False
                ds = _parse(source, True, defer_size)
            metadata = dataset_to_json(
                ds, bulk_uri, threshold=bulk_threshold, read_deferred=source.read_at
            )
            file_meta = dataset_to_json(ds.file_meta, bulk_uri, threshold=bulk_threshold)
        except HeaderTooLargeError as exc:
            raise DicomParseError("header_too_large", str(exc)) from exc
        except (DicomParseError, StorageError):
            raise  # storage outcomes (vanished, archived, ...) are the caller's to classify
        except Exception as exc:  # pydicom raises many types on bad bytes
            if forced:
                raise DicomParseError("not_dicom", "no DICM prefix and no dataset") from exc
            if source.past_end:
                raise DicomParseError("truncated_header", safe_detail(exc)) from exc
            raise DicomParseError("parse_error", safe_detail(exc)) from exc
    missing = [name for key, name in _REQUIRED.items() if not _first(metadata, key)]
    if forced and (source.past_end or len(missing) == len(_REQUIRED)):
        raise DicomParseError("not_dicom", "no DICM prefix and no dataset")
    if source.past_end:
        raise DicomParseError("truncated_header", "the header runs past the end of the file")
    if missing:
        raise DicomParseError("missing_uids", "missing " + ", ".join(missing))
    return Header(metadata, file_meta, source.bytes_fetched, source.fetches)


def _first(metadata: dict[str, Any], key: str) -> Any:
    element = metadata.get(key)
    if not element:
        return None
    values = element.get("Value")
    return values[0] if values else None
