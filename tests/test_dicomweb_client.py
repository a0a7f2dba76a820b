"""DICOMweb client without a server: settings, URLs, encoding, retries, auth, and the
Azure-only behaviour replayed from hand-written recordings (tests/recordings/dicomweb/).

Requests never leave the process: a requests transport adapter answers them.
"""

from __future__ import annotations

import copy
import json
import logging
import pickle
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from pydicom import dcmread
from pydicom.uid import DeflatedExplicitVRLittleEndian, ImplicitVRLittleEndian
from requests.adapters import BaseAdapter
from requests.structures import CaseInsensitiveDict

from dicom_lakehouse.dicomweb import (
    DICOM_SCOPE,
    BasicAuth,
    DicomStore,
    DicomWebClient,
    DicomWebSettings,
    EncodedInstance,
    EntraTokenAuth,
    StoreStatus,
    azure_dicom_base_url,
    azure_dicom_url,
    encode_dataset,
    parse_store_response,
    studies_url,
)
from dicom_lakehouse.dicomweb._stow import iter_batches, multipart_parts, multipart_related
from dicom_lakehouse.errors import (
    ConfigError,
    DicomLakehouseError,
    DicomWebAuthError,
    DicomWebDatasetError,
    DicomWebDependencyError,
    DicomWebError,
    DicomWebRequestError,
    DicomWebTransientError,
)
from tests.services.orthanc import make_ct_dataset

RECORDINGS = Path(__file__).parent / "recordings" / "dicomweb"
AZURE = "https://contosows-dicomsvc.dicom.azurehealthcareapis.com/v2"
P = "1.2.826.0.1.3680043.8.498."
STUDY, SERIES, SOP_A, SOP_B, OTHER_STUDY = (P + n for n in ("1001", "1002", "1003", "1004", "1005"))
SECRET = "pa55-w0rd-never-shown"


# -- a transport adapter that answers from recordings or callables ------------------------


@dataclass
class Reply:
    status: int
    body: Any = None  # dict/list -> JSON, bytes as is, None -> empty
    headers: dict[str, str] = field(default_factory=dict)


Responder = Callable[[requests.PreparedRequest], Reply | Exception]


class ReplayAdapter(BaseAdapter):
    """Answers each request with the next responder (the last one repeats)."""

    def __init__(self, *responders: Reply | Responder | Exception) -> None:
        super().__init__()
        self.responders = list(responders)
        self.requests: list[requests.PreparedRequest] = []
        self._lock = threading.Lock()

    def send(  # type: ignore[override]  # the transport keywords are not needed here
        self, request: requests.PreparedRequest, **kwargs: Any
    ) -> requests.Response:
        with self._lock:
            self.requests.append(request)
            index = min(len(self.requests), len(self.responders)) - 1
            responder = self.responders[index]
        reply = responder(request) if callable(responder) else responder
        if isinstance(reply, Exception):
            raise reply
        if isinstance(reply.body, dict | list):
            content = json.dumps(reply.body).encode()
        else:
            content = reply.body or b""
        response = requests.Response()
        response.status_code = reply.status
        response.headers = CaseInsensitiveDict(reply.headers)
        response.raw = BytesIO(content)
        response._content = content
        response.url = request.url or ""
        response.request = request
        response.reason = "recorded"
        return response

    def close(self) -> None:
        pass


def recording(name: str) -> tuple[dict[str, Any], Reply]:
    data = json.loads((RECORDINGS / name).read_text())
    answer = data["response"]
    return data["request"], Reply(answer["status"], answer["body"], answer["headers"])


def parts_of(request: requests.PreparedRequest) -> list[bytes]:
    body = request.body
    assert isinstance(body, bytes)
    return multipart_parts(request.headers["Content-Type"], body)


def uids_in(request: requests.PreparedRequest) -> list[str]:
    return [str(dcmread(BytesIO(part)).SOPInstanceUID) for part in parts_of(request)]


