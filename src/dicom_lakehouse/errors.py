"""One error tree for the package.

Every error the package raises on purpose is a :class:`DicomLakehouseError`.
Messages never carry PHI (header values) or secrets.
"""

from __future__ import annotations

__all__ = [
    "ConfigError",
    "DeriveError",
    "DicomLakehouseError",
    "DicomParseError",
    "DicomWebAuthError",
    "DicomWebDatasetError",
    "DicomWebDependencyError",
    "DicomWebError",
    "DicomWebRequestError",
    "DicomWebResponseError",
    "DicomWebTransientError",
    "StorageArchivedError",
    "StorageAuthError",
    "StorageError",
    "StorageNotFoundError",
    "StorageTooLargeError",
    "TableError",
]


class DicomLakehouseError(Exception):
    """Base of every error raised by dicom_lakehouse."""


class ConfigError(DicomLakehouseError):
    """The configuration is invalid; the message names the bad key."""


class StorageError(DicomLakehouseError):
    """Listing or reading the lake failed."""


class StorageNotFoundError(StorageError):
    """A path that was listed no longer exists (normal for service health files)."""


class DicomParseError(DicomLakehouseError):
    """A file could not be read as DICOM.

    ``reason`` is a short stable code (``empty_file``, ``not_dicom``,
    ``truncated_header``, ...) that lands in the quarantine table.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail


class TableError(DicomLakehouseError):
    """Reading or writing a Delta table failed."""


class DicomWebError(DicomLakehouseError):
    """A DICOMweb request failed."""


class DicomWebDatasetError(DicomWebError):
    """A dataset cannot be sent (implicit VR, a missing UID, cannot be encoded).

    ``index`` is the position of the dataset in the caller's input; the message
    names attributes, never their values.
    """

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message if index is None else f"instance #{index}: {message}")
        self.index = index


class DicomWebResponseError(DicomWebError):
    """A DICOMweb request got an answer (or none) that fails the whole request.

    ``http_status`` is ``None`` when no response arrived (connection error,
    timeout); ``attempts`` counts the requests sent, retries included; ``condition``
    is a short stable code of what the attempts met (``outcome_unknown``: sent, no
    answer, the server may have acted; ``connection_error``: never connected;
    ``http_503``, ...) when the raiser knows it.
    """

    def __init__(
        self,
        message: str,
        *,
        http_status: int | None = None,
        attempts: int = 1,
        condition: str | None = None,
    ) -> None:
        super().__init__(message)
        self.http_status = http_status
        self.attempts = attempts
        self.condition = condition


class DicomWebAuthError(DicomWebResponseError):
    """Credentials are missing, cannot be obtained, or were refused (HTTP 401/403)."""


class DicomWebTransientError(DicomWebResponseError):
    """A transient condition (HTTP 408/429/503/504, connection error, timeout) outlasted the
    configured attempts."""


class DicomWebDependencyError(DicomWebResponseError):
    """HTTP 424: the DICOM service could not reach its data lake or key vault."""


class DicomWebRequestError(DicomWebResponseError):
    """The server refused the request as a whole without per-instance detail
    (404, 405, 406, 413, 415, 5xx, ...)."""


class StorageAuthError(StorageError):
    """The store refused the identity (HTTP 401/403) or no token could be had; stop the job."""


class StorageArchivedError(StorageError):
    """The file sits in the Archive tier and cannot be read (quarantine reason ``archived``)."""

    quarantine_reason = "archived"


class StorageTooLargeError(StorageError):
    """A path that reads whole files (``lake.access: hadoop``) will not read this one
    (quarantine reason ``file_too_large``)."""

    quarantine_reason = "file_too_large"


class DeriveError(DicomLakehouseError):
    """A derived object (secondary capture, segmentation) cannot be made from a series.

    ``reason`` is a short stable code (``empty_series``, ``not_an_image``,
    ``undecodable_pixels``, ``model_failed``, ...) for the caller's result table; the
    message names attributes, SOP classes and transfer syntaxes, never header values.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
