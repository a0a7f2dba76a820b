"""ADLS backend against recorded HTTP responses: the dfs endpoint and HNS specifics that
Azurite cannot show (Path - List, hdi_isfolder folder markers, auth and tier errors).

The recordings in tests/recordings/adls/ are hand-written from the REST reference. They
are replayed by a real azure-core ``RequestsTransport`` whose requests session answers
from them, so the SDK's whole pipeline (signing, retry policy, deserialisation) runs.
Every exchange must be used exactly as often as recorded.
"""

from __future__ import annotations

import io
import json
import logging
import threading
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
import requests
import urllib3
from azure.core.exceptions import ClientAuthenticationError
from azure.core.pipeline.transport import RequestsTransport
from requests.adapters import HTTPAdapter

from dicom_lakehouse.errors import (
    StorageArchivedError,
    StorageAuthError,
    StorageError,
    StorageNotFoundError,
)
from dicom_lakehouse.lake import adls
from dicom_lakehouse.lake.adls import AdlsBackend, AdlsOptions
from dicom_lakehouse.lake.layout import shard_key

RECORDINGS = Path(__file__).parent / "recordings" / "adls"
ROOT = "abfss://lake@contosolake.dfs.core.windows.net"
SERVICE = "AHDS/contosows/dicom/dicomsvc"
PARTITION = f"{SERVICE}/Microsoft.Default"
KEY_ENV = "DL_TEST_ACCOUNT_KEY"
SAS_ENV = "DL_TEST_SAS"
FAKE_KEY = "ZmFrZS1rZXktZm9yLXJlY29yZGVkLXRlc3RzLW9ubHktMDEyMzQ1Njc4OQ=="
FAKE_SIG = "Q2hhbmdlTWVQbGVhc2VTdXBlclNlY3JldFNpZ25hdHVyZQ%3D"
FAKE_SAS = f"sv=2025-11-05&ss=b&srt=co&sp=rl&se=2030-01-01T00:00:00Z&spr=https&sig={FAKE_SIG}"


@dataclass
class _Exchange:
    request: dict[str, Any]
    response: dict[str, Any]
    left: int


@dataclass
class Seen:
    """One request the replay answered."""

    method: str
    url: str
    headers: dict[str, str]
    query: dict[str, str] = field(default_factory=dict)


class _ReplayAdapter(HTTPAdapter):
    """A requests adapter that answers from a recording instead of the network."""

    def __init__(self, exchanges: list[_Exchange]) -> None:
        super().__init__()
        self.exchanges = exchanges
        self.seen: list[Seen] = []
        self._lock = threading.Lock()

    def _matches(self, rule: dict[str, Any], request: requests.PreparedRequest) -> bool:
        parts = urlsplit(request.url or "")
        query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
        if rule["method"] != request.method or rule["host"] != parts.hostname:
            return False
        if rule["path"] != unquote(parts.path):
            return False
        if any(query.get(k) != v for k, v in rule.get("query", {}).items()):
            return False
        if any(k in query for k in rule.get("absent", [])):
            return False
        return all(request.headers.get(k) == v for k, v in rule.get("headers", {}).items())

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            parts = urlsplit(request.url or "")
            query = {k: v[0] for k, v in parse_qs(parts.query, keep_blank_values=True).items()}
            self.seen.append(
                Seen(request.method or "", request.url or "", dict(request.headers), query)
            )
            for exchange in self.exchanges:
                if exchange.left > 0 and self._matches(exchange.request, request):
                    exchange.left -= 1
                    return self.build_response(request, _urllib3_response(exchange.response))
        raise AssertionError(f"no recorded exchange for {request.method} {request.url}")


def _urllib3_response(spec: dict[str, Any]) -> urllib3.HTTPResponse:
    if "body_file" in spec:
        body = (RECORDINGS / spec["body_file"]).read_bytes()
    else:
        body = str(spec.get("body", "")).encode("latin-1")
    headers = {
        "x-ms-request-id": "00000000-0000-0000-0000-000000000000",
        "Date": "Tue, 14 Jan 2025 09:40:00 GMT",
        **spec["headers"],
        "Content-Length": str(len(body)),
    }
    return urllib3.HTTPResponse(
        body=io.BytesIO(body),
        headers=headers,
        status=spec["status"],
        preload_content=False,
        decode_content=False,
    )