def echo_stored(request: requests.PreparedRequest) -> Reply:
    """A server that stores everything it is sent (200, all referenced)."""
    items = [
        {"00081155": {"vr": "UI", "Value": [uid]}, "00081190": {"vr": "UR", "Value": ["u"]}}
        for uid in uids_in(request)
    ]
    return Reply(200, {"00081199": {"vr": "SQ", "Value": items}})


def make_client(
    adapter: ReplayAdapter,
    url: str = AZURE,
    sleeps: list[float] | None = None,
    **overrides: Any,
) -> DicomWebClient:
    session = requests.Session()
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    values: dict[str, Any] = {"url": url, "backoff_initial": 1.0, "backoff_max": 8.0}
    values.update(overrides)
    recorded = sleeps if sleeps is not None else []
    return DicomWebClient(
        DicomWebSettings(**values),
        session=session,
        sleep=recorded.append,
        rng=random.Random(7),
    )


def ct(sop: str, study: str = STUDY) -> Any:
    return make_ct_dataset(study_uid=study, series_uid=SERIES, sop_uid=sop)


# -- settings and URLs ---------------------------------------------------------------------


def test_azure_urls_with_and_without_partition() -> None:
    assert azure_dicom_base_url("ContosoWS", "dicomsvc") == AZURE
    assert azure_dicom_url("contosows", "dicomsvc") == f"{AZURE}/studies"
    assert (
        azure_dicom_url(
            "contosows", "dicomsvc", version="v1", partition="site-a", study_instance_uid=STUDY
        )
        == f"https://contosows-dicomsvc.dicom.azurehealthcareapis.com/v1/partitions/site-a/studies/{STUDY}"
    )
    assert (
        studies_url("http://127.0.0.1:8042/dicom-web/") == "http://127.0.0.1:8042/dicom-web/studies"
    )
    assert (
        studies_url("http://h/dicom-web", partition="Microsoft.Default")
        == "http://h/dicom-web/partitions/Microsoft.Default/studies"
    )
    settings = DicomWebSettings(url=AZURE + "/", partition="site-a")
    assert settings.base_url == f"{AZURE}/partitions/site-a"


@pytest.mark.parametrize(
    ("kwargs", "key"),
    [
        ({"url": "ftp://host/dicom-web"}, "dicomweb.url"),
        ({"url": "https://contosows-dicomsvc.dicom.azurehealthcareapis.com"}, "versioned"),
        ({"url": f"{AZURE}/studies"}, "without /studies"),
        ({"url": f"{AZURE}/partitions/x"}, "dicomweb.partition"),
        ({"url": AZURE, "partition": "bad/name"}, "dicomweb.partition"),
        ({"url": AZURE, "partition": "x" * 65}, "dicomweb.partition"),
        ({"url": AZURE, "auth": "basic", "username": "u"}, "password_env"),
        ({"url": AZURE, "auth": "kerberos"}, "dicomweb.auth"),
        ({"url": AZURE, "method": "patch"}, "dicomweb.method"),
        ({"url": AZURE, "concurrency": 0}, "dicomweb.concurrency"),
        ({"url": AZURE, "max_batch_bytes": 0}, "dicomweb.max_batch_bytes"),
    ],
)
def test_settings_reject_bad_values_naming_the_key(kwargs: dict[str, Any], key: str) -> None:
    with pytest.raises(ConfigError, match=key):
        DicomWebSettings(**kwargs)


def test_settings_refuse_credentials_in_the_url_without_echoing_them() -> None:
    with pytest.raises(ConfigError) as info:
        DicomWebSettings(url=f"https://user:{SECRET}@host/dicom-web")
    assert SECRET not in str(info.value)


def test_azure_names_and_version_are_checked() -> None:
    with pytest.raises(ConfigError, match="version"):
        azure_dicom_base_url("ws", "svc", version="2")
    with pytest.raises(ConfigError, match="workspace"):
        azure_dicom_base_url("my-ws", "svc")


