"""Azure Data Lake Storage Gen2 (and plain Blob Storage) behind the ``LakeBackend`` protocol.

Roots: ``abfss://{container}@{account}.dfs.core.windows.net[/prefix]``, or
``https://{account}.{dfs|blob}.core.windows.net/{container}[/prefix]``. Paths the
protocol sees are relative to the container root; a ``/prefix`` in the root is
prepended and stripped transparently.

Listing. ``list_dir`` and the unsharded ``list_tree`` use the dfs ``List Paths`` API
when a dfs endpoint is in use (``listing=dfs``; or ``auto``, the default, when the root
names the dfs endpoint and the connection has one: a connection string whose
BlobEndpoint is not ``{account}.blob.core.*``-style, such as Azurite's, has none), and
the blob ``List Blobs`` API otherwise. In ``auto`` mode a dfs endpoint that refuses the
account (HTTP 400/409) is given up for blob listing, once, with a warning. Sharded
``list_tree`` calls always use the blob endpoint, which every ADLS account has,
because only ``List Blobs`` filters on a name prefix:

* a digit shard ``"13"`` is one flat listing of ``{folder}/13``;
* the rest shard ``~`` is one listing of ``{folder}/`` with the delimiter ``_``. The
  service names instances ``{3 digits}_{watermark}.dcm``, so that listing collapses a
  partition's instance files into at most 900 ``BlobPrefix`` groups, all of which
  belong to digit shards and are skipped. Rest-shard entries are yielded directly
  (names without ``_``), or listed once more: one flat listing per rest group without
  ``/`` (``abc_``) and one per rest first-level folder (``abc/``, deduplicated).
  Each name falls in exactly one of those sets, so every shard lists every entry
  once and all shards together equal one full recursive listing. The grouping only
  saves work for flat partitions: under the legacy layout
  (``{study}/{series}/{sop}_{watermark}.dcm``) every file is its own group, so the
  rest shard enumerates the tree once more (use ``digits=0`` there).

Flat blob listings of hierarchical-namespace accounts include folders as zero-length
blobs with metadata ``hdi_isfolder=true``: they come back as ``FileInfo(is_dir=True)``
and are never recursed into (the flat listing already holds their contents).

Credentials, first match wins: ``AZURE_STORAGE_CONNECTION_STRING``; the account key
or SAS token in the environment variable named by ``account_key_env`` /
``sas_token_env``; a service principal from ``AZURE_CLIENT_ID`` / ``AZURE_TENANT_ID``
/ ``AZURE_CLIENT_SECRET``; ``DefaultAzureCredential``. Secrets are never read from
the options, never logged and never put in exception messages.

Clients are created lazily, once per backend (``open_backend`` keeps one backend per
process), and share one HTTP connection pool; ``read_range`` is safe to call from
many threads. Transient faults (408, 429, 5xx, timeouts, resets) are retried by
azure-core's ``RetryPolicy`` with exponential backoff, configured by the options.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import requests
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.core.exceptions import AzureError, ClientAuthenticationError, HttpResponseError
from azure.core.pipeline.policies import RetryMode, RetryPolicy
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import BlobPrefix, BlobProperties, BlobServiceClient, LocationMode
from requests.adapters import HTTPAdapter
from urllib3.util.retry import Retry

from dicom_lakehouse.errors import (
    ConfigError,
    StorageArchivedError,
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
)
from dicom_lakehouse.lake.backend import BackendSpec, FileInfo
from dicom_lakehouse.lake.layout import REST_SHARD, shard_key

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential
    from azure.core.pipeline import PipelineRequest, PipelineResponse
    from azure.core.pipeline.transport import HttpTransport
    from azure.storage.blob import ContainerClient
    from azure.storage.filedatalake import FileSystemClient, PathProperties

__all__ = [
    "CONNECTION_STRING_ENV",
    "LISTING_MODES",
    "AdlsBackend",
    "AdlsLocation",
    "AdlsOptions",
    "parse_root",
]

_LOGGER = logging.getLogger(__name__)

CONNECTION_STRING_ENV = "AZURE_STORAGE_CONNECTION_STRING"
LISTING_MODES = ("auto", "blob", "dfs")
SCHEMES = ("abfss", "abfs", "https")

_SP_ENV = ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET")
# Keys that would put a secret in a config file: refused with a pointer to *_env.
_SECRET_KEYS = frozenset(
    {"account_key", "sas_token", "sas", "connection_string", "client_secret", "key", "password"}
)
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_CONTAINER_RE = re.compile(r"[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}")
# {account}.{blob|dfs}.{suffix} for public and sovereign clouds and DNS-zone endpoints.
_AZURE_HOST_RE = re.compile(
    r"(?P<account>[a-z0-9]{3,24})(?P<zone>\.z[0-9]+)?\.(?P<service>blob|dfs)\."
    r"(?P<suffix>core\.[a-z0-9.-]+|storage\.azure\.net)"
)
# Azurite's well-known development account (public, documented by Microsoft).
_DEV_ACCOUNT = "devstoreaccount1"
_DEV_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_DEV_BLOB_ENDPOINT = f"http://127.0.0.1:10000/{_DEV_ACCOUNT}"

_GROUP_DELIMITER = "_"
_FOLDER_META = "hdi_isfolder"
_ARCHIVE = "Archive"
# dfs answers that mean "this account cannot be listed here" (auto mode then uses blob).
_DFS_REFUSED_STATUS = (400, 409)

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class AdlsOptions:
    """Backend options, from the config's ``lake.storage`` mapping (strings, no secrets).

    Keys: ``listing`` (``auto``/``blob``/``dfs``), ``account_key_env`` and
    ``sas_token_env`` (NAMES of environment variables holding the secret),
    ``retry_total``, ``retry_backoff`` (seconds: azure-core retries once at once, then
    after ``retry_backoff * 2**(n-1)``), ``retry_backoff_max`` (seconds, the cap),
    ``connection_timeout`` and ``read_timeout`` (seconds), ``max_connections``
    (HTTP pool size; the ingest reads from up to 16 threads), ``page_size`` (entries
    per listing request, at most 5000).
    """

    listing: str = "auto"
    account_key_env: str | None = None
    sas_token_env: str | None = None
    retry_total: int = 6
    retry_backoff: float = 0.5
    retry_backoff_max: float = 30.0
    connection_timeout: float = 10.0
    read_timeout: float = 60.0
    max_connections: int = 32
    page_size: int = 5000

    def __post_init__(self) -> None:
        if self.listing not in LISTING_MODES:
            raise ConfigError(
                f"lake.storage.listing must be one of {', '.join(LISTING_MODES)}, "
                f"not {self.listing!r}"
            )
        for key in ("account_key_env", "sas_token_env"):
            value = getattr(self, key)
            if value is not None and not _ENV_NAME_RE.fullmatch(value):
                # Never echo the value: a secret pasted here by mistake must not leak.
                raise ConfigError(
                    f"lake.storage.{key} must be the NAME of an environment variable "
                    "(letters, digits, '_'), not the secret itself"
                )
        if self.account_key_env and self.sas_token_env:
            raise ConfigError("lake.storage: set account_key_env or sas_token_env, not both")
        checks: tuple[tuple[str, float, float], ...] = (
            ("retry_total", 0, 100),
            ("retry_backoff", 0, 600),
            ("retry_backoff_max", 0, 3600),
            ("connection_timeout", 0.001, 3600),
            ("read_timeout", 0.001, 3600),
            ("max_connections", 1, 1024),
            ("page_size", 1, 5000),
        )
        for key, low, high in checks:
            value = getattr(self, key)
            if not low <= value <= high:
                raise ConfigError(f"lake.storage.{key} must be between {low} and {high}")

    @classmethod
    def from_pairs(cls, pairs: Iterable[tuple[str, str]]) -> AdlsOptions:
        """Parse ``(key, value)`` string pairs; unknown keys and bad values raise ConfigError."""
        known = {f.name: f for f in fields(cls)}
        values: dict[str, Any] = {}
        for key, raw in pairs:
            if key.lower() in _SECRET_KEYS:
                raise ConfigError(
                    f"lake.storage.{key}: secrets are never read from the config; put the "
                    "secret in an environment variable and name it with account_key_env, "
                    f"sas_token_env or {CONNECTION_STRING_ENV}"
                )
            if key not in known:
                raise ConfigError(
                    f"unknown lake.storage option {key!r} for an ADLS root; "
                    f"known: {', '.join(sorted(known))}"
                )
            if key in values:
                raise ConfigError(f"lake.storage.{key} is given twice")
            values[key] = _convert(key, known[key].type, str(raw))
        return cls(**values)


def _convert(key: str, kind: object, raw: str) -> object:
    text = raw.strip()
    if kind in ("int", int):
        try:
            return int(text)
        except ValueError:
            raise ConfigError(f"lake.storage.{key} must be an integer") from None
    if kind in ("float", float):
        try:
            return float(text)
        except ValueError:
            raise ConfigError(f"lake.storage.{key} must be a number (seconds)") from None
    if key in ("account_key_env", "sas_token_env"):
        return text or None
    return text.lower()


@dataclass(frozen=True, slots=True)
class AdlsLocation:
    """Where an ADLS root points: account, container and an optional path prefix."""

    account: str
    container: str
    prefix: str = ""
    dfs_host: str | None = None
    blob_host: str | None = None
    prefers_dfs: bool = True

    @property
    def where(self) -> str:
        """``account/container``, for messages (never a secret)."""
        return f"{self.account}/{self.container}"


def parse_root(root: str) -> AdlsLocation:
    """Parse an ``abfss://`` or ``https://`` lake root."""
    parts = urlsplit(root)
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigError(f"an ADLS root must start with abfss:// or https://, not {scheme!r}")
    if parts.query or parts.fragment:
        # Do not echo the root: the query is likely a SAS token.
        raise ConfigError(
            "the ADLS root must not carry a query string or fragment; a SAS token belongs "
            "in the environment variable named by sas_token_env"
        )
    if parts.password is not None:
        raise ConfigError("the ADLS root must not carry a password")
    host = (parts.hostname or "").lower()
    if not host:
        raise ConfigError(f"the ADLS root {root!r} has no host")
    path = parts.path.strip("/")
    if scheme == "https":
        if parts.username:
            raise ConfigError(f"an https ADLS root takes no user part: {root!r}")
        container, _, prefix = path.partition("/")
    else:
        container, prefix = parts.username or "", path
    if not _CONTAINER_RE.fullmatch(container):
        raise ConfigError(f"the ADLS root {root!r} does not name a valid container")
    segments = prefix.split("/") if prefix else []
    if any(seg in ("", ".", "..") for seg in segments):
        raise ConfigError(f"the ADLS root {root!r} has an empty or relative path segment")
    match = _AZURE_HOST_RE.fullmatch(host)
    if match is None:
        # An emulator-style host: usable only with a connection string.
        return AdlsLocation(host.split(".", 1)[0], container, prefix)
    zone = match["zone"] or ""
    account, suffix = match["account"], match["suffix"]
    return AdlsLocation(
        account,
        container,
        prefix,
        dfs_host=f"{account}{zone}.dfs.{suffix}",
        blob_host=f"{account}{zone}.blob.{suffix}",
        prefers_dfs=match["service"] == "dfs",
    )