class Replay:
    """A recorded scenario: the transport to hand to the backend, and what it saw."""

    def __init__(self, scenario: str) -> None:
        doc = json.loads((RECORDINGS / f"{scenario}.json").read_text())
        assert doc["description"] and doc["source"]
        self.exchanges = [
            _Exchange(e["request"], e["response"], int(e["response"].get("repeat", 1)))
            for e in doc["exchanges"]
        ]
        self.adapter = _ReplayAdapter(self.exchanges)
        session = requests.Session()
        session.mount("https://", self.adapter)
        self.transport = RequestsTransport(session=session, session_owner=False)

    @property
    def seen(self) -> list[Seen]:
        return self.adapter.seen

    def assert_all_used(self) -> None:
        unused = [e.request for e in self.exchanges if e.left]
        assert not unused, f"recorded exchanges never requested: {unused}"


@pytest.fixture
def key_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AZURE_STORAGE_CONNECTION_STRING", "AZURE_CLIENT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv(KEY_ENV, FAKE_KEY)
    monkeypatch.setenv(SAS_ENV, FAKE_SAS)


def backend(replay: Replay, **options: Any) -> AdlsBackend:
    opts = {"account_key_env": KEY_ENV, "retry_backoff": 0.0, **options}
    return AdlsBackend(ROOT, AdlsOptions(**opts), transport=replay.transport)


def _paths(infos: list[Any]) -> list[str]:
    return [i.path for i in infos]


@pytest.mark.usefixtures("key_env")
def test_recorded_dfs_list_tree_follows_continuation_and_keeps_directories() -> None:
    replay = Replay("dfs_list_tree_partition")
    lake = backend(replay)
    infos = list(lake.list_tree(PARTITION, "", 0))
    replay.assert_all_used()
    assert lake.uses_dfs
    assert _paths(infos) == [
        f"{PARTITION}/13-extra",
        f"{PARTITION}/132_1.dcm",
        f"{PARTITION}/13-extra/notes.txt",
        f"{PARTITION}/692_2.dcm",
        f"{PARTITION}/768_1000.dcm",
    ]
    by_path = {i.path: i for i in infos}
    folder = by_path[f"{PARTITION}/13-extra"]
    assert folder.is_dir and folder.size == 0
    first = by_path[f"{PARTITION}/132_1.dcm"]
    assert not first.is_dir
    assert first.size == 528442
    assert first.etag == "0x8DD3484F12C0A11"
    assert first.last_modified == datetime(2025, 1, 14, 9, 12, 32, tzinfo=UTC)
    assert first.access_tier is None  # Path - List carries no tier
    assert [s.query.get("recursive") for s in replay.seen] == ["true", "true"]
    assert "continuation" in replay.seen[1].query
    assert all(s.headers["Authorization"].startswith("SharedKey contosolake:") for s in replay.seen)


@pytest.mark.usefixtures("key_env")
def test_recorded_dfs_list_dir_lists_one_level() -> None:
    replay = Replay("dfs_list_dir_service")
    infos = list(backend(replay).list_dir(SERVICE))
    replay.assert_all_used()
    assert [(i.path.rsplit("/", 1)[1], i.is_dir) for i in infos] == [
        ("Microsoft.Default", True),
        ("Radiology", True),
        ("healthCheck", True),
        ("132_1.dcm", False),
    ]
    assert replay.seen[0].query["recursive"] == "false"


@pytest.mark.usefixtures("key_env")
def test_recorded_dfs_missing_folder_is_not_found() -> None:
    replay = Replay("dfs_path_not_found")
    with pytest.raises(StorageNotFoundError, match="NoSuchPartition"):
        list(backend(replay).list_dir(f"{SERVICE}/NoSuchPartition"))
    replay.assert_all_used()


@pytest.mark.usefixtures("key_env")
def test_recorded_dfs_permission_mismatch_is_an_auth_error_without_secrets() -> None:
    replay = Replay("dfs_permission_mismatch")
    with pytest.raises(StorageAuthError) as caught:
        list(backend(replay).list_dir(SERVICE))
    message = str(caught.value)
    assert "Storage Blob Data Reader on contosolake/lake" in message
    assert "AuthorizationPermissionMismatch" in message
    assert FAKE_KEY not in message
    assert len(replay.seen) == 1  # 403 is not retried


@pytest.mark.usefixtures("key_env")
def test_recorded_dfs_refusal_falls_back_to_blob_once(caplog: pytest.LogCaptureFixture) -> None:
    replay = Replay("dfs_refused_then_blob")
    lake = backend(replay)
    with caplog.at_level(logging.WARNING, logger="dicom_lakehouse.lake.adls"):
        first = _paths(list(lake.list_dir(SERVICE)))
        second = _paths(list(lake.list_dir(SERVICE)))
    replay.assert_all_used()
    assert first == second
    assert not lake.uses_dfs
    hosts = [urlsplit(s.url).hostname for s in replay.seen]
    assert hosts == [
        "contosolake.dfs.core.windows.net",
        "contosolake.blob.core.windows.net",
        "contosolake.blob.core.windows.net",
    ]
    warnings = [r for r in caplog.records if "blob endpoint from now on" in r.getMessage()]
    assert len(warnings) == 1


