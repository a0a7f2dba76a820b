"""The DICOMweb store behind a small protocol, and its one HTTP implementation.

:class:`DicomStore` is what a job needs: datasets in, one :class:`StoreResult` per
instance out. :class:`DicomWebClient` implements it with STOW-RS over ``requests``
and adds the QIDO-RS / WADO-RS look-ups used to confirm stored objects.

Why ``requests`` and not ``dicomweb-client``: its ``store_instances`` calls
``raise_for_status()``, so the FailedSOPSequence of a 400/409 answer (which on Orthanc
also lists instances that *were* stored) reaches the caller only inside an exception;
a 202 is only logged; it reads the response Content-Type by exact match (Orthanc sends
none with 400/409); it has no PUT (upsert on the Azure service), no byte or count cap
per request and no bounded concurrency; and its retries (``retrying``) cannot honour
Retry-After or an injectable sleep. The part we need (one multipart body, one JSON
answer) is small, and ``requests`` is already installed through ``azure-core``.

Behaviour worth knowing:

- Instances are sent in batches (``max_batch_instances``, ``max_batch_bytes``) by up to
  ``concurrency`` threads sharing one ``requests.Session`` (a connection pool of the
  same size). Results come back in input order.
- Retries, with exponential backoff and jitter, happen on HTTP 408/429/503/504 and on
  connection errors and timeouts only (Retry-After is honoured up to ``backoff_max``).
  A POST retried after a read timeout may find its instances stored: the Azure service
  then answers 45070, which counts as ``already_stored``. When retries run out, the
  error's ``condition`` says ``outcome_unknown`` if any attempt may have reached the
  server and got no answer (a read timeout, a connection dropped mid-request), else
  ``connection_error`` (never connected) or ``http_{status}``.
- 400/409 give per-instance ``failed`` results (with the detail the body has); 401/403
  raise :class:`DicomWebAuthError`, 424 :class:`DicomWebDependencyError`, exhausted
  retries :class:`DicomWebTransientError`, any other status without per-instance detail
  :class:`DicomWebRequestError`. When one batch raises, batches not yet started are
  cancelled and the error propagates; storing again is safe (duplicates are
  ``already_stored``; PUT replaces).
- Logs carry counts, statuses and operation names, never UIDs, header values or secrets.
"""

from __future__ import annotations

import logging
import random
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from io import BytesIO
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, NoReturn, Protocol, Self, runtime_checkable
from urllib.parse import quote, urlsplit

import requests
from pydicom import dcmread
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from requests.adapters import HTTPAdapter
from requests.auth import AuthBase
from urllib3.exceptions import NewConnectionError

from dicom_lakehouse.dicomweb._stow import (
    EncodedInstance,
    check_dataset,
    encode_dataset,
    iter_batches,
    multipart_parts,
    multipart_related,
)
from dicom_lakehouse.dicomweb.auth import (
    DICOM_SCOPE,
    BasicAuth,
    EntraTokenAuth,
    describe_auth,
    password_from_env,
)
from dicom_lakehouse.dicomweb.response import (
    StoreResult,
    StoreStatus,
    batch_results,
    parse_store_response,
)
from dicom_lakehouse.errors import (
    ConfigError,
    DicomWebAuthError,
    DicomWebDependencyError,
    DicomWebError,
    DicomWebRequestError,
    DicomWebTransientError,
)

if TYPE_CHECKING:
    from azure.core.credentials import TokenCredential

__all__ = [
    "RETRY_STATUSES",
    "DicomStore",
    "DicomWebClient",
    "DicomWebSettings",
    "azure_dicom_base_url",
    "azure_dicom_url",
    "studies_url",
]

logger = logging.getLogger(__name__)

#: HTTP statuses retried with backoff (besides connection errors and timeouts).
RETRY_STATUSES = frozenset({408, 429, 503, 504})

AuthKind = Literal["none", "basic", "entra"]
StoreMethod = Literal["post", "put"]

_AZURE_HOST_SUFFIX = ".dicom.azurehealthcareapis.com"
_PARTITION = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
_UID = re.compile(r"^[0-9]+(\.[0-9]+)*$")
_AZURE_VERSION = re.compile(r"^v[0-9]+(\.[0-9]+)?(-prerelease)?$")
_AZURE_NAME = re.compile(r"^[A-Za-z0-9]+(-[A-Za-z0-9]+)*$")
_JSON = "application/dicom+json"
_WADO_ACCEPT = 'multipart/related; type="application/dicom"; transfer-syntax=*'