def test_settings_normalise_method_and_stay_picklable() -> None:
    settings = DicomWebSettings(url=AZURE, method="PUT")  # type: ignore[arg-type]
    assert settings.method == "put"
    assert pickle.loads(pickle.dumps(settings)) == settings


# -- encoding and batching -----------------------------------------------------------------


def test_implicit_vr_is_refused_before_anything_is_sent() -> None:
    adapter = ReplayAdapter(echo_stored)
    client = make_client(adapter)
    bad = make_ct_dataset(transfer_syntax=ImplicitVRLittleEndian)
    with pytest.raises(DicomWebDatasetError, match=r"instance #1: .*implicit VR") as info:
        client.store([ct(SOP_A), bad])
    assert info.value.index == 1
    assert adapter.requests == []


def test_missing_uid_is_refused_naming_the_attribute_not_values() -> None:
    ds = ct(SOP_A)
    del ds.SeriesInstanceUID
    with pytest.raises(DicomWebDatasetError, match="SeriesInstanceUID") as info:
        encode_dataset(ds)
    assert SOP_A not in str(info.value)


def test_encoding_keeps_the_dataset_syntax_and_leaves_the_dataset_alone() -> None:
    ds = make_ct_dataset(transfer_syntax=DeflatedExplicitVRLittleEndian)
    before = copy.deepcopy(ds)
    encoded = encode_dataset(ds)
    assert encoded.data[128:132] == b"DICM"
    back = dcmread(BytesIO(encoded.data))
    assert back.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    assert back.SOPInstanceUID == ds.SOPInstanceUID
    assert ds == before and ds.file_meta == before.file_meta

    no_meta = make_ct_dataset()
    del no_meta.file_meta
    assert dcmread(BytesIO(encode_dataset(no_meta).data)).file_meta.TransferSyntaxUID == (
        "1.2.840.10008.1.2.1"
    )
    assert not hasattr(no_meta, "file_meta")


def test_batches_honour_count_and_byte_caps_in_order() -> None:
    sizes = [40, 40, 40, 200, 10, 10, 10, 10]
    items = [EncodedInstance(str(i), b"x" * n) for i, n in enumerate(sizes)]
    batches = [[int(i.sop_instance_uid) for i in b] for b in iter_batches(items, 3, 100)]
    assert batches == [[0, 1], [2], [3], [4, 5, 6], [7]]


def test_multipart_body_round_trips() -> None:
    parts = [b"\x00first\r\n--part", b"second"]
    body, content_type = multipart_related(parts)
    assert content_type.startswith('multipart/related; type="application/dicom"; boundary=')
    assert multipart_parts(content_type, body) == parts


def test_store_sends_batches_concurrently_bounded_and_keeps_input_order() -> None:
    in_flight = 0
    peak = 0
    lock = threading.Lock()

    def slow_echo(request: requests.PreparedRequest) -> Reply:
        nonlocal in_flight, peak
        with lock:
            in_flight += 1
            peak = max(peak, in_flight)
        time.sleep(0.05)
        with lock:
            in_flight -= 1
        return echo_stored(request)

    adapter = ReplayAdapter(slow_echo)
    client = make_client(adapter, concurrency=3, max_batch_instances=2)
    datasets = [make_ct_dataset(instance_number=i) for i in range(13)]
    results = client.store(datasets)
    assert [r.sop_instance_uid for r in results] == [str(d.SOPInstanceUID) for d in datasets]
    assert all(r.status is StoreStatus.STORED for r in results)
    assert len(adapter.requests) == 7
    assert all(len(parts_of(r)) <= 2 for r in adapter.requests)
    assert 1 < peak <= 3
    assert isinstance(client, DicomStore)
    for request in adapter.requests:
        assert request.method == "POST"
        assert request.headers["Accept"] == "application/dicom+json"
        assert request.url == f"{AZURE}/studies"