@pytest.mark.usefixtures("key_env")
def test_recorded_dfs_refusal_is_an_error_when_dfs_is_forced() -> None:
    replay = Replay("dfs_refused_then_blob")
    with pytest.raises(StorageError, match="EndpointUnsupportedAccountFeatures"):
        list(backend(replay, listing="dfs").list_dir(SERVICE))
    assert len(replay.seen) == 1


@pytest.mark.usefixtures("key_env")
def test_recorded_hns_blob_list_dir_yields_each_folder_once() -> None:
    replay = Replay("hns_list_dir_blob")
    infos = list(backend(replay, listing="blob").list_dir(SERVICE))
    replay.assert_all_used()
    names = Counter((i.path.rsplit("/", 1)[1], i.is_dir) for i in infos)
    assert names == Counter(
        {
            ("132_1.dcm", False): 1,
            ("Microsoft.Default", True): 1,
            ("Radiology", True): 1,
            ("healthCheck", True): 1,
            ("emptydir", True): 1,  # a marker blob without a BlobPrefix: an empty folder
        }
    )
    assert replay.seen[0].query["delimiter"] == "/"


@pytest.mark.usefixtures("key_env")
def test_recorded_hns_digit_shard_marks_folders_and_reads_tiers() -> None:
    replay = Replay("hns_digit_shard")
    infos = list(backend(replay).list_tree(PARTITION, "13", 2))
    replay.assert_all_used()
    assert [(i.path.removeprefix(PARTITION + "/"), i.is_dir) for i in infos] == [
        ("13-extra", True),
        ("13-extra/notes.txt", False),
        ("132_1.dcm", False),
        ("1371_52.dcm", False),
        ("139_7.dcm", False),
    ]
    by_name = {i.path.rsplit("/", 1)[1]: i for i in infos}
    assert by_name["13-extra"].size == 0 and by_name["13-extra"].access_tier is None
    assert by_name["132_1.dcm"].access_tier == "Cold"
    assert by_name["1371_52.dcm"].access_tier == "Archive"
    assert by_name["139_7.dcm"].access_tier == "Hot"
    assert by_name["132_1.dcm"].last_modified == datetime(2025, 1, 14, 9, 12, 32, tzinfo=UTC)
    assert {s.query["prefix"] for s in replay.seen} == {f"{PARTITION}/13"}
    assert "marker" in replay.seen[1].query
    assert all(shard_key(i.path.split("/")[5], 2) == "13" for i in infos)


@pytest.mark.usefixtures("key_env")
def test_recorded_rest_shard_skips_instance_groups_and_lists_the_rest_once() -> None:
    replay = Replay("hns_rest_shard")
    infos = list(backend(replay).list_tree(PARTITION, "~", 1))
    replay.assert_all_used()
    got = Counter((i.path.removeprefix(PARTITION + "/"), i.is_dir) for i in infos)
    assert got == Counter(
        {
            ("0042.dcm", False): 1,
            ("README", False): 1,
            ("extra", True): 1,
            ("IMG_0001.dcm", False): 1,
            ("IMG_0002.dcm", False): 1,
            ("extra/readme.txt", False): 1,
            ("extra/scan_1.dcm", False): 1,
        }
    )
    # One grouped listing, then one flat listing per rest group/folder; none for 132_ etc.
    assert [(s.query["prefix"], s.query.get("delimiter")) for s in replay.seen] == [
        (f"{PARTITION}/", "_"),
        (f"{PARTITION}/IMG_", None),
        (f"{PARTITION}/extra/", None),
    ]


@pytest.mark.usefixtures("key_env")
def test_recorded_rest_shard_falls_back_to_slash_when_delimiter_refused() -> None:
    replay = Replay("rest_shard_delimiter_refused")
    infos = list(backend(replay).list_tree(PARTITION, "~", 1))
    replay.assert_all_used()
    assert Counter(i.path.removeprefix(PARTITION + "/") for i in infos) == Counter(
        ["0042.dcm", "IMG_0001.dcm", "extra", "extra/readme.txt", "extra/scan_1.dcm"]
    )