def _check_partition(partition: str) -> None:
    if not _PARTITION.match(partition):
        raise ConfigError(
            "dicomweb.partition: 1 to 64 characters of letters, digits, '.', '_' or '-'"
        )


def _uid_segment(uid: str, what: str) -> str:
    if not _UID.match(uid) or len(uid) > 64:
        raise DicomWebError(f"{what} is not a DICOM UID")
    return quote(uid, safe="")


def studies_url(
    base_url: str, *, partition: str | None = None, study_instance_uid: str | None = None
) -> str:
    """``{base}[/partitions/{partition}]/studies[/{study}]`` for any DICOMweb base URL."""
    url = base_url.rstrip("/")
    if partition is not None:
        _check_partition(partition)
        url += f"/partitions/{partition}"
    url += "/studies"
    if study_instance_uid is not None:
        url += "/" + _uid_segment(study_instance_uid, "study_instance_uid")
    return url


def azure_dicom_base_url(workspace: str, service: str, version: str = "v2") -> str:
    """``https://{workspace}-{service}.dicom.azurehealthcareapis.com/{version}``.

    This is what :attr:`DicomWebSettings.url` takes for the Azure DICOM service.
    """
    if not _AZURE_NAME.match(workspace) or "-" in workspace:
        raise ConfigError("dicomweb workspace: letters and digits only")
    if not _AZURE_NAME.match(service):
        raise ConfigError("dicomweb service: letters, digits and inner hyphens only")
    if not _AZURE_VERSION.match(version):
        raise ConfigError("dicomweb version: 'v1' or 'v2' (unversioned routes are not supported)")
    return f"https://{workspace.lower()}-{service.lower()}{_AZURE_HOST_SUFFIX}/{version}"


def azure_dicom_url(
    workspace: str,
    service: str,
    *,
    version: str = "v2",
    partition: str | None = None,
    study_instance_uid: str | None = None,
) -> str:
    """The STOW-RS URL of an Azure DICOM service:
    ``https://{ws}-{svc}.dicom.azurehealthcareapis.com/v2[/partitions/{p}]/studies[/{study}]``.
    """
    return studies_url(
        azure_dicom_base_url(workspace, service, version),
        partition=partition,
        study_instance_uid=study_instance_uid,
    )