@dataclass(frozen=True, slots=True)
class _Connection:
    """Resolved endpoints and credential (``credential`` may hold a secret: never log it)."""

    blob_url: str
    dfs_url: str | None
    credential: Any
    kind: str


def _parse_connection_string(text: str) -> dict[str, str]:
    values: dict[str, str] = {}
    for part in text.split(";"):
        item = part.strip()
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep:
            raise ConfigError(f"{CONNECTION_STRING_ENV} is malformed (expected key=value pairs)")
        values[key.strip().lower()] = value.strip()
    return values


def _dfs_url_for(blob_url: str) -> str | None:
    """The dfs endpoint beside an Azure blob endpoint; ``None`` for emulators and others."""
    parts = urlsplit(blob_url)
    match = _AZURE_HOST_RE.fullmatch((parts.hostname or "").lower())
    if match is None or match["service"] != "blob":
        return None
    host = f"{match['account']}{match['zone'] or ''}.dfs.{match['suffix']}"
    return f"{parts.scheme}://{host}"


def _account_of(blob_url: str) -> str | None:
    parts = urlsplit(blob_url)
    match = _AZURE_HOST_RE.fullmatch((parts.hostname or "").lower())
    if match is not None:
        return match["account"]
    first = parts.path.strip("/").split("/", 1)[0]
    return first or None  # path-style (emulator) URL: the account is the first segment


