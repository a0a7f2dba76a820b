"""ADLS backend configuration without any server: roots, options, credential order."""

from __future__ import annotations

import logging
import os
import pickle

import pytest
from azure.core.credentials import AzureNamedKeyCredential, AzureSasCredential
from azure.identity import ClientSecretCredential, DefaultAzureCredential

from dicom_lakehouse.errors import ConfigError
from dicom_lakehouse.lake.adls import (
    AdlsBackend,
    AdlsLocation,
    AdlsOptions,
    _resolve_connection,
    parse_root,
)
from dicom_lakehouse.lake.backend import (
    BackendSpec,
    LakeBackend,
    _open_backend_cached,
    open_backend,
)

SECRET = "c2VjcmV0LWtleS10aGF0LW11c3Qtbm90LWxlYWstYW55d2hlcmUtMDEyMzQ1Njc4OQ=="
ALL_ENV = (
    "AZURE_STORAGE_CONNECTION_STRING",
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ALL_ENV:
        monkeypatch.delenv(name, raising=False)
    _open_backend_cached.cache_clear()


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        (
            "abfss://lake@contoso.dfs.core.windows.net",
            AdlsLocation(
                "contoso",
                "lake",
                "",
                "contoso.dfs.core.windows.net",
                "contoso.blob.core.windows.net",
            ),
        ),
        (
            "abfss://lake@contoso.dfs.core.windows.net/AHDS/ws/",
            AdlsLocation(
                "contoso",
                "lake",
                "AHDS/ws",
                "contoso.dfs.core.windows.net",
                "contoso.blob.core.windows.net",
            ),
        ),
        (
            "https://contoso.dfs.core.chinacloudapi.cn/lake/a/b",
            AdlsLocation(
                "contoso",
                "lake",
                "a/b",
                "contoso.dfs.core.chinacloudapi.cn",
                "contoso.blob.core.chinacloudapi.cn",
            ),
        ),
        (
            "https://contoso.blob.core.windows.net/lake",
            AdlsLocation(
                "contoso",
                "lake",
                "",
                "contoso.dfs.core.windows.net",
                "contoso.blob.core.windows.net",
                prefers_dfs=False,
            ),
        ),
        (
            "https://contoso.z12.blob.storage.azure.net/lake",
            AdlsLocation(
                "contoso",
                "lake",
                "",
                "contoso.z12.dfs.storage.azure.net",
                "contoso.z12.blob.storage.azure.net",
                prefers_dfs=False,
            ),
        ),
        ("abfss://lake@devstoreaccount1/x", AdlsLocation("devstoreaccount1", "lake", "x")),
    ],
)
def test_parse_root(root: str, expected: AdlsLocation) -> None:
    assert parse_root(root) == expected


