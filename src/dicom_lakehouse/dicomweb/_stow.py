"""STOW-RS request bodies: dataset checks, Part 10 encoding, batching, multipart/related.

Pure code (no network). Datasets are written with pydicom in their own transfer
syntax, or Explicit VR Little Endian when they carry none. Implicit VR is refused:
the Azure DICOM service accepts explicit-VR transfer syntaxes only.
"""

from __future__ import annotations

import copy
import email.parser
import email.policy
import io
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from pydicom import dcmwrite
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import UID, ExplicitVRLittleEndian

from dicom_lakehouse.errors import DicomWebDatasetError

__all__ = [
    "MULTIPART_TYPE",
    "EncodedInstance",
    "check_dataset",
    "encode_dataset",
    "iter_batches",
    "multipart_parts",
    "multipart_related",
]

MULTIPART_TYPE = "application/dicom"
_REQUIRED = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")


@dataclass(frozen=True, slots=True)
class EncodedInstance:
    """A DICOM Part 10 file ready to send, with the SOP Instance UID it declares.

    Use it to forward bytes as they are (a file read from the lake, or a deliberately
    broken part in a test). The UID is the key the results are matched on. The bytes are
    sent unchecked: the explicit-VR rule is the caller's to keep.
    """

    sop_instance_uid: str
    data: bytes

    def __repr__(self) -> str:
        return (
            f"EncodedInstance(sop_instance_uid={self.sop_instance_uid!r}, {len(self.data)} bytes)"
        )


def _transfer_syntax(ds: Dataset) -> UID | None:
    meta = getattr(ds, "file_meta", None)
    value = getattr(meta, "TransferSyntaxUID", None) if meta is not None else None
    return UID(str(value)) if value else None


def check_dataset(ds: Dataset, index: int | None = None) -> None:
    """Refuse what the service would reject: missing UIDs or an implicit-VR syntax."""
    missing = [name for name in _REQUIRED if not str(getattr(ds, name, "") or "").strip()]
    if missing:
        raise DicomWebDatasetError(f"missing required attribute(s) {missing}", index=index)
    syntax = _transfer_syntax(ds)
    if syntax is not None:
        if not syntax.is_transfer_syntax:
            raise DicomWebDatasetError("file meta TransferSyntaxUID is not known", index=index)
        if syntax.is_implicit_VR:
            raise DicomWebDatasetError(
                f"transfer syntax {syntax.name} is implicit VR; the DICOM service accepts "
                "explicit VR only (convert to Explicit VR Little Endian first)",
                index=index,
            )


def encode_dataset(ds: Dataset, index: int | None = None) -> EncodedInstance:
    """Write ``ds`` as a Part 10 file.

    The caller's file meta is not touched; as with ``save_as``, pydicom may resolve
    ambiguous VRs (``OB or OW``, ``US or SS``) of the dataset's elements in place.
    """
    check_dataset(ds, index)
    syntax = _transfer_syntax(ds) or ExplicitVRLittleEndian
    original = getattr(ds, "file_meta", None)
    meta = copy.deepcopy(original) if original is not None else FileMetaDataset()
    meta.TransferSyntaxUID = syntax
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    shallow = copy.copy(ds)  # shares the elements; only file_meta differs
    shallow.file_meta = meta
    buffer = io.BytesIO()
    try:
        dcmwrite(buffer, shallow, enforce_file_format=True)
    except (ValueError, TypeError, AttributeError, OverflowError) as exc:
        raise DicomWebDatasetError(
            f"cannot be encoded ({type(exc).__name__})", index=index
        ) from exc
    return EncodedInstance(str(ds.SOPInstanceUID), buffer.getvalue())


def iter_batches(
    instances: Iterable[EncodedInstance], max_instances: int, max_bytes: int
) -> Iterator[list[EncodedInstance]]:
    """Group instances in order, each group within both caps.

    An instance larger than ``max_bytes`` travels alone. Lazy: pulls one instance at a time.
    """
    batch: list[EncodedInstance] = []
    total = 0
    for instance in instances:
        size = len(instance.data)
        if batch and (len(batch) >= max_instances or total + size > max_bytes):
            yield batch
            batch, total = [], 0
        batch.append(instance)
        total += size
    if batch:
        yield batch


def multipart_related(parts: Iterable[bytes]) -> tuple[bytes, str]:
    """Build a ``multipart/related; type="application/dicom"`` body and its Content-Type."""
    chunks = list(parts)
    boundary = uuid.uuid4().hex
    while any(boundary.encode() in chunk for chunk in chunks):  # pragma: no cover - 2**-122
        boundary = uuid.uuid4().hex
    delimiter = f"--{boundary}".encode()
    head = delimiter + b"\r\nContent-Type: " + MULTIPART_TYPE.encode() + b"\r\n\r\n"
    body = bytearray()
    for chunk in chunks:
        body += head
        body += chunk
        body += b"\r\n"
    body += delimiter + b"--\r\n"
    content_type = f'multipart/related; type="{MULTIPART_TYPE}"; boundary={boundary}'
    return bytes(body), content_type


def multipart_parts(content_type: str, body: bytes) -> list[bytes]:
    """Split a ``multipart/related`` response body into its parts' payloads."""
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode()
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not message.is_multipart():
        return []
    parts: list[bytes] = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            parts.append(payload)
    return parts
