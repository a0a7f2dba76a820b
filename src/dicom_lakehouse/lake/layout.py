"""The DICOM service's lake layout, as pure functions over path strings.

See the contract: instances are ``{prefix}_{watermark}.dcm`` flat inside
``AHDS/{workspace}/dicom/{service}/{partition}/`` (or directly under the
service folder when partitions are off), where ``prefix`` is the first three
characters of the decimal XXH64 (seed 0) of the watermark's text. The legacy
open-source layout nests ``{study}/{series}/{sop}_{watermark}.dcm``.
Nothing here touches storage.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import xxhash

__all__ = [
    "DEFAULT_PARTITION",
    "REST_SHARD",
    "Classified",
    "FileKind",
    "Layout",
    "classify",
    "instance_file_name",
    "is_valid_partition_name",
    "name_prefix",
    "service_root",
    "shard_key",
    "shard_keys",
]

DEFAULT_PARTITION = "Microsoft.Default"
REST_SHARD = "~"

_PARTITION_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")
_UID_RE = re.compile(r"[0-9]+(?:\.[0-9]+)*")
_FLAT_RE = re.compile(r"(?P<prefix>[0-9]{3})_(?P<watermark>[0-9]{1,19})\.dcm")
_LEGACY_RE = re.compile(r"(?P<sop>[0-9]+(?:\.[0-9]+)*)_(?P<watermark>[0-9]{1,19})\.dcm")
_HEALTH_RE = re.compile(
    r"health(?:\{?[0-9A-Fa-f]{8}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?[0-9A-Fa-f]{4}-?"
    r"[0-9A-Fa-f]{12}\}?)?\.txt"
)
_SERVICE_JSON_RE = re.compile(r".*_(?:metadata|frames_range)\.json")


class FileKind(StrEnum):
    """Where a listed file ends up."""

    INSTANCE = "instance"
    IGNORED = "ignored"
    FOREIGN = "foreign"


class Layout(StrEnum):
    """How an instance file is laid out."""

    FLAT = "flat"
    LEGACY = "legacy"


@dataclass(frozen=True, slots=True)
class Classified:
    """The verdict on one path below the service folder."""

    kind: FileKind
    partition_name: str | None = None
    watermark: int | None = None
    layout: Layout | None = None
    reason: str | None = None


def service_root(workspace: str, service: str) -> str:
    """Return the service folder relative to the container root."""
    for label, value in (("workspace", workspace), ("service", service)):
        if not value or "/" in value or value in (".", ".."):
            raise ValueError(f"invalid {label} name for the lake layout")
    return f"AHDS/{workspace}/dicom/{service}"


def name_prefix(watermark: int) -> str:
    """Return the service's 3-character hash prefix for a watermark."""
    return str(xxhash.xxh64_intdigest(str(watermark).encode("utf-8"), seed=0))[:3]


def instance_file_name(watermark: int) -> str:
    """Return the file name the service gives the instance with ``watermark``."""
    return f"{name_prefix(watermark)}_{watermark}.dcm"


def is_valid_partition_name(name: str) -> bool:
    """Whether ``name`` is a legal data-partition folder name."""
    return _PARTITION_RE.fullmatch(name) is not None


def _is_uid(text: str) -> bool:
    return len(text) <= 64 and _UID_RE.fullmatch(text) is not None


def _ignored_reason(name: str) -> str | None:
    if _HEALTH_RE.fullmatch(name):
        return "health_check"
    if _SERVICE_JSON_RE.fullmatch(name):
        return "service_metadata"
    return None


def classify(parts: Sequence[str], *, verify_prefix: bool = False) -> Classified:
    """Classify a file by its path segments below the service folder.

    ``parts`` ends with the file name; a partition comes only from the folder
    segment. ``verify_prefix`` also checks the hash prefix of flat names
    (files users add may collide with the service's pattern).
    """
    if not parts:
        return Classified(FileKind.FOREIGN, reason="empty_path")
    name = parts[-1]
    ignored = _ignored_reason(name)
    if ignored is not None:
        return Classified(FileKind.IGNORED, reason=ignored)
    depth = len(parts)
    if depth in (1, 2):
        partition = DEFAULT_PARTITION if depth == 1 else parts[0]
        match = _FLAT_RE.fullmatch(name)
        if match is None:
            return Classified(FileKind.FOREIGN, reason="unexpected_name")
        if depth == 2 and not is_valid_partition_name(partition):
            return Classified(FileKind.FOREIGN, reason="bad_partition_name")
        watermark = int(match["watermark"])
        if verify_prefix and match["prefix"] != name_prefix(watermark):
            return Classified(FileKind.FOREIGN, reason="prefix_mismatch")
        return Classified(FileKind.INSTANCE, partition, watermark, Layout.FLAT)
    if depth in (3, 4):
        partition = DEFAULT_PARTITION if depth == 3 else parts[0]
        study, series = parts[-3], parts[-2]
        match = _LEGACY_RE.fullmatch(name)
        if match is None or not (_is_uid(study) and _is_uid(series) and _is_uid(match["sop"])):
            return Classified(FileKind.FOREIGN, reason="unexpected_name")
        if depth == 4 and not is_valid_partition_name(partition):
            return Classified(FileKind.FOREIGN, reason="bad_partition_name")
        return Classified(FileKind.INSTANCE, partition, int(match["watermark"]), Layout.LEGACY)
    return Classified(FileKind.FOREIGN, reason="unexpected_depth")


def shard_key(name: str, digits: int) -> str:
    """Return the listing shard of a folder entry's name.

    The hash prefix makes the leading digits of instance names spread evenly
    enough to split one partition's listing into ``9 * 10**(digits-1)`` shards;
    names that do not start with ``digits`` digits fall into one rest shard.
    """
    if digits <= 0:
        return ""
    head = name[:digits]
    if len(head) == digits and head.isdigit() and head[0] != "0":
        return head
    return REST_SHARD


def shard_keys(digits: int) -> list[str]:
    """All shard keys for ``digits`` (the rest shard last)."""
    if digits <= 0:
        return [""]
    return [str(n) for n in range(10 ** (digits - 1), 10**digits)] + [REST_SHARD]