def test_a_fatal_batch_error_cancels_the_rest_and_propagates() -> None:
    adapter = ReplayAdapter(Reply(401), echo_stored)
    client = make_client(adapter, concurrency=2, max_batch_instances=1)
    with pytest.raises(DicomWebAuthError):
        client.store([make_ct_dataset() for _ in range(40)])
    assert len(adapter.requests) < 40


# -- retries -------------------------------------------------------------------------------


def test_503_and_429_are_retried_with_backoff_and_retry_after() -> None:
    adapter = ReplayAdapter(Reply(503), Reply(429, headers={"Retry-After": "5"}), echo_stored)
    sleeps: list[float] = []
    client = make_client(adapter, sleeps=sleeps)
    [result] = client.store([ct(SOP_A)])
    assert result.status is StoreStatus.STORED and result.attempts == 3
    assert len(adapter.requests) == 3
    assert 0.5 <= sleeps[0] <= 1.0  # first backoff: ceiling 1 s, half of it plus jitter
    assert sleeps[1] >= 5.0  # Retry-After wins over the 2 s backoff


def test_backoff_grows_exponentially_with_jitter_up_to_the_cap() -> None:
    adapter = ReplayAdapter(Reply(504))
    sleeps: list[float] = []
    client = make_client(adapter, sleeps=sleeps, max_attempts=6)
    with pytest.raises(DicomWebTransientError) as info:
        client.store([ct(SOP_A)])
    assert info.value.http_status == 504 and info.value.attempts == 6
    assert len(adapter.requests) == 6 and len(sleeps) == 5
    for attempt, delay in enumerate(sleeps, start=1):
        ceiling = min(8.0, 2 ** (attempt - 1))
        assert ceiling / 2 <= delay <= ceiling
    assert len(set(sleeps)) == len(sleeps)


@pytest.mark.parametrize("status", [400, 409])
def test_400_and_409_are_not_retried(status: int) -> None:
    adapter = ReplayAdapter(Reply(status), echo_stored)
    sleeps: list[float] = []
    client = make_client(adapter, sleeps=sleeps)
    results = client.store([ct(SOP_A), ct(SOP_B)])
    assert len(adapter.requests) == 1 and sleeps == []
    assert [(r.status, r.http_status, r.failure_reason, r.attempts) for r in results] == [
        (StoreStatus.FAILED, status, None, 1)
    ] * 2


@pytest.mark.parametrize("status", [500, 502, 404, 406, 413, 415])
def test_other_statuses_raise_without_retry(status: int) -> None:
    adapter = ReplayAdapter(Reply(status), echo_stored)
    client = make_client(adapter)
    with pytest.raises(DicomWebRequestError, match=f"HTTP {status}") as info:
        client.store([ct(SOP_A)])
    assert info.value.http_status == status
    assert len(adapter.requests) == 1


def test_connection_errors_and_timeouts_are_retried_then_fail_clearly() -> None:
    adapter = ReplayAdapter(
        requests.ConnectionError("refused"), requests.ReadTimeout("slow"), echo_stored
    )
    [result] = make_client(adapter).store([ct(SOP_A)])
    assert result.ok and result.attempts == 3

    down = ReplayAdapter(requests.ConnectionError("refused"))
    with pytest.raises(DicomWebTransientError, match=r"connection error .* 3 attempt") as info:
        make_client(down, max_attempts=3).store([ct(SOP_A)])
    assert info.value.http_status is None
    assert isinstance(info.value.__cause__, requests.ConnectionError)


def test_tls_errors_are_not_retried() -> None:
    adapter = ReplayAdapter(requests.exceptions.SSLError("bad certificate"))
    with pytest.raises(DicomWebRequestError, match="TLS"):
        make_client(adapter).store([ct(SOP_A)])
    assert len(adapter.requests) == 1


# -- auth and secrets ----------------------------------------------------------------------


