"""Turn one listed instance file into a bronze row (or a quarantine row).

Pure Python over a backend: no Spark. The Spark layer calls
:func:`extract_rows` on batches inside ``mapInArrow``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from dicom_lakehouse.columns import KEY_TAGS
from dicom_lakehouse.dicom.header import UPDATED_IMPLEMENTATION_CLASS_UID, read_header, safe_detail
from dicom_lakehouse.errors import (
    DicomParseError,
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
)
from dicom_lakehouse.lake.backend import LakeBackend

__all__ = ["ExtractOptions", "extract_row", "extract_rows"]

_RETRYABLE_REASONS = frozenset({"read_error"})


@dataclass(frozen=True, slots=True)
class ExtractOptions:
    header_bytes: int = 16384
    max_header_bytes: int = 64 * 1024 * 1024
    defer_size: int = 4096
    bulk_data_threshold: int = 1024
    io_threads: int = 8


def _first(metadata: dict[str, Any], key: str) -> Any:
    element = metadata.get(key)
    if not element:
        return None
    values = element.get("Value")
    if not values:
        return None
    value = values[0]
    if isinstance(value, dict):  # PN
        return value.get("Alphabetic")
    return value


def _typed(value: Any, kind: str) -> Any:
    if value is None:
        return None
    if kind == "string":
        return str(value)
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def key_columns(metadata: dict[str, Any]) -> dict[str, Any]:
    """The typed key columns of one header."""
    row = {name: _typed(_first(metadata, key), kind) for name, key, kind in KEY_TAGS}
    charset = metadata.get("00080005", {}).get("Value")
    row["specific_character_set"] = "\\".join(str(v) for v in charset) if charset else None
    return row


def extract_row(backend: LakeBackend, listed: dict[str, Any], options: ExtractOptions) -> dict:
    """Read one file's header and return its header-result row."""
    path = listed["file_path"]
    row: dict[str, Any] = {
        key: listed.get(key)
        for key in ("file_path", "partition_name", "watermark", "layout", "file_size")
    }
    row["last_modified"] = listed.get("last_modified")
    row["etag"] = listed.get("etag")
    fetched = {"bytes": 0}

    def fetch(offset: int, length: int) -> bytes:
        data = backend.read_range(path, offset, length)
        fetched["bytes"] += len(data)
        return data

    try:
        if listed.get("access_tier") == "Archive":
            raise DicomParseError("archived", "the blob is in the Archive tier")
        header = read_header(
            fetch,
            int(listed["file_size"] or 0),
            path=path,
            initial_bytes=options.header_bytes,
            max_bytes=options.max_header_bytes,
            bulk_threshold=options.bulk_data_threshold,
            defer_size=options.defer_size,
        )
    except DicomParseError as exc:
        return {
            **row,
            "status": "quarantined",
            "reason": exc.reason,
            "detail": exc.detail,
            "header_bytes_read": fetched["bytes"],
        }
    except StorageAuthError:
        raise  # a permissions problem stops the job early with its clear message
    except StorageNotFoundError:
        return {
            **row,
            "status": "quarantined",
            "reason": "vanished",
            "detail": "the file was gone when it was read",
            "header_bytes_read": 0,
        }
    except StorageError as exc:
        reason = getattr(exc, "quarantine_reason", "read_error")
        return {
            **row,
            "status": "quarantined",
            "reason": reason,
            "detail": safe_detail(exc),
            "header_bytes_read": fetched["bytes"],
        }
    meta = header.file_meta
    implementation = _first(meta, "00020012")
    return {
        **row,
        "status": "ingested",
        "reason": None,
        "detail": None,
        **key_columns(header.metadata),
        "transfer_syntax_uid": _first(meta, "00020010"),
        "implementation_class_uid": implementation,
        "is_updated_version": implementation == UPDATED_IMPLEMENTATION_CLASS_UID,
        "header_bytes_read": header.bytes_read,
        "metadata_json": header.metadata_json(),
        "file_meta_json": header.file_meta_json(),
    }


def extract_rows(
    backend: LakeBackend, listed: Iterable[dict[str, Any]], options: ExtractOptions
) -> Iterator[dict[str, Any]]:
    """Extract many files, reading up to ``io_threads`` of them at once (in order)."""
    if options.io_threads <= 1:
        for item in listed:
            yield extract_row(backend, item, options)
        return
    with ThreadPoolExecutor(options.io_threads, thread_name_prefix="dl-read") as pool:
        yield from pool.map(lambda item: extract_row(backend, item, options), listed)


def is_retryable(reason: str | None) -> bool:
    """Quarantine reasons worth another try on the next run."""
    return reason in _RETRYABLE_REASONS
