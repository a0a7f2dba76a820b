"""STOW-RS results: the per-instance outcome and the parser of the DICOM JSON answer.

Pure code (no IO). :func:`parse_store_response` reads a Store Instances Response
(PS3.18 Annex I) and :func:`batch_results` turns it, with the HTTP status, into one
:class:`StoreResult` per instance sent, in the order sent.

Rules, shared by the Azure DICOM service and Orthanc (see the lake contract):

- Both sequences are read whatever the HTTP status: Orthanc lists an Orthanc-side
  failure in FailedSOPSequence with HTTP 200, answers 409 with some instances in
  ReferencedSOPSequence, and 400 with the valid parts stored.
- Listed in ReferencedSOPSequence -> ``stored`` (with any WarningReason). On Orthanc a
  duplicate is listed here too, so ``stored`` means "the server says it holds the
  instance after this request", not "this request created it".
- FailureReason 45070 (duplicate, Azure POST) -> ``already_stored``: the derived
  instances have deterministic UIDs, so a duplicate is the same instance.
  45071 (being created or waiting for cleanup) -> ``retryable``, later.
  Any other code -> ``failed``.
- Not listed at all -> ``failed`` with ``failure_reason=None`` and the HTTP status of the
  request (whole-request 400/409 without detail, or an unparseable part on Orthanc).
  The caller may confirm with QIDO (:meth:`DicomWebClient.qido_instance_exists`).
- A 200 without any parseable body is taken at its word (all stored); the HTTP status is
  kept in each result.

FailedAttributesSequence (0074,1048) is reduced to the attribute tags it names: the
service's ErrorComment (0000,0902) text can quote header values (PHI), so it is dropped.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any

__all__ = [
    "FailureReason",
    "StoreResponse",
    "StoreResult",
    "StoreStatus",
    "batch_results",
    "parse_store_response",
]

# DICOM JSON keys (gggg,eeee without punctuation).
_REFERENCED_SOP_SEQUENCE = "00081199"
_FAILED_SOP_SEQUENCE = "00081198"
_REFERENCED_SOP_INSTANCE_UID = "00081155"
_RETRIEVE_URL = "00081190"
_WARNING_REASON = "00081196"
_FAILURE_REASON = "00081197"
_FAILED_ATTRIBUTES_SEQUENCE = "00741048"
_ERROR_COMMENT = "00000902"

_TAG_IN_TEXT = re.compile(r"\(\s*([0-9A-Fa-f]{4})\s*,\s*([0-9A-Fa-f]{4})\s*\)")
_TAG_KEY = re.compile(r"^[0-9A-Fa-f]{8}$")


class StoreStatus(StrEnum):
    """Outcome of one instance."""

    STORED = "stored"
    ALREADY_STORED = "already_stored"
    FAILED = "failed"
    RETRYABLE = "retryable"


class FailureReason(IntEnum):
    """FailureReason (0008,1197) codes the Azure DICOM service documents."""

    PROCESSING_FAILURE = 272
    VALIDATION_FAILED = 43264
    STUDY_UID_MISMATCH = 43265
    DUPLICATE = 45070
    PENDING = 45071


@dataclass(frozen=True, slots=True)
class StoreResult:
    """What happened to one instance.

    ``attempts`` counts the HTTP requests made for its batch (retries included).
    ``failed_attributes`` holds tags such as ``"(0008,0020)"`` from FailedAttributesSequence.
    """

    sop_instance_uid: str
    status: StoreStatus
    http_status: int | None
    failure_reason: int | None = None
    warning_reason: int | None = None
    retrieve_url: str | None = None
    attempts: int = 1
    failed_attributes: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        """True when the server holds the instance (``stored`` or ``already_stored``)."""
        return self.status in (StoreStatus.STORED, StoreStatus.ALREADY_STORED)


@dataclass(frozen=True, slots=True)
class _Referenced:
    retrieve_url: str | None
    warning_reason: int | None
    failed_attributes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class _Failed:
    failure_reason: int | None
    failed_attributes: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class StoreResponse:
    """A parsed Store Instances Response.

    ``parsed`` is False when the body was empty or not DICOM JSON.
    ``unattributed_failures`` counts FailedSOPSequence items without a SOP Instance UID
    (the service could not read the part).
    """

    parsed: bool
    referenced: Mapping[str, _Referenced] = field(default_factory=dict)
    failed: Mapping[str, _Failed] = field(default_factory=dict)
    unattributed_failures: int = 0

    @property
    def has_instance_detail(self) -> bool:
        """True when the body names at least one instance, stored or failed."""
        return bool(self.referenced or self.failed or self.unattributed_failures)


def _values(element: Any) -> list[Any]:
    if isinstance(element, Mapping):
        value = element.get("Value")
        if isinstance(value, list):
            return value
    return []


def _first_str(item: Mapping[str, Any], key: str) -> str | None:
    for value in _values(item.get(key)):
        if isinstance(value, str) and value.strip():
            return value.strip()
    return None


def _first_int(item: Mapping[str, Any], key: str) -> int | None:
    for value in _values(item.get(key)):
        try:
            return int(value)
        except (TypeError, ValueError):
            return None
    return None


def _items(dataset: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    return [item for item in _values(dataset.get(key)) if isinstance(item, Mapping)]


def _format_tag(group: str, element: str) -> str:
    return f"({group.upper()},{element.upper()})"


def _failed_attributes(item: Mapping[str, Any]) -> tuple[str, ...]:
    tags: list[str] = []
    for attribute in _items(item, _FAILED_ATTRIBUTES_SEQUENCE):
        for key in attribute:
            if key == _ERROR_COMMENT:
                for comment in _values(attribute[key]):
                    if isinstance(comment, str):
                        tags.extend(_format_tag(g, e) for g, e in _TAG_IN_TEXT.findall(comment))
            elif _TAG_KEY.match(key):
                tags.append(_format_tag(key[:4], key[4:]))
    return tuple(dict.fromkeys(tags))


def parse_store_response(body: bytes | str | None) -> StoreResponse:
    """Parse a DICOM JSON Store Instances Response; anything else gives ``parsed=False``."""
    if not body:
        return StoreResponse(parsed=False)
    try:
        dataset = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return StoreResponse(parsed=False)
    if isinstance(dataset, list) and len(dataset) == 1:
        dataset = dataset[0]  # some servers wrap the dataset in an array
    if not isinstance(dataset, Mapping) or not (
        _REFERENCED_SOP_SEQUENCE in dataset or _FAILED_SOP_SEQUENCE in dataset
    ):
        return StoreResponse(parsed=False)

    referenced: dict[str, _Referenced] = {}
    for item in _items(dataset, _REFERENCED_SOP_SEQUENCE):
        uid = _first_str(item, _REFERENCED_SOP_INSTANCE_UID)
        if uid is not None:
            referenced[uid] = _Referenced(
                retrieve_url=_first_str(item, _RETRIEVE_URL),
                warning_reason=_first_int(item, _WARNING_REASON),
                failed_attributes=_failed_attributes(item),
            )
    failed: dict[str, _Failed] = {}
    unattributed = 0
    for item in _items(dataset, _FAILED_SOP_SEQUENCE):
        uid = _first_str(item, _REFERENCED_SOP_INSTANCE_UID)
        entry = _Failed(_first_int(item, _FAILURE_REASON), _failed_attributes(item))
        if uid is None:
            unattributed += 1
        else:
            failed[uid] = entry
    return StoreResponse(True, referenced, failed, unattributed)


def _failure_status(reason: int | None) -> StoreStatus:
    if reason == FailureReason.DUPLICATE:
        return StoreStatus.ALREADY_STORED
    if reason == FailureReason.PENDING:
        return StoreStatus.RETRYABLE
    return StoreStatus.FAILED


def batch_results(
    sop_instance_uids: Sequence[str],
    http_status: int,
    response: StoreResponse,
    attempts: int = 1,
) -> list[StoreResult]:
    """One result per instance sent, in order (see the module docstring for the rules)."""
    all_stored = http_status == 200 and not response.parsed
    results: list[StoreResult] = []
    for uid in sop_instance_uids:
        ref = response.referenced.get(uid)
        fail = response.failed.get(uid)
        if ref is not None:
            result = StoreResult(
                uid,
                StoreStatus.STORED,
                http_status,
                warning_reason=ref.warning_reason,
                retrieve_url=ref.retrieve_url,
                attempts=attempts,
                failed_attributes=ref.failed_attributes,
            )
        elif fail is not None:
            result = StoreResult(
                uid,
                _failure_status(fail.failure_reason),
                http_status,
                failure_reason=fail.failure_reason,
                attempts=attempts,
                failed_attributes=fail.failed_attributes,
            )
        elif all_stored:
            result = StoreResult(uid, StoreStatus.STORED, http_status, attempts=attempts)
        else:
            result = StoreResult(uid, StoreStatus.FAILED, http_status, attempts=attempts)
        results.append(result)
    return results