def _from_connection_string(text: str, location: AdlsLocation) -> _Connection:
    values = _parse_connection_string(text)
    if values.get("usedevelopmentstorage", "").lower() == "true":
        values = {
            "accountname": _DEV_ACCOUNT,
            "accountkey": _DEV_KEY,
            "blobendpoint": _DEV_BLOB_ENDPOINT,
        }
    account = values.get("accountname")
    blob_url = values.get("blobendpoint", "").rstrip("/")
    if not blob_url:
        if not account:
            raise ConfigError(f"{CONNECTION_STRING_ENV} has neither BlobEndpoint nor AccountName")
        protocol = values.get("defaultendpointsprotocol", "https")
        suffix = values.get("endpointsuffix", "core.windows.net")
        blob_url = f"{protocol}://{account}.blob.{suffix}"
    account = account or _account_of(blob_url)
    if account and account.lower() != location.account.lower():
        raise ConfigError(
            f"{CONNECTION_STRING_ENV} is for storage account {account!r} but the lake root "
            f"names account {location.account!r}"
        )
    credential: Any = None
    if values.get("accountkey"):
        credential = AzureNamedKeyCredential(account or location.account, values["accountkey"])
    elif values.get("sharedaccesssignature"):
        credential = AzureSasCredential(values["sharedaccesssignature"].lstrip("?"))
    return _Connection(blob_url, _dfs_url_for(blob_url), credential, "connection string")