def test_basic_auth_password_comes_from_the_named_env_var_and_never_shows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    adapter = ReplayAdapter(Reply(401))
    session = requests.Session()
    session.mount("https://", adapter)
    settings = DicomWebSettings(url=AZURE, auth="basic", username="alice", password_env="DW_PW")
    client = DicomWebClient(settings, session=session, environ={"DW_PW": SECRET})
    with pytest.raises(DicomWebAuthError, match="alice") as info:
        client.store([ct(SOP_A)])
    assert adapter.requests[0].headers["Authorization"].startswith("Basic ")
    shown = [str(info.value), repr(info.value), repr(client), repr(settings), caplog.text]
    shown.append(repr(client._auth))
    assert all(SECRET not in text for text in shown)
    assert info.value.http_status == 401
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(client)
    with pytest.raises(TypeError, match="not picklable"):
        pickle.dumps(BasicAuth("alice", SECRET))


def test_missing_password_env_names_the_variable_only() -> None:
    settings = DicomWebSettings(url=AZURE, auth="basic", username="alice", password_env="DW_PW")
    with pytest.raises(DicomWebAuthError, match="'DW_PW'"):
        DicomWebClient(settings, environ={})


class FakeCredential:
    """A TokenCredential handing out numbered tokens valid for one hour."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self.clock = clock
        self.calls: list[tuple[str, ...]] = []

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        self.calls.append(scopes)
        return AccessToken(f"token-{len(self.calls)}-{SECRET}", int(self.clock()) + 3600)


def test_mocked_entra_token_is_sent_as_bearer_cached_and_refreshed_before_expiry(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    now = [1_700_000_000.0]
    credential = FakeCredential(lambda: now[0])
    adapter = ReplayAdapter(echo_stored)
    session = requests.Session()
    session.mount("https://", adapter)
    client = DicomWebClient(
        DicomWebSettings(url=AZURE, auth="entra"),
        credential=credential,
        session=session,
        clock=lambda: now[0],
    )
    client.store([ct(SOP_A)])
    now[0] += 1800
    client.store([ct(SOP_B)])
    assert len(credential.calls) == 1 and credential.calls[0] == (DICOM_SCOPE,)
    now[0] += 1800 - 299  # within 5 minutes of expires_on
    client.store([ct(SOP_A)])
    bearer = [r.headers["Authorization"] for r in adapter.requests]
    assert bearer == [f"Bearer token-1-{SECRET}"] * 2 + [f"Bearer token-2-{SECRET}"]
    assert len(credential.calls) == 2
    assert SECRET not in repr(client) + repr(client._auth) + caplog.text


def test_mocked_entra_401_drops_the_cached_token() -> None:
    now = [1_700_000_000.0]
    credential = FakeCredential(lambda: now[0])
    adapter = ReplayAdapter(Reply(401), echo_stored)
    session = requests.Session()
    session.mount("https://", adapter)
    client = DicomWebClient(
        DicomWebSettings(url=AZURE, auth="entra"),
        credential=credential,
        session=session,
        clock=lambda: now[0],
    )
    with pytest.raises(DicomWebAuthError, match="HTTP 401") as info:
        client.store([ct(SOP_A)])
    assert SECRET not in str(info.value)
    [result] = client.store([ct(SOP_A)])
    assert result.ok
    sent = [r.headers["Authorization"] for r in adapter.requests]
    assert sent == [f"Bearer token-1-{SECRET}", f"Bearer token-2-{SECRET}"]


def test_403_says_access_denied() -> None:
    with pytest.raises(DicomWebAuthError, match="HTTP 403, access denied"):
        make_client(ReplayAdapter(Reply(403))).store([ct(SOP_A)])


def test_mocked_entra_credential_failure_is_an_auth_error() -> None:
    class Broken:
        def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
            raise ClientAuthenticationError(message="no identity")

    adapter = ReplayAdapter(echo_stored)
    session = requests.Session()
    session.mount("https://", adapter)
    client = DicomWebClient(
        DicomWebSettings(url=AZURE, auth="entra"), credential=Broken(), session=session
    )
    with pytest.raises(DicomWebAuthError, match="Microsoft Entra token") as info:
        client.store([ct(SOP_A)])
    assert isinstance(info.value.__cause__, ClientAuthenticationError)
    assert adapter.requests == []
    assert isinstance(EntraTokenAuth(Broken()), EntraTokenAuth)


# -- Azure behaviour from recordings -------------------------------------------------------


def store_recorded(
    name: str, datasets: list[Any], **kwargs: Any
) -> tuple[list[Any], requests.PreparedRequest]:
    expected, reply = recording(name)
    adapter = ReplayAdapter(reply)
    study = kwargs.pop("study_instance_uid", None)
    client = make_client(adapter, **kwargs)
    results = client.store(datasets, study_instance_uid=study)
    [request] = adapter.requests
    assert request.method == expected["method"]
    assert request.path_url == expected["path"]
    return results, request


def test_recorded_post_duplicate_202_counts_as_already_stored() -> None:
    results, _ = store_recorded("azure_post_duplicate_202.json", [ct(SOP_A), ct(SOP_B)])
    first, duplicate = results
    assert first.status is StoreStatus.STORED and first.http_status == 202
    assert first.retrieve_url == f"{AZURE}/studies/{STUDY}/series/{SERIES}/instances/{SOP_A}"
    assert duplicate.status is StoreStatus.ALREADY_STORED
    assert duplicate.failure_reason == 45070 and duplicate.ok
    assert duplicate.retrieve_url is None


def test_recorded_study_mismatch_fails_only_that_instance() -> None:
    results, _ = store_recorded(
        "azure_study_mismatch_202.json",
        [ct(SOP_A), ct(SOP_B, study=OTHER_STUDY)],
        study_instance_uid=STUDY,
    )
    assert [(r.status, r.failure_reason) for r in results] == [
        (StoreStatus.STORED, None),
        (StoreStatus.FAILED, 43265),
    ]
    assert not results[1].ok


def test_recorded_pending_45071_is_retryable() -> None:
    [result], _ = store_recorded("azure_pending_409.json", [ct(SOP_A)])
    assert result.status is StoreStatus.RETRYABLE
    assert (result.http_status, result.failure_reason, result.attempts) == (409, 45071, 1)


def test_recorded_409_none_stored_keeps_tags_not_comment_values() -> None:
    results, _ = store_recorded("azure_validation_409.json", [ct(SOP_A), ct(SOP_B)])
    invalid, unreadable = results
    assert (invalid.status, invalid.http_status, invalid.failure_reason) == (
        StoreStatus.FAILED,
        409,
        43264,
    )
    assert invalid.failed_attributes == ("(0010,0030)", "(0008,0020)")
    assert "NOT-A-DATE" not in repr(invalid)  # ErrorComment text can quote header values
    assert (unreadable.status, unreadable.http_status, unreadable.failure_reason) == (
        StoreStatus.FAILED,
        409,
        None,
    )
    _, reply = recording("azure_validation_409.json")
    assert parse_store_response(json.dumps(reply.body)).unattributed_failures == 1


def test_recorded_202_warning_is_stored_with_the_warning() -> None:
    [result], _ = store_recorded("azure_warning_202.json", [ct(SOP_A)])
    assert result.status is StoreStatus.STORED
    assert (result.http_status, result.warning_reason) == (202, 45063)
    assert result.failed_attributes == ("(0018,0050)",)


def test_recorded_424_is_a_dependency_error_not_retried() -> None:
    _, reply = recording("azure_424.json")
    adapter = ReplayAdapter(reply)
    with pytest.raises(DicomWebDependencyError, match="data lake or key vault") as info:
        make_client(adapter).store([ct(SOP_A)])
    assert info.value.http_status == 424 and len(adapter.requests) == 1
    assert isinstance(info.value, DicomWebError) and isinstance(info.value, DicomLakehouseError)


def test_recorded_400_without_partition_fails_every_instance_with_400() -> None:
    results, _ = store_recorded("azure_partition_required_400.json", [ct(SOP_A), ct(SOP_B)])
    assert {(r.status, r.http_status, r.failure_reason) for r in results} == {
        (StoreStatus.FAILED, 400, None)
    }


def test_recorded_partition_put_upsert_builds_the_partition_url() -> None:
    results, request = store_recorded(
        "azure_partition_put_200.json",
        [ct(SOP_A), ct(SOP_B)],
        partition="site-a",
        method="put",
    )
    assert request.url == f"{AZURE}/partitions/site-a/studies"
    assert all(r.status is StoreStatus.STORED and r.http_status == 200 for r in results)
    assert results[0].retrieve_url is not None and "/partitions/site-a/" in results[0].retrieve_url


def test_recorded_qido_in_a_partition() -> None:
    expected, reply = recording("azure_qido_partition_200.json")
    adapter = ReplayAdapter(reply, Reply(204))
    client = make_client(adapter, partition="site-a")
    assert client.qido_instance_exists(STUDY, SERIES, SOP_A)
    assert not client.qido_instance_exists(STUDY, SERIES, SOP_B)
    first = adapter.requests[0]
    assert first.method == "GET" and first.path_url.startswith(expected["path"] + "?")
    assert f"SOPInstanceUID={SOP_A}" in (first.url or "")


def test_recorded_orthanc_failure_listed_with_200_is_read() -> None:
    expected, reply = recording("orthanc_failed_200.json")
    adapter = ReplayAdapter(reply)
    client = make_client(adapter, url="http://127.0.0.1:8042/dicom-web/")
    ok, failed = client.store([ct(SOP_A), ct(SOP_B)])
    assert adapter.requests[0].path_url == expected["path"]
    assert (ok.status, ok.http_status) == (StoreStatus.STORED, 200)
    assert (failed.status, failed.http_status, failed.failure_reason) == (
        StoreStatus.FAILED,
        200,
        272,
    )


# -- response parsing edge cases -----------------------------------------------------------


def test_200_without_body_is_taken_at_its_word_but_unlisted_instances_are_not() -> None:
    adapter = ReplayAdapter(Reply(200))
    [result] = make_client(adapter).store([ct(SOP_A)])
    assert result.status is StoreStatus.STORED

    listed_one = {"00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [SOP_A]}}]}}
    adapter = ReplayAdapter(Reply(200, listed_one))
    a, b = make_client(adapter).store([ct(SOP_A), ct(SOP_B)])
    assert a.status is StoreStatus.STORED
    assert (b.status, b.http_status) == (StoreStatus.FAILED, 200)


def test_unknown_status_with_per_instance_detail_is_still_read() -> None:
    body = {
        "00081198": {
            "vr": "SQ",
            "Value": [
                {
                    "00081155": {"vr": "UI", "Value": [SOP_A]},
                    "00081197": {"vr": "US", "Value": [272]},
                }
            ],
        }
    }
    [result] = make_client(ReplayAdapter(Reply(500, body))).store([ct(SOP_A)])
    assert (result.status, result.http_status, result.failure_reason) == (
        StoreStatus.FAILED,
        500,
        272,
    )


def test_encoded_instances_are_sent_as_given() -> None:
    adapter = ReplayAdapter(Reply(409))
    raw = EncodedInstance("1.2.3.4", b"not dicom at all")
    [result] = make_client(adapter).store([raw])
    assert parts_of(adapter.requests[0]) == [b"not dicom at all"]
    assert result.sop_instance_uid == "1.2.3.4" and result.status is StoreStatus.FAILED
    assert "not dicom" not in repr(raw)