@dataclass(frozen=True, slots=True)
class DicomWebSettings:
    """Where and how to store: plain values, no secret (picklable, loggable).

    ``url`` is the DICOMweb base without ``/studies`` (Azure: ``https://ws-svc.dicom.
    azurehealthcareapis.com/v2``; Orthanc: ``http://host:8042/dicom-web/``);
    ``partition`` adds ``/partitions/{partition}``. ``password_env`` is the NAME of
    the environment variable holding the basic-auth password.
    """

    url: str
    partition: str | None = None
    auth: AuthKind = "none"
    username: str | None = None
    password_env: str | None = None
    method: StoreMethod = "post"
    max_batch_instances: int = 50
    max_batch_bytes: int = 32 * 1024 * 1024
    concurrency: int = 4
    connect_timeout: float = 10.0
    read_timeout: float = 300.0
    max_attempts: int = 5
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    token_scope: str = DICOM_SCOPE
    token_refresh_margin: float = 300.0

    def __post_init__(self) -> None:
        parts = urlsplit(self.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError("dicomweb.url: an http(s) URL with a host is required")
        if parts.username is not None or parts.password is not None:
            raise ConfigError(
                "dicomweb.url: must not embed credentials (use auth, username, password_env)"
            )
        if parts.query or parts.fragment:
            raise ConfigError("dicomweb.url: must not have a query or fragment")
        path = parts.path.rstrip("/")
        if path.endswith("/studies") or "/partitions/" in f"{path}/":
            raise ConfigError(
                "dicomweb.url: give the base URL, without /studies or /partitions "
                "(set dicomweb.partition instead)"
            )
        if parts.hostname.endswith(_AZURE_HOST_SUFFIX) and not _AZURE_VERSION.match(
            path.rsplit("/", 1)[-1]
        ):
            raise ConfigError(
                "dicomweb.url: the Azure DICOM service needs a versioned base URL "
                "ending in /v1 or /v2"
            )
        if self.partition is not None:
            _check_partition(self.partition)
        if self.auth not in ("none", "basic", "entra"):
            raise ConfigError("dicomweb.auth: one of none, basic, entra")
        if self.auth == "basic" and not (self.username and self.password_env):
            raise ConfigError("dicomweb.username and dicomweb.password_env: required by basic")
        method = str(self.method).lower()
        if method not in ("post", "put"):
            raise ConfigError("dicomweb.method: post or put")
        object.__setattr__(self, "method", method)
        for name in ("max_batch_instances", "max_batch_bytes", "concurrency", "max_attempts"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"dicomweb.{name}: must be at least 1")
        for name in ("connect_timeout", "read_timeout"):
            if float(getattr(self, name)) <= 0:
                raise ConfigError(f"dicomweb.{name}: must be positive")
        for name in ("backoff_initial", "backoff_max", "token_refresh_margin"):
            if float(getattr(self, name)) < 0:
                raise ConfigError(f"dicomweb.{name}: must not be negative")

    @property
    def base_url(self) -> str:
        """``url`` plus the partition segment, without a trailing slash."""
        url = self.url.rstrip("/")
        return f"{url}/partitions/{self.partition}" if self.partition else url


@runtime_checkable
class DicomStore(Protocol):
    """Store DICOM instances; one result per instance, in input order."""

    def store(
        self,
        instances: Iterable[Dataset | EncodedInstance],
        *,
        study_instance_uid: str | None = None,
    ) -> list[StoreResult]:
        """Store ``instances`` (optionally under one study URL)."""
        ...


def _new_session(pool_size: int) -> requests.Session:
    session = requests.Session()
    adapter = HTTPAdapter(pool_connections=2, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


def _maybe_sent(exc: requests.RequestException) -> bool:
    """False when the connection could not even be made (refused, connect timeout): then
    the server never saw the request. A read timeout or a connection dropped before the
    answer may come after the server acted on it."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if isinstance(exc, requests.ReadTimeout):
        return True
    reason = exc.args[0] if exc.args else None
    inner = getattr(reason, "reason", reason)  # urllib3's MaxRetryError wraps the cause
    return not isinstance(inner, NewConnectionError)


def _retry_after(response: requests.Response) -> float | None:
    value = response.headers.get("Retry-After")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        return max(0.0, parsedate_to_datetime(value).timestamp() - time.time())
    except (TypeError, ValueError, IndexError):
        return None


class DicomWebClient:
    """STOW-RS store (:class:`DicomStore`) plus QIDO-RS/WADO-RS helpers over ``requests``.

    ``credential`` overrides ``DefaultAzureCredential`` for ``auth="entra"``; ``environ``
    replaces ``os.environ`` when reading ``password_env``; ``session``, ``sleep``, ``rng``
    and ``clock`` are there for tests. Not picklable: build one per process from the
    settings. Use as a context manager or call :meth:`close`.
    """

    def __init__(
        self,
        settings: DicomWebSettings,
        *,
        credential: TokenCredential | None = None,
        environ: Mapping[str, str] | None = None,
        session: requests.Session | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self._auth = self._build_auth(settings, credential, environ, clock)
        self._owns_session = session is None
        self._session = session if session is not None else _new_session(settings.concurrency)
        self._sleep = sleep
        self._rng = rng if rng is not None else random.Random()
        self._rng_lock = threading.Lock()

    @staticmethod
    def _build_auth(
        settings: DicomWebSettings,
        credential: TokenCredential | None,
        environ: Mapping[str, str] | None,
        clock: Callable[[], float],
    ) -> AuthBase | None:
        if settings.auth == "basic":
            if settings.username is None or settings.password_env is None:
                raise ConfigError("dicomweb.username and dicomweb.password_env: required by basic")
            password = password_from_env(settings.password_env, environ)
            return BasicAuth(settings.username, password)
        if settings.auth == "entra":
            return EntraTokenAuth(
                credential,
                scope=settings.token_scope,
                refresh_margin=settings.token_refresh_margin,
                clock=clock,
            )
        return None

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection pool (when the client created it)."""
        if self._owns_session:
            self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"DicomWebClient(base_url={self.base_url!r}, auth={self.settings.auth!r}, "
            f"method={self.settings.method!r})"
        )

    def __reduce__(self) -> NoReturn:
        raise TypeError(
            "DicomWebClient is not picklable; ship DicomWebSettings and build the client "
            "where it is used"
        )

    @property
    def base_url(self) -> str:
        """The DICOMweb base URL, partition included."""
        return self.settings.base_url

    # -- HTTP with retries -----------------------------------------------------------

    def _backoff(self, attempt: int) -> float:
        s = self.settings
        ceiling = min(s.backoff_max, s.backoff_initial * (2 ** (attempt - 1)))
        with self._rng_lock:
            jitter = self._rng.uniform(0.0, ceiling / 2)
        return ceiling / 2 + jitter

    def _request(
        self,
        operation: str,
        method: str,
        url: str,
        *,
        headers: Mapping[str, str],
        data: bytes | None = None,
        params: Mapping[str, str | int] | None = None,
    ) -> tuple[requests.Response, int]:
        s = self.settings
        host = urlsplit(url).netloc
        unanswered = False
        for attempt in range(1, s.max_attempts + 1):
            try:
                response = self._session.request(
                    method,
                    url,
                    headers=dict(headers),
                    data=data,
                    params=params,
                    auth=self._auth,
                    timeout=(s.connect_timeout, s.read_timeout),
                    allow_redirects=False,
                )
            except requests.exceptions.SSLError as exc:
                raise DicomWebRequestError(
                    f"{operation}: TLS handshake with {host} failed", attempts=attempt
                ) from exc
            except (requests.ConnectionError, requests.Timeout) as exc:
                condition = "timeout" if isinstance(exc, requests.Timeout) else "connection error"
                # sent but unanswered: the server may have acted on it (outcome unknown)
                unanswered = unanswered or _maybe_sent(exc)
                if attempt >= s.max_attempts:
                    raise DicomWebTransientError(
                        f"{operation}: {condition} talking to {host}, gave up after "
                        f"{attempt} attempt(s)",
                        attempts=attempt,
                        condition="outcome_unknown" if unanswered else "connection_error",
                    ) from exc
                delay = self._backoff(attempt)
                logger.warning(
                    "%s: %s (%s), attempt %d of %d; retrying in %.2f s",
                    operation,
                    condition,
                    type(exc).__name__,
                    attempt,
                    s.max_attempts,
                    delay,
                )
                self._sleep(delay)
                continue
            except requests.RequestException as exc:
                raise DicomWebRequestError(
                    f"{operation}: request to {host} could not be sent ({type(exc).__name__})",
                    attempts=attempt,
                ) from exc

            status = response.status_code
            if status not in RETRY_STATUSES:
                return response, attempt
            response.close()
            if attempt >= s.max_attempts:
                raise DicomWebTransientError(
                    f"{operation}: HTTP {status} from {host}, gave up after {attempt} attempt(s)",
                    http_status=status,
                    attempts=attempt,
                    condition="outcome_unknown" if unanswered else f"http_{status}",
                )
            delay = self._backoff(attempt)
            retry_after = _retry_after(response)
            if retry_after is not None:
                delay = max(delay, min(retry_after, s.backoff_max))
            logger.warning(
                "%s: HTTP %d, attempt %d of %d; retrying in %.2f s",
                operation,
                status,
                attempt,
                s.max_attempts,
                delay,
            )
            self._sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover

    def _raise_for_whole_request(
        self, operation: str, response: requests.Response, attempts: int
    ) -> None:
        status = response.status_code
        if status in (401, 403):
            if isinstance(self._auth, EntraTokenAuth):
                self._auth.invalidate()
            what = (
                "authentication refused"
                if status == 401
                else "access denied (on Azure, the identity needs a DICOM Data role)"
            )
            raise DicomWebAuthError(
                f"{operation}: HTTP {status}, {what} ({describe_auth(self._auth)})",
                http_status=status,
                attempts=attempts,
            )
        if status == 424:
            raise DicomWebDependencyError(
                f"{operation}: HTTP 424, the DICOM service cannot reach its data lake or "
                "key vault (check the service's storage and key vault access)",
                http_status=status,
                attempts=attempts,
            )

    def _unexpected(self, operation: str, response: requests.Response, attempts: int) -> NoReturn:
        status = response.status_code
        hint = ""
        if status == 413:
            hint = "; lower dicomweb.max_batch_bytes"
        elif status == 405 and self.settings.method == "put":
            hint = "; this server may not support PUT (use method post)"
        elif status == 404:
            hint = "; check dicomweb.url and dicomweb.partition"
        raise DicomWebRequestError(
            f"{operation}: HTTP {status} {response.reason or ''}".rstrip() + hint,
            http_status=status,
            attempts=attempts,
        )

    # -- STOW-RS ---------------------------------------------------------------------

    def store_batch(
        self, instances: Sequence[EncodedInstance], *, study_instance_uid: str | None = None
    ) -> list[StoreResult]:
        """Send ``instances`` in ONE multipart request; one result per instance, in order."""
        if not instances:
            return []
        url = studies_url(self.base_url, study_instance_uid=study_instance_uid)
        body, content_type = multipart_related(instance.data for instance in instances)
        response, attempts = self._request(
            "STOW-RS",
            self.settings.method.upper(),
            url,
            headers={"Content-Type": content_type, "Accept": _JSON},
            data=body,
        )
        with response:
            self._raise_for_whole_request("STOW-RS", response, attempts)
            status = response.status_code
            parsed = parse_store_response(response.content)
            if status not in (200, 202, 204, 400, 409) and not parsed.has_instance_detail:
                self._unexpected("STOW-RS", response, attempts)
        uids = [instance.sop_instance_uid for instance in instances]
        results = batch_results(uids, status, parsed, attempts)
        self._log_batch(status, results, parsed.unattributed_failures)
        return results

    @staticmethod
    def _log_batch(status: int, results: Sequence[StoreResult], unattributed: int) -> None:
        counts = dict.fromkeys(StoreStatus, 0)
        for result in results:
            counts[result.status] += 1
        all_ok = all(result.ok for result in results) and not unattributed
        logger.log(
            logging.INFO if all_ok else logging.WARNING,
            "STOW-RS batch of %d: HTTP %d; %d stored, %d already stored, %d failed, "
            "%d retryable, %d unattributed failure item(s)",
            len(results),
            status,
            counts[StoreStatus.STORED],
            counts[StoreStatus.ALREADY_STORED],
            counts[StoreStatus.FAILED],
            counts[StoreStatus.RETRYABLE],
            unattributed,
        )

    def _encoded(self, items: Sequence[Dataset | EncodedInstance]) -> Iterator[EncodedInstance]:
        for index, item in enumerate(items):
            yield item if isinstance(item, EncodedInstance) else encode_dataset(item, index)

    def store(
        self,
        instances: Iterable[Dataset | EncodedInstance],
        *,
        study_instance_uid: str | None = None,
    ) -> list[StoreResult]:
        """Store instances in batches, ``concurrency`` requests at a time.

        Every dataset is checked before anything is sent (implicit VR and missing UIDs
        raise :class:`DicomWebDatasetError`); encoding is lazy, so at most about
        ``2 * concurrency`` batches are held in memory.
        """
        items = list(instances)
        for index, item in enumerate(items):
            if isinstance(item, Dataset):
                check_dataset(item, index)
            elif not isinstance(item, EncodedInstance):
                raise TypeError(f"instance #{index}: expected a pydicom Dataset or EncodedInstance")
        if study_instance_uid is not None:
            _uid_segment(study_instance_uid, "study_instance_uid")
        s = self.settings
        batches = iter_batches(self._encoded(items), s.max_batch_instances, s.max_batch_bytes)
        if s.concurrency == 1:
            results = [
                result
                for batch in batches
                for result in self.store_batch(batch, study_instance_uid=study_instance_uid)
            ]
        else:
            results = self._store_concurrently(batches, study_instance_uid)
        logger.info("STOW-RS stored %d of %d instance(s)", sum(r.ok for r in results), len(items))
        return results

    def _store_concurrently(
        self, batches: Iterator[list[EncodedInstance]], study_instance_uid: str | None
    ) -> list[StoreResult]:
        workers = self.settings.concurrency
        slots = threading.BoundedSemaphore(2 * workers)
        failed = threading.Event()
        futures: list[Future[list[StoreResult]]] = []

        def done(future: Future[list[StoreResult]]) -> None:
            slots.release()
            if not future.cancelled() and future.exception() is not None:
                failed.set()

        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dicomweb-stow") as pool:
            try:
                for batch in batches:
                    slots.acquire()
                    if failed.is_set():
                        slots.release()
                        break
                    future = pool.submit(
                        self.store_batch, batch, study_instance_uid=study_instance_uid
                    )
                    future.add_done_callback(done)
                    futures.append(future)
            except BaseException:
                for future in futures:
                    future.cancel()
                raise
            if failed.is_set():
                for future in futures:
                    future.cancel()
            wait(futures)
        results: list[StoreResult] = []
        for future in futures:
            if future.cancelled():
                continue
            error = future.exception()
            if error is not None:
                raise error
            results.extend(future.result())
        return results

    # -- QIDO-RS / WADO-RS -----------------------------------------------------------

    def search_instances(
        self,
        study_instance_uid: str,
        series_instance_uid: str | None = None,
        *,
        sop_instance_uid: str | None = None,
        page_size: int = 100,
    ) -> list[dict[str, Any]]:
        """QIDO-RS instances of a study (or series), all pages, as DICOM JSON objects.

        A study the server does not know gives ``[]`` (HTTP 204, 404 or an empty array).
        """
        url = studies_url(self.base_url, study_instance_uid=study_instance_uid)
        if series_instance_uid is not None:
            url += "/series/" + _uid_segment(series_instance_uid, "series_instance_uid")
        url += "/instances"
        params: dict[str, str | int] = {"limit": page_size}
        if sop_instance_uid is not None:
            params["SOPInstanceUID"] = _uid_segment(sop_instance_uid, "sop_instance_uid")
        found: list[dict[str, Any]] = []
        offset = 0
        while True:
            params["offset"] = offset
            page = self._qido_page(url, params)
            found.extend(page)
            if len(page) != page_size:  # a short page is the last; a long one means no paging
                return found
            offset += len(page)

    def _qido_page(self, url: str, params: Mapping[str, str | int]) -> list[dict[str, Any]]:
        response, attempts = self._request(
            "QIDO-RS", "GET", url, headers={"Accept": _JSON}, params=params
        )
        with response:
            self._raise_for_whole_request("QIDO-RS", response, attempts)
            if response.status_code in (204, 404):
                return []
            if response.status_code != 200:
                self._unexpected("QIDO-RS", response, attempts)
            try:
                page = response.json() if response.content else []
            except ValueError as exc:
                raise DicomWebRequestError(
                    "QIDO-RS: the answer is not JSON", http_status=200, attempts=attempts
                ) from exc
        if not isinstance(page, list):
            raise DicomWebRequestError(
                "QIDO-RS: the answer is not a JSON array", http_status=200, attempts=attempts
            )
        return [item for item in page if isinstance(item, dict)]

    def qido_instance_exists(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> bool:
        """True when QIDO-RS finds this SOP instance in this study and series."""
        matches = self.search_instances(
            study_instance_uid, series_instance_uid, sop_instance_uid=sop_instance_uid
        )
        return any(
            sop_instance_uid in (item.get("00080018") or {}).get("Value", []) for item in matches
        )

    def retrieve_instance(
        self, study_instance_uid: str, series_instance_uid: str, sop_instance_uid: str
    ) -> Dataset:
        """WADO-RS one instance, in the transfer syntax it was stored in."""
        url = (
            studies_url(self.base_url, study_instance_uid=study_instance_uid)
            + "/series/"
            + _uid_segment(series_instance_uid, "series_instance_uid")
            + "/instances/"
            + _uid_segment(sop_instance_uid, "sop_instance_uid")
        )
        response, attempts = self._request("WADO-RS", "GET", url, headers={"Accept": _WADO_ACCEPT})
        with response:
            self._raise_for_whole_request("WADO-RS", response, attempts)
            if response.status_code != 200:
                self._unexpected("WADO-RS", response, attempts)
            content_type = response.headers.get("Content-Type", "")
            body = response.content
        parts = (
            multipart_parts(content_type, body)
            if content_type.lower().startswith("multipart/")
            else [body]
        )
        if len(parts) != 1:
            raise DicomWebRequestError(
                f"WADO-RS: expected one part, got {len(parts)}", http_status=200, attempts=attempts
            )
        try:
            return dcmread(BytesIO(parts[0]))
        except (InvalidDicomError, EOFError, ValueError) as exc:
            raise DicomWebRequestError(
                "WADO-RS: the part is not a DICOM file", http_status=200, attempts=attempts
            ) from exc