def _secret_from_env(option: str, name: str, environ: Mapping[str, str]) -> str:
    value = environ.get(name, "").strip()
    if not value:
        raise ConfigError(f"lake.storage.{option} names ${name}, which is not set or empty")
    return value


def _token_credential(environ: Mapping[str, str]) -> tuple[TokenCredential, str]:
    if all(environ.get(name) for name in _SP_ENV):
        from azure.identity import ClientSecretCredential

        credential = ClientSecretCredential(
            tenant_id=environ["AZURE_TENANT_ID"],
            client_id=environ["AZURE_CLIENT_ID"],
            client_secret=environ["AZURE_CLIENT_SECRET"],
        )
        return credential, "service principal (AZURE_CLIENT_ID)"
    from azure.identity import DefaultAzureCredential

    return DefaultAzureCredential(), "DefaultAzureCredential"


def _resolve_connection(
    location: AdlsLocation, options: AdlsOptions, environ: Mapping[str, str]
) -> _Connection:
    """Pick endpoints and credential: connection string, key/SAS env, service principal,
    then DefaultAzureCredential."""
    text = environ.get(CONNECTION_STRING_ENV, "").strip()
    if text:
        connection = _from_connection_string(text, location)
    else:
        if location.blob_host is None or location.dfs_host is None:
            raise ConfigError(
                f"the lake root's host is not an Azure storage endpoint; set "
                f"{CONNECTION_STRING_ENV} to reach account {location.account!r}"
            )
        blob_url = f"https://{location.blob_host}"
        dfs_url = f"https://{location.dfs_host}"
        credential: Any
        if options.account_key_env:
            key = _secret_from_env("account_key_env", options.account_key_env, environ)
            credential = AzureNamedKeyCredential(location.account, key)
            kind = f"account key from ${options.account_key_env}"
        elif options.sas_token_env:
            sas = _secret_from_env("sas_token_env", options.sas_token_env, environ)
            credential, kind = (
                AzureSasCredential(sas.lstrip("?")),
                f"SAS from ${options.sas_token_env}",
            )
        else:
            credential, kind = _token_credential(environ)
        connection = _Connection(blob_url, dfs_url, credential, kind)
    if options.listing == "blob" or (options.listing == "auto" and not location.prefers_dfs):
        return _Connection(connection.blob_url, None, connection.credential, connection.kind)
    if options.listing == "dfs" and connection.dfs_url is None:
        raise ConfigError(
            "lake.storage.listing=dfs needs a dfs endpoint ({account}.dfs.core.windows.net); "
            "this connection has none (an emulator?): use listing=blob or auto"
        )
    return connection


