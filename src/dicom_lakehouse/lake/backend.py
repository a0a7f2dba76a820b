"""Storage backends behind one small protocol.

A backend lists and range-reads files relative to the container root (paths
like ``AHDS/ws/dicom/svc/Microsoft.Default/132_1.dcm``). Executors build
backends from a :class:`BackendSpec`, a picklable description, and reuse one
backend per process; no live client is ever shipped from the driver.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol, runtime_checkable

from dicom_lakehouse.errors import StorageError, StorageNotFoundError
from dicom_lakehouse.lake.layout import REST_SHARD, shard_key

__all__ = [
    "BackendSpec",
    "FileInfo",
    "LakeBackend",
    "LocalBackend",
    "open_backend",
]


@dataclass(frozen=True, slots=True)
class FileInfo:
    """One listed entry. ``path`` is relative to the container root, ``/``-separated."""

    path: str
    size: int
    last_modified: datetime | None = None
    etag: str | None = None
    is_dir: bool = False
    access_tier: str | None = None


@runtime_checkable
class LakeBackend(Protocol):
    """What the walker and the header reader need from a store."""

    def list_dir(self, prefix: str) -> Iterator[FileInfo]:
        """Entries directly under folder ``prefix`` (files and folders, not recursive)."""
        ...

    def list_tree(self, prefix: str, shard: str, digits: int) -> Iterator[FileInfo]:
        """Every entry below folder ``prefix``, recursively, whose first segment
        below ``prefix`` falls in listing shard ``shard`` (see ``layout.shard_key``).

        Folder entries that a flat listing reports (``hdi_isfolder``) come back
        with ``is_dir=True``; the walker skips and counts them.
        """
        ...

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of ``path`` (fewer at the end of the file).

        Raises :class:`StorageNotFoundError` when the file is gone.
        """
        ...


@dataclass(frozen=True, slots=True)
class BackendSpec:
    """A serialisable description of a backend: ``root`` plus options.

    ``root`` is a local/mounted path or a URL whose scheme picks the backend.
    ``options`` never holds secrets: backends read those from the environment.
    """

    root: str
    options: tuple[tuple[str, str], ...] = field(default_factory=tuple)

    @property
    def scheme(self) -> str:
        head, sep, _ = self.root.partition("://")
        return head.lower() if sep else "file"


def open_backend(spec: BackendSpec) -> LakeBackend:
    """Return the (per-process cached) backend for ``spec``."""
    return _open_backend_cached(spec)


@functools.lru_cache(maxsize=8)
def _open_backend_cached(spec: BackendSpec) -> LakeBackend:
    if spec.scheme == "file":
        root = spec.root[len("file://") :] if spec.root.startswith("file://") else spec.root
        return LocalBackend(root)
    if spec.scheme in ("abfss", "abfs", "https"):
        # Imported here: the Azure SDKs load only for lakes that need them.
        from dicom_lakehouse.lake.adls import AdlsBackend

        return AdlsBackend.from_spec(spec)
    raise StorageError(f"no storage backend for scheme {spec.scheme!r}")


def _timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _etag(stat: os.stat_result) -> str:
    """A change token for local files: inode, size and nanosecond mtime."""
    return f"{stat.st_ino:x}-{stat.st_size:x}-{stat.st_mtime_ns:x}"


class LocalBackend:
    """A local or mounted POSIX path (Fabric ``/lakehouse/default/Files``,
    Databricks ``/Volumes``, Synapse ``/synfs``)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def _abs(self, rel: str) -> Path:
        return self.root / rel if rel else self.root

    def _info(self, rel: str, entry: os.DirEntry[str]) -> FileInfo:
        stat = entry.stat(follow_symlinks=True)
        if entry.is_dir():
            return FileInfo(rel, 0, _timestamp(stat.st_mtime), None, is_dir=True)
        return FileInfo(rel, stat.st_size, _timestamp(stat.st_mtime), _etag(stat))

    def _scan(self, base: str, shard: str | None, digits: int) -> Iterator[FileInfo]:
        try:
            with os.scandir(self._abs(base)) as entries:
                for entry in entries:
                    if shard is not None and shard_key(entry.name, digits) != shard:
                        continue  # filter on the name before paying for a stat
                    try:
                        yield self._info(f"{base}/{entry.name}" if base else entry.name, entry)
                    except FileNotFoundError:
                        continue  # vanished between readdir and stat
        except FileNotFoundError as exc:
            raise StorageNotFoundError("folder not found") from exc
        except OSError as exc:
            raise StorageError(f"cannot list a folder: {exc.strerror}") from exc

    def list_dir(self, prefix: str) -> Iterator[FileInfo]:
        return self._scan(prefix.rstrip("/"), None, 0)

    def list_tree(self, prefix: str, shard: str, digits: int) -> Iterator[FileInfo]:
        stack: list[tuple[str, str | None]] = [
            (prefix.rstrip("/"), (shard or REST_SHARD) if digits > 0 else None)
        ]
        while stack:
            folder, only = stack.pop()
            for info in self._scan(folder, only, digits):
                if info.is_dir:
                    stack.append((info.path, None))
                else:
                    yield info

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        try:
            with self._abs(path).open("rb") as handle:
                handle.seek(offset)
                return handle.read(length)
        except FileNotFoundError as exc:
            raise StorageNotFoundError("file vanished before it was read") from exc
        except IsADirectoryError as exc:
            raise StorageError("path is a folder, not a file") from exc
        except OSError as exc:
            raise StorageError(f"read failed: {exc.strerror}") from exc