@pytest.mark.parametrize(
    ("root", "match"),
    [
        ("s3://bucket/x", "abfss:// or https://"),
        ("abfss://Lake@contoso.dfs.core.windows.net", "valid container"),
        ("abfss://contoso.dfs.core.windows.net/x", "valid container"),
        ("abfss://lake@contoso.dfs.core.windows.net/a//b", "empty or relative"),
        ("abfss://lake@contoso.dfs.core.windows.net/a/../b", "empty or relative"),
        ("https://user@contoso.blob.core.windows.net/lake", "no user part"),
    ],
)
def test_parse_root_rejects(root: str, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        parse_root(root)


def test_root_with_a_sas_is_refused_without_echoing_it() -> None:
    root = f"https://contoso.blob.core.windows.net/lake?sv=2025-11-05&sig={SECRET}"
    with pytest.raises(ConfigError) as caught:
        parse_root(root)
    assert SECRET not in str(caught.value) and "sas_token_env" in str(caught.value)


def test_options_parse_and_defaults() -> None:
    assert AdlsOptions.from_pairs(()) == AdlsOptions()
    opts = AdlsOptions.from_pairs(
        [
            ("listing", "BLOB"),
            ("retry_total", "3"),
            ("retry_backoff", "0.25"),
            ("read_timeout", "5"),
            ("max_connections", "48"),
            ("page_size", "1000"),
            ("sas_token_env", "LAKE_SAS"),
        ]
    )
    assert (opts.listing, opts.retry_total, opts.retry_backoff) == ("blob", 3, 0.25)
    assert (opts.read_timeout, opts.max_connections, opts.page_size) == (5.0, 48, 1000)
    assert opts.sas_token_env == "LAKE_SAS"
    assert pickle.loads(pickle.dumps(opts)) == opts


@pytest.mark.parametrize(
    ("pairs", "match"),
    [
        ([("listng", "blob")], "unknown lake.storage option 'listng'.*known: account_key_env"),
        ([("listing", "hdfs")], "listing must be one of auto, blob, dfs"),
        ([("retry_total", "many")], "retry_total must be an integer"),
        ([("read_timeout", "soon")], "read_timeout must be a number"),
        ([("page_size", "9000")], "page_size must be between 1 and 5000"),
        ([("max_connections", "0")], "max_connections must be between"),
        ([("retry_total", "1"), ("retry_total", "2")], "given twice"),
        ([("account_key_env", "A"), ("sas_token_env", "B")], "not both"),
    ],
)
def test_bad_options_name_the_key(pairs: list[tuple[str, str]], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        AdlsOptions.from_pairs(pairs)


@pytest.mark.parametrize("key", ["account_key", "sas_token", "connection_string", "SAS"])
def test_secrets_in_options_are_refused_without_echoing_them(key: str) -> None:
    with pytest.raises(ConfigError) as caught:
        AdlsOptions.from_pairs([(key, SECRET)])
    assert SECRET not in str(caught.value)
    assert "environment variable" in str(caught.value)


def test_a_secret_pasted_as_an_env_var_name_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        AdlsOptions.from_pairs([("account_key_env", SECRET)])
    assert SECRET not in str(caught.value) and "NAME of an environment variable" in str(
        caught.value
    )


LOCATION = parse_root("abfss://lake@contoso.dfs.core.windows.net")


def test_connection_string_comes_first(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING",
        f"DefaultEndpointsProtocol=https;AccountName=contoso;AccountKey={SECRET};"
        "EndpointSuffix=core.windows.net",
    )
    monkeypatch.setenv("LAKE_KEY", "other")
    conn = _resolve_connection(LOCATION, AdlsOptions(account_key_env="LAKE_KEY"), os.environ)
    assert conn.kind == "connection string"
    assert conn.blob_url == "https://contoso.blob.core.windows.net"
    assert conn.dfs_url == "https://contoso.dfs.core.windows.net"
    assert isinstance(conn.credential, AzureNamedKeyCredential)
    assert conn.credential.named_key == ("contoso", SECRET)


def test_emulator_connection_string_has_no_dfs_endpoint() -> None:
    env = {
        "AZURE_STORAGE_CONNECTION_STRING": (
            "DefaultEndpointsProtocol=http;AccountName=devstoreaccount1;"
            f"AccountKey={SECRET};BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"
        )
    }
    location = parse_root("abfss://lake@devstoreaccount1.dfs.core.windows.net")
    conn = _resolve_connection(location, AdlsOptions(), env)
    assert conn.blob_url == "http://127.0.0.1:10000/devstoreaccount1"
    assert conn.dfs_url is None
    dev = _resolve_connection(
        location, AdlsOptions(), {"AZURE_STORAGE_CONNECTION_STRING": "UseDevelopmentStorage=true"}
    )
    assert dev.blob_url == "http://127.0.0.1:10000/devstoreaccount1" and dev.dfs_url is None
    with pytest.raises(ConfigError, match="listing=dfs"):
        _resolve_connection(location, AdlsOptions(listing="dfs"), env)


def test_sas_connection_string_and_account_check() -> None:
    sas_env = {
        "AZURE_STORAGE_CONNECTION_STRING": (
            f"BlobEndpoint=https://contoso.blob.core.windows.net/;SharedAccessSignature=?sv=x&sig={SECRET}"
        )
    }
    conn = _resolve_connection(LOCATION, AdlsOptions(), sas_env)
    assert isinstance(conn.credential, AzureSasCredential)
    assert conn.credential.signature == f"sv=x&sig={SECRET}"
    other = parse_root("abfss://lake@fabrikam.dfs.core.windows.net")
    with pytest.raises(
        ConfigError, match="'contoso' but the lake root names account 'fabrikam'"
    ) as e:
        _resolve_connection(other, AdlsOptions(), sas_env)
    assert SECRET not in str(e.value)
    with pytest.raises(ConfigError, match="malformed"):
        _resolve_connection(LOCATION, AdlsOptions(), {"AZURE_STORAGE_CONNECTION_STRING": "junk"})


def test_account_key_and_sas_from_named_env_vars() -> None:
    conn = _resolve_connection(
        LOCATION, AdlsOptions(account_key_env="LAKE_KEY"), {"LAKE_KEY": SECRET}
    )
    assert isinstance(conn.credential, AzureNamedKeyCredential)
    assert conn.kind == "account key from $LAKE_KEY"
    assert conn.dfs_url == "https://contoso.dfs.core.windows.net"
    conn = _resolve_connection(
        LOCATION, AdlsOptions(sas_token_env="LAKE_SAS"), {"LAKE_SAS": "?sv=1&sig=x"}
    )
    assert isinstance(conn.credential, AzureSasCredential)
    assert conn.credential.signature == "sv=1&sig=x"
    with pytest.raises(ConfigError, match=r"names \$LAKE_KEY, which is not set"):
        _resolve_connection(LOCATION, AdlsOptions(account_key_env="LAKE_KEY"), {})


def test_service_principal_then_default_credential() -> None:
    sp = {"AZURE_CLIENT_ID": "c", "AZURE_TENANT_ID": "t", "AZURE_CLIENT_SECRET": SECRET}
    conn = _resolve_connection(LOCATION, AdlsOptions(), sp)
    assert isinstance(conn.credential, ClientSecretCredential)
    assert SECRET not in conn.kind
    partial = {"AZURE_CLIENT_ID": "c"}
    conn = _resolve_connection(LOCATION, AdlsOptions(), partial)
    assert isinstance(conn.credential, DefaultAzureCredential)
    assert conn.kind == "DefaultAzureCredential"


def test_listing_mode_picks_the_dfs_endpoint() -> None:
    env = {"LAKE_KEY": SECRET}
    key = {"account_key_env": "LAKE_KEY"}
    assert _resolve_connection(LOCATION, AdlsOptions(**key), env).dfs_url  # type: ignore[arg-type]
    blob = AdlsOptions(listing="blob", **key)  # type: ignore[arg-type]
    assert _resolve_connection(LOCATION, blob, env).dfs_url is None
    blob_root = parse_root("https://contoso.blob.core.windows.net/lake")
    assert _resolve_connection(blob_root, AdlsOptions(**key), env).dfs_url is None  # type: ignore[arg-type]
    emulator = parse_root("abfss://lake@devstoreaccount1/x")
    with pytest.raises(ConfigError, match="not an Azure storage endpoint"):
        _resolve_connection(emulator, AdlsOptions(), {})


def test_open_backend_builds_adls_backends_lazily_and_caches_them(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setenv("LAKE_KEY", SECRET)
    spec = BackendSpec(
        "abfss://lake@contoso.dfs.core.windows.net/AHDS", (("account_key_env", "LAKE_KEY"),)
    )
    backend = open_backend(spec)
    assert isinstance(backend, AdlsBackend)
    assert isinstance(backend, LakeBackend)
    assert backend._clients is None  # nothing connects before the first call
    assert open_backend(spec) is backend
    assert isinstance(
        open_backend(BackendSpec("https://contoso.blob.core.windows.net/lake")), AdlsBackend
    )
    with caplog.at_level(logging.DEBUG):
        assert backend.uses_dfs  # builds the clients (no request is sent)
    logged = "\n".join(r.getMessage() for r in caplog.records)
    assert "account key from $LAKE_KEY" in logged
    assert SECRET not in logged and SECRET not in repr(backend)
    copy = pickle.loads(pickle.dumps(backend))
    assert copy._clients is None and copy.root == backend.root
    with pytest.raises(ConfigError, match=r"unknown lake\.storage option"):
        open_backend(BackendSpec("abfss://lake@contoso.dfs.core.windows.net", (("nope", "1"),)))


def test_bad_shard_is_refused() -> None:
    backend = AdlsBackend("abfss://lake@contoso.dfs.core.windows.net")
    with pytest.raises(ValueError, match="not a listing shard"):
        backend.list_tree("AHDS", "5", 2)
    with pytest.raises(ValueError, match="not a listing shard"):
        backend.list_tree("AHDS", "05", 2)


def test_the_http_session_reads_the_environment_once_unless_proxies_are_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dicom_lakehouse.lake.adls import _session

    for key in list(os.environ):
        if "proxy" in key.lower() or key in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/etc/ssl/corp-bundle.pem")
    once = _session()
    assert once.trust_env is False and once.verify == "/etc/ssl/corp-bundle.pem"
    monkeypatch.setenv("https_proxy", "http://proxy.corp:3128")
    assert _session().trust_env is True  # requests keeps applying proxies and NO_PROXY