class _StorageRetryPolicy(RetryPolicy):
    """azure-core's RetryPolicy, fitted to the storage pipeline (primary location only).

    The storage SDKs put location options in the request context that only their own
    retry policy consumes, and read ``location_mode`` back from the response.
    """

    _STORAGE_OPTIONS = ("hosts", "retry_to_secondary", "retry_hook")

    def send(self, request: PipelineRequest[Any]) -> PipelineResponse[Any, Any]:
        options = request.context.options
        mode = options.pop("location_mode", LocationMode.PRIMARY)
        for key in self._STORAGE_OPTIONS:
            options.pop(key, None)
        response = super().send(request)
        response.http_response.location_mode = mode
        return response

    def increment(
        self, settings: dict[str, Any], response: Any = None, error: Exception | None = None
    ) -> bool:
        retrying = super().increment(settings, response=response, error=error)
        if retrying:
            if error is not None:
                cause = type(error).__name__
            else:
                cause = f"HTTP {getattr(response.http_response, 'status_code', '?')}"
            attempt = self.total_retries - settings["total"]
            _LOGGER.info(
                "transient storage fault (%s): retry %d of %d", cause, attempt, self.total_retries
            )
        return retrying


def _retry_policy(options: AdlsOptions) -> RetryPolicy:
    return _StorageRetryPolicy(
        retry_total=options.retry_total,
        retry_connect=options.retry_total,
        retry_read=options.retry_total,
        retry_status=options.retry_total,
        retry_backoff_factor=options.retry_backoff,
        retry_backoff_max=options.retry_backoff_max,
        retry_mode=RetryMode.Exponential,
    )


def _session() -> requests.Session:
    """A requests session that reads the environment once, not on every request.

    A trusting session scans the environment twice per request (a fifth of the
    client's CPU per ranged read). A CA bundle from the environment is copied to the
    session; with proxy variables set the session keeps reading them itself."""
    session = requests.Session()
    if not any("proxy" in key.lower() for key in os.environ):
        session.trust_env = False
        bundle = os.environ.get("REQUESTS_CA_BUNDLE") or os.environ.get("CURL_CA_BUNDLE")
        if bundle:
            session.verify = bundle
    return session


def _transport(options: AdlsOptions) -> RequestsTransport:
    """One requests session whose pool holds ``max_connections`` connections per host."""
    session = _session()
    adapter = HTTPAdapter(
        pool_connections=4,
        pool_maxsize=options.max_connections,
        # Retries belong to the azure-core policy, not urllib3 (as azure-core configures it).
        max_retries=Retry(total=False, redirect=False, raise_on_status=False),
    )
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return RequestsTransport(
        session=session,
        session_owner=True,
        connection_timeout=options.connection_timeout,
        read_timeout=options.read_timeout,
    )


@dataclass(frozen=True, slots=True)
class _Clients:
    transport: HttpTransport[Any, Any]
    container: ContainerClient
    file_system: FileSystemClient | None
    kind: str


def _utc(value: datetime | None) -> datetime | None:
    if value is None:
        return None
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _etag(value: str | None) -> str | None:
    return value.strip('"') if value else None


def _is_folder_marker(metadata: Mapping[str, str] | None) -> bool:
    return any(
        key.lower() == _FOLDER_META and str(value).lower() == "true"
        for key, value in (metadata or {}).items()
    )


def _error_code(exc: BaseException) -> str | None:
    code = getattr(exc, "error_code", None)
    if code is None:
        response = getattr(exc, "response", None)
        headers = getattr(response, "headers", None) or {}
        code = headers.get("x-ms-error-code")
    return str(getattr(code, "value", code)) if code else None