@pytest.mark.usefixtures("key_env")
def test_recorded_sas_auth_failure_names_the_role_and_hides_the_signature() -> None:
    replay = Replay("sas_authentication_failed")
    lake = backend(replay, account_key_env=None, sas_token_env=SAS_ENV)
    with pytest.raises(StorageAuthError) as caught:
        list(lake.list_tree(PARTITION, "69", 2))
    replay.assert_all_used()
    assert f"sig={FAKE_SIG}" in replay.seen[0].url  # the SAS was really sent ...
    chain: list[BaseException] = []
    error: BaseException | None = caught.value
    while error is not None:
        chain.append(error)
        error = error.__cause__ or error.__context__
    for exc in chain:  # ... and appears in no message, ours or the SDK's
        assert unquote(FAKE_SIG) not in str(exc)
        assert FAKE_SIG not in str(exc)
    assert "Storage Blob Data Reader" in str(caught.value)
    assert "AuthenticationFailed" in str(caught.value)
    assert len(replay.seen) == 1


@pytest.mark.usefixtures("key_env")
def test_recorded_archived_read_raises_archived() -> None:
    replay = Replay("read_archived")
    with pytest.raises(StorageArchivedError) as caught:
        backend(replay).read_range(f"{PARTITION}/1371_52.dcm", 0, 16384)
    replay.assert_all_used()
    assert caught.value.quarantine_reason == "archived"
    assert len(replay.seen) == 1  # 409 is not retried


@pytest.mark.usefixtures("key_env")
def test_recorded_vanished_read_raises_not_found() -> None:
    replay = Replay("read_not_found")
    name = f"{SERVICE}/healthCheck/health7c9e6679-7425-40de-944b-e07fc1f90ae7.txt"
    with pytest.raises(StorageNotFoundError):
        backend(replay).read_range(name, 0, 4096)
    replay.assert_all_used()


@pytest.mark.usefixtures("key_env")
def test_recorded_read_range_sends_one_ranged_get() -> None:
    replay = Replay("read_range")
    data = backend(replay).read_range(f"{PARTITION}/132_1.dcm", 128, 12)
    replay.assert_all_used()
    assert data == b"DICM\x02\x00\x00\x00UL\x04\x00"
    assert len(replay.seen) == 1
    assert replay.seen[0].headers["x-ms-range"] == "bytes=128-139"


@pytest.mark.usefixtures("key_env")
def test_recorded_throttling_is_retried(caplog: pytest.LogCaptureFixture) -> None:
    replay = Replay("throttled_then_ok")
    with caplog.at_level(logging.INFO, logger="dicom_lakehouse.lake.adls"):
        infos = list(backend(replay, retry_total=3).list_tree(PARTITION, "69", 2))
    replay.assert_all_used()
    assert _paths(infos) == [f"{PARTITION}/692_2.dcm"]
    retries = [r.getMessage() for r in caplog.records if "transient" in r.getMessage()]
    assert len(retries) == 2
    assert "HTTP 503" in retries[0] and "HTTP 429" in retries[1]


@pytest.mark.usefixtures("key_env")
def test_recorded_persistent_server_error_gives_up_after_the_retries() -> None:
    replay = Replay("internal_error_persistent")
    with pytest.raises(StorageError, match="HTTP 500 InternalError") as caught:
        list(backend(replay, retry_total=2).list_tree(PARTITION, "69", 2))
    replay.assert_all_used()
    assert len(replay.seen) == 3  # the first try and two retries
    assert not isinstance(caught.value, StorageAuthError | StorageNotFoundError)


def test_recorded_token_failure_is_an_auth_error_before_any_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class NoToken:
        def get_token(self, *scopes: str, **kwargs: Any) -> Any:
            raise ClientAuthenticationError("DefaultAzureCredential failed to retrieve a token")

    monkeypatch.delenv("AZURE_STORAGE_CONNECTION_STRING", raising=False)
    monkeypatch.setattr(adls, "_token_credential", lambda environ: (NoToken(), "test"))
    adapter = _ReplayAdapter([])
    session = requests.Session()
    session.mount("https://", adapter)
    lake = AdlsBackend(
        ROOT, AdlsOptions(retry_backoff=0.0), transport=RequestsTransport(session=session)
    )
    with pytest.raises(StorageAuthError, match="could not authenticate to contosolake/lake"):
        list(lake.list_dir(SERVICE))
    with pytest.raises(StorageAuthError):
        lake.read_range(f"{PARTITION}/132_1.dcm", 0, 10)
    assert adapter.seen == []  # no request left without a token
