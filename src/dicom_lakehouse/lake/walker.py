"""Walk the service folder: plan listing tasks, run them, classify what they find.

The driver lists only the service folder's direct children. Each partition
folder becomes ``9 * 10**(digits-1) + 1`` listing shards (see
``layout.shard_key``) that executors list independently; files directly
under the service folder (a service without partitions) are one more task.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from dicom_lakehouse.errors import StorageError, StorageNotFoundError
from dicom_lakehouse.lake.backend import FileInfo, LakeBackend
from dicom_lakehouse.lake.layout import DEFAULT_PARTITION, classify, service_root, shard_keys

__all__ = ["ListingTask", "classify_entry", "plan_listing", "run_listing_task"]


@dataclass(frozen=True, slots=True)
class ListingTask:
    """One unit of listing work: a folder (or the service root's files) and a shard."""

    folder: str
    shard: str
    digits: int
    root_files_only: bool = False


def plan_listing(
    backend: LakeBackend,
    workspace: str,
    service: str,
    *,
    partitions: Iterable[str] | None = None,
    digits: int = 1,
) -> list[ListingTask]:
    """List the service folder's children and return the tasks that cover them."""
    root = service_root(workspace, service)
    try:
        children = list(backend.list_dir(root))
    except StorageNotFoundError as exc:
        raise StorageError(f"the service folder {root} does not exist under the lake root") from exc
    wanted = set(partitions) if partitions is not None else None
    tasks: list[ListingTask] = []
    if any(not c.is_dir for c in children) and (wanted is None or DEFAULT_PARTITION in wanted):
        tasks.append(ListingTask(root, "", 0, root_files_only=True))
    for child in sorted(c.path for c in children if c.is_dir):
        name = child.rsplit("/", 1)[-1]
        if wanted is not None and name not in wanted:
            continue
        tasks.extend(ListingTask(child, shard, digits) for shard in shard_keys(digits))
    return tasks


def run_listing_task(backend: LakeBackend, task: ListingTask) -> Iterator[FileInfo]:
    """Every entry the task covers (folders from flat listings included)."""
    if task.root_files_only:
        yield from (info for info in backend.list_dir(task.folder) if not info.is_dir)
    else:
        yield from backend.list_tree(task.folder, task.shard, task.digits)


def classify_entry(
    info: FileInfo, root: str, *, verify_prefix: bool = False
) -> dict[str, Any] | None:
    """A listing row for ``info`` (``None`` for a folder entry, which is skipped)."""
    if info.is_dir:
        return None
    rel = info.path[len(root) + 1 :] if info.path.startswith(root + "/") else info.path
    parts = rel.split("/")
    verdict = classify(parts, verify_prefix=verify_prefix)
    return {
        "file_path": info.path,
        "partition_name": verdict.partition_name,
        "watermark": verdict.watermark,
        "layout": verdict.layout.value if verdict.layout else None,
        "file_size": info.size,
        "last_modified": info.last_modified,
        "etag": info.etag,
        "kind": verdict.kind.value,
        "reason": verdict.reason,
        "partition_folder": parts[0] if len(parts) > 1 else "",
        "access_tier": info.access_tier,
    }