class AdlsBackend:
    """A container (optionally a folder in it) of an ADLS Gen2 or Blob Storage account."""

    def __init__(
        self,
        root: str,
        options: AdlsOptions | None = None,
        *,
        transport: HttpTransport[Any, Any] | None = None,
    ) -> None:
        """``transport`` replaces the HTTP transport (tests replay recorded responses)."""
        self.root = root
        self.location = parse_root(root)
        self.options = options or AdlsOptions()
        self._transport_override = transport
        self._lock = threading.Lock()
        self._clients: _Clients | None = None
        self._dfs_refused = False
        self._group_delimiter_refused = False

    @classmethod
    def from_spec(cls, spec: BackendSpec) -> AdlsBackend:
        """Build from a picklable spec (on the driver or on an executor)."""
        return cls(spec.root, AdlsOptions.from_pairs(spec.options))

    def __reduce__(self) -> tuple[Any, ...]:
        # Never ship live clients: the copy reconnects lazily where it lands.
        return (type(self), (self.root, self.options))

    def __repr__(self) -> str:
        return f"AdlsBackend({self.root!r}, listing={self.options.listing!r})"

    # -- clients ---------------------------------------------------------------

    def _get_clients(self) -> _Clients:
        clients = self._clients
        if clients is None:
            with self._lock:
                if self._clients is None:
                    self._clients = self._connect()
                clients = self._clients
        return clients

    def _connect(self) -> _Clients:
        connection = _resolve_connection(self.location, self.options, os.environ)
        transport = self._transport_override or _transport(self.options)
        common: dict[str, Any] = {
            "transport": transport,
            "retry_policy": _retry_policy(self.options),
        }
        blob_service = BlobServiceClient(connection.blob_url, connection.credential, **common)
        container = blob_service.get_container_client(self.location.container)
        file_system = None
        if connection.dfs_url is not None:
            from azure.storage.filedatalake import DataLakeServiceClient

            lake = DataLakeServiceClient(connection.dfs_url, connection.credential, **common)
            file_system = lake.get_file_system_client(self.location.container)
        _LOGGER.info(
            "ADLS backend for %s (credential: %s, listing: %s)",
            self.location.where,
            connection.kind,
            "dfs" if file_system is not None else "blob",
        )
        return _Clients(transport, container, file_system, connection.kind)

    def close(self) -> None:
        """Close the connection pool (a later call reconnects)."""
        with self._lock:
            clients, self._clients = self._clients, None
        if clients is not None and self._transport_override is None:
            clients.transport.close()

    @property
    def uses_dfs(self) -> bool:
        """Whether ``list_dir`` and unsharded ``list_tree`` go to the dfs endpoint."""
        return self._get_clients().file_system is not None and not self._dfs_refused

    # -- names -----------------------------------------------------------------

    def _name(self, path: str) -> str:
        rel = path.strip("/")
        prefix = self.location.prefix
        return f"{prefix}/{rel}" if prefix and rel else (prefix or rel)

    def _rel(self, name: str) -> str:
        prefix = self.location.prefix
        if prefix and name.startswith(prefix + "/"):
            return name[len(prefix) + 1 :]
        return name

    def _blob_info(self, blob: BlobProperties) -> FileInfo:
        is_dir = _is_folder_marker(blob.metadata)
        tier = blob.blob_tier
        return FileInfo(
            self._rel(blob.name),
            0 if is_dir else int(blob.size or 0),
            _utc(blob.last_modified),
            _etag(blob.etag),
            is_dir=is_dir,
            access_tier=None if is_dir or tier is None else str(getattr(tier, "value", tier)),
        )

    def _path_info(self, path: PathProperties) -> FileInfo:
        return FileInfo(
            self._rel(path.name),
            int(path.content_length or 0),
            _utc(path.last_modified),
            _etag(path.etag),
            is_dir=bool(path.is_directory),
        )

    # -- errors ----------------------------------------------------------------

    def _translate(self, exc: AzureError, action: str, missing: str) -> StorageError:
        """Map an SDK error to the package's tree; the message never holds a secret."""
        where = self.location.where
        status = getattr(exc, "status_code", None)
        code = _error_code(exc)
        detail = f"HTTP {status} {code}" if code else f"HTTP {status}"
        if status in (401, 403):
            return StorageAuthError(
                f"{action}: {where} refused the request ({detail}); check the identity has "
                f"Storage Blob Data Reader on {where} (and that the account's network rules "
                "let this machine in)"
            )
        if status is None and isinstance(exc, ClientAuthenticationError):
            return StorageAuthError(
                f"{action}: could not authenticate to {where} ({type(exc).__name__}); check "
                "the credentials configured for the lake"
            )
        if status == 404:
            if code in ("ContainerNotFound", "FilesystemNotFound"):
                return StorageNotFoundError(f"container {where} does not exist")
            return StorageNotFoundError(missing)
        if status == 409 and code == "BlobArchived":
            return StorageArchivedError(f"{action}: the blob is in the Archive tier")
        if status is not None:
            return StorageError(f"{action} failed on {where} ({detail})")
        return StorageError(
            f"{action} failed on {where} after {self.options.retry_total} retries "
            f"({type(exc).__name__})"
        )

    def _guard(self, items: Iterable[_T], action: str, missing: str) -> Iterator[_T]:
        try:
            yield from items
        except AzureError as exc:
            raise self._translate(exc, action, missing) from exc

    # -- listing ---------------------------------------------------------------

    def _blob_flat(self, prefix: str) -> Iterator[FileInfo]:
        container = self._get_clients().container
        blobs = container.list_blobs(
            name_starts_with=prefix or None,
            include=["metadata"],
            results_per_page=self.options.page_size,
        )
        for blob in self._guard(blobs, "listing", f"folder not found: {prefix}"):
            yield self._blob_info(blob)

    def _dfs_paths(self, folder: str, recursive: bool) -> Iterator[FileInfo]:
        file_system = self._get_clients().file_system
        assert file_system is not None
        paths = file_system.get_paths(
            path=folder or None, recursive=recursive, max_results=self.options.page_size
        )
        for path in paths:
            yield self._path_info(path)

    def _dfs_or_blob(
        self,
        dfs: Callable[[], Iterator[FileInfo]],
        blob: Callable[[], Iterator[FileInfo]],
        folder: str,
    ) -> Iterator[FileInfo]:
        """List through dfs; in ``auto`` mode fall back to blob if dfs refuses the account."""
        if self.uses_dfs:
            started = False
            try:
                for info in dfs():
                    started = True
                    yield info
                return
            except HttpResponseError as exc:
                refused = exc.status_code in _DFS_REFUSED_STATUS
                if started or not refused or self.options.listing == "dfs":
                    raise self._translate(exc, "listing", f"folder not found: {folder}") from exc
                _LOGGER.warning(
                    "the dfs endpoint of %s refused a listing (HTTP %s %s): listing through "
                    "the blob endpoint from now on",
                    self.location.where,
                    exc.status_code,
                    _error_code(exc),
                )
                self._dfs_refused = True
            except AzureError as exc:
                raise self._translate(exc, "listing", f"folder not found: {folder}") from exc
        yield from blob()

    def _blob_children(self, folder: str) -> Iterator[FileInfo]:
        container = self._get_clients().container
        prefix = f"{folder}/" if folder else ""
        items = container.walk_blobs(
            name_starts_with=prefix or None,
            delimiter="/",
            include=["metadata"],
            results_per_page=self.options.page_size,
        )
        folders: set[str] = set()  # a HNS folder shows as a marker blob AND as a prefix
        empty = True
        for item in self._guard(items, "listing", f"folder not found: {folder}"):
            empty = False
            if isinstance(item, BlobPrefix):
                name = item.name.rstrip("/")
                if name not in folders:
                    folders.add(name)
                    yield FileInfo(self._rel(name), 0, is_dir=True)
                continue
            info = self._blob_info(item)
            if info.is_dir:
                if item.name in folders:
                    continue
                folders.add(item.name)
            yield info
        if empty and folder and not self._is_folder(folder):
            raise StorageNotFoundError(f"folder not found: {self._rel(folder)}")

    def _is_folder(self, name: str) -> bool:
        """Whether an empty listing is an existing (hierarchical-namespace) empty folder."""
        blob = self._get_clients().container.get_blob_client(name)
        try:
            properties = blob.get_blob_properties()
        except AzureError as exc:
            error = self._translate(exc, "checking a folder", f"folder not found: {name}")
            if isinstance(error, StorageNotFoundError):
                return False
            raise error from exc
        return _is_folder_marker(properties.metadata)

    def list_dir(self, prefix: str) -> Iterator[FileInfo]:
        """The direct children of ``prefix`` (folders as ``is_dir`` entries).

        Raises :class:`StorageNotFoundError` when the folder does not exist.
        """
        folder = self._name(prefix)
        _LOGGER.debug("list_dir %s", folder)
        return self._dfs_or_blob(
            lambda: self._dfs_paths(folder, recursive=False),
            lambda: self._blob_children(folder),
            folder,
        )

    def list_tree(self, prefix: str, shard: str, digits: int) -> Iterator[FileInfo]:
        """Every entry below ``prefix`` whose first segment falls in ``shard``.

        ``digits <= 0`` lists the whole tree. Folder entries (HNS folder markers, dfs
        directories) come back as ``is_dir`` entries. Blob listings cannot tell a missing
        folder from an empty one: both list as empty (dfs raises StorageNotFoundError).
        """
        folder = self._name(prefix)
        base = f"{folder}/" if folder else ""
        if digits <= 0:
            _LOGGER.debug("list_tree %s (whole tree)", folder)
            return self._dfs_or_blob(
                lambda: self._dfs_paths(folder, recursive=True),
                lambda: self._blob_flat(base),
                folder,
            )
        key = shard or REST_SHARD
        _LOGGER.debug("list_tree %s shard %s/%s", folder, key, digits)
        if key == REST_SHARD:
            return self._rest_shard(base, digits)
        if shard_key(key, digits) != key:
            raise ValueError(f"{key!r} is not a listing shard for digits={digits}")
        return self._blob_flat(base + key)

    def _rest_shard(self, base: str, digits: int) -> Iterator[FileInfo]:
        if not self._group_delimiter_refused:
            started = False
            try:
                for info in self._rest_shard_by(base, digits, _GROUP_DELIMITER):
                    started = True
                    yield info
                return
            except HttpResponseError as exc:
                if started or exc.status_code != 400:
                    raise self._translate(exc, "listing", f"folder not found: {base}") from exc
                _LOGGER.warning(
                    "%s refused a listing with delimiter %r (HTTP 400 %s): the rest shard "
                    "is listed folder by folder from now on",
                    self.location.where,
                    _GROUP_DELIMITER,
                    _error_code(exc),
                )
                self._group_delimiter_refused = True
            except AzureError as exc:
                raise self._translate(exc, "listing", f"folder not found: {base}") from exc
        yield from self._guard(
            self._rest_shard_by(base, digits, "/"), "listing", f"folder not found: {base}"
        )

    def _rest_shard_by(self, base: str, digits: int, delimiter: str) -> Iterator[FileInfo]:
        """The rest shard from one delimited listing plus follow-ups (see the module doc)."""
        container = self._get_clients().container
        items = container.walk_blobs(
            name_starts_with=base or None,
            delimiter=delimiter,
            include=["metadata"],
            results_per_page=self.options.page_size,
        )
        follow: list[str] = []
        folders: set[str] = set()
        for item in items:
            rel = item.name[len(base) :]
            slash = rel.find("/")
            head = rel[:slash] if slash >= 0 else rel
            # A group "abc_" fixes the first `digits` characters of every name in it.
            if shard_key(head, digits) != REST_SHARD:
                continue
            if slash >= 0:
                if head not in folders:
                    folders.add(head)
                    follow.append(f"{base}{head}/")
            elif isinstance(item, BlobPrefix):
                follow.append(item.name)
            else:
                yield self._blob_info(item)
        for prefix in follow:
            yield from self._blob_flat(prefix)

    # -- reading ---------------------------------------------------------------

    def read_range(self, path: str, offset: int, length: int) -> bytes:
        """Bytes ``[offset, offset+length)`` of ``path`` (fewer at the end of the file).

        Raises :class:`StorageNotFoundError` when the file is gone and
        :class:`StorageArchivedError` when it is in the Archive tier.
        """
        if offset < 0 or length < 0:
            raise ValueError("offset and length must not be negative")
        if length == 0:
            return b""
        blob = self._get_clients().container.get_blob_client(self._name(path))
        try:
            stream = blob.download_blob(offset=offset, length=length, max_concurrency=1)
            return stream.readall()
        except HttpResponseError as exc:
            if exc.status_code == 416:
                return b""  # the range starts at or after the end of the file
            raise self._translate(
                exc, "reading a file", "file vanished before it was read"
            ) from exc
        except AzureError as exc:
            raise self._translate(
                exc, "reading a file", "file vanished before it was read"
            ) from exc
