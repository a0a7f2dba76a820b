"""ADLS backend against a real Azurite blob service (no dfs endpoint: blob listing).

Azurite never writes HNS folder markers, so some tests upload fake ones (zero-length
blobs with ``hdi_isfolder=true``), as a hierarchical-namespace account would list them.
"""

from __future__ import annotations

import pickle
import threading
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import pytest
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import ContainerClient, generate_container_sas

from dicom_lakehouse.errors import (
    ConfigError,
    StorageArchivedError,
    StorageAuthError,
    StorageNotFoundError,
)
from dicom_lakehouse.lake.adls import AdlsBackend, AdlsOptions
from dicom_lakehouse.lake.backend import BackendSpec, FileInfo, _open_backend_cached, open_backend
from dicom_lakehouse.lake.layout import REST_SHARD, instance_file_name, shard_key, shard_keys
from dicom_lakehouse.lake.walker import plan_listing, run_listing_task
from tests.services.azurite import (
    AZURITE_ACCOUNT,
    AZURITE_KEY,
    AzuriteServer,
    connection_string,
    seed_blobs,
)

SERVICE = "AHDS/ws/dicom/svc"
PARTITION = f"{SERVICE}/Microsoft.Default"
# Names that are not instance files, chosen to hit every corner of the rest shard.
ODD_NAMES = [
    "0042.dcm",
    "1",
    "1_",
    "1.txt",
    "13",
    "13/child.dcm",
    "13-extra/notes.txt",
    "5/abc_1",
    "50_/x",
    "9_",
    "99",
    "990",
    "_lead",
    " space_1",
    "a_b/c_d.dcm",
    "x/y/z.txt",
    "zz_/deep/er_1.dcm",
    "\u00e9_1.dcm",
    "~tilde",
    "IMG_0001.dcm",
    "IMG_0002.dcm",
    "extra/readme.txt",
    "extra/scan_1.dcm",
    "healthCheck/health.txt",
]
# Folder markers as a hierarchical-namespace account lists them in flat blob listings.
MARKERS = ["13-extra", "extra", "x", "x/y", "zz_", "zz_/deep"]


@pytest.fixture(autouse=True)
def _fresh_backend_cache() -> Iterator[None]:
    _open_backend_cached.cache_clear()
    yield
    _open_backend_cached.cache_clear()


def _seed_partition(container: ContainerClient, watermarks: int = 300) -> set[str]:
    names = [f"{PARTITION}/{instance_file_name(w)}" for w in range(1, watermarks + 1)]
    names += [f"{PARTITION}/{n}" for n in ODD_NAMES]
    seed_blobs(container, names)
    markers = [f"{PARTITION}/{m}" for m in MARKERS]
    seed_blobs(container, markers, data=b"", metadata={"hdi_isfolder": "true"})
    return set(names) | set(markers)


def _backend(azurite: AzuriteServer, container: ContainerClient, **options: object) -> AdlsBackend:
    opts = AdlsOptions(**{"retry_backoff": 0.05, **options})  # type: ignore[arg-type]
    return AdlsBackend(azurite.root(container.container_name), opts)


def _first_segment(info: FileInfo) -> str:
    return info.path.removeprefix(PARTITION + "/").split("/", 1)[0]


@pytest.mark.parametrize("digits", [1, 2, 3])
def test_shards_together_equal_one_full_listing(
    azurite_env: AzuriteServer, azurite_container: ContainerClient, digits: int
) -> None:
    seeded = _seed_partition(azurite_container)
    lake = _backend(azurite_env, azurite_container, page_size=250)
    full = Counter(i.path for i in lake.list_tree(PARTITION, "", 0))
    assert full == Counter(seeded)  # each seeded blob exactly once
    sharded: Counter[str] = Counter()
    for shard in shard_keys(digits):
        for info in lake.list_tree(PARTITION, shard, digits):
            assert shard_key(_first_segment(info), digits) == shard, info.path
            sharded[info.path] += 1
    assert sharded == full
    assert max(sharded.values()) == 1


def test_markers_are_folders_and_files_are_not(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    _seed_partition(azurite_container, watermarks=20)
    lake = _backend(azurite_env, azurite_container)
    infos = [i for shard in shard_keys(1) for i in lake.list_tree(PARTITION, shard, 1)]
    dirs = sorted(i.path.removeprefix(PARTITION + "/") for i in infos if i.is_dir)
    assert dirs == sorted(MARKERS)
    assert all(i.size == 0 and i.access_tier is None for i in infos if i.is_dir)


class CountingTransport(RequestsTransport):
    """The SDK's own transport, counting the requests that go through it."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def send(self, request: Any, **kwargs: Any) -> Any:
        self.urls.append(request.url)
        return super().send(request, **kwargs)


def test_rest_shard_skips_instance_groups_instead_of_enumerating_them(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    """The ``_``-grouped listing collapses instance names into ``NNN_`` prefixes."""
    seeded = _seed_partition(azurite_container, watermarks=400)
    transport = CountingTransport()
    opts = AdlsOptions(page_size=50)
    lake = AdlsBackend(
        azurite_env.root(azurite_container.container_name), opts, transport=transport
    )
    rest = Counter(i.path for i in lake.list_tree(PARTITION, REST_SHARD, 1))
    expected = {p for p in seeded if shard_key(p.split("/")[5], 1) == REST_SHARD}
    assert rest == Counter(expected)
    grouped = [u for u in transport.urls if "delimiter=_" in u]
    follow_ups = sorted(
        unquote(u.split("prefix=", 1)[1].split("&", 1)[0]).removeprefix(PARTITION + "/")
        for u in transport.urls
        if "comp=list" in u and "delimiter" not in u
    )
    # At page size 50 a full listing of the 400+ names takes 9 pages; the grouped one
    # sees ~300 NNN_ groups plus the rest entries (7 pages), then one flat listing per
    # rest group or rest folder, and none for the instance groups.
    assert len(grouped) <= 8
    assert follow_ups == sorted(
        [" space_", "IMG_", "_", "a_", "extra/", "healthCheck/", "x/", "zz_", "\u00e9_"]
    )
    listed_names = Counter(i.path for i in lake.list_tree(PARTITION, "", 0))
    assert sum(listed_names.values()) == len(seeded)


def test_list_dir_children_dedupes_markers_and_missing_folder_raises(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    _seed_partition(azurite_container, watermarks=5)
    seed_blobs(azurite_container, [f"{SERVICE}/Radiology/{instance_file_name(7)}"])
    seed_blobs(azurite_container, [f"{SERVICE}/{instance_file_name(9)}"])
    lake = _backend(azurite_env, azurite_container)
    children = Counter((i.path, i.is_dir) for i in lake.list_dir(SERVICE))
    assert children == Counter(
        {
            (PARTITION, True): 1,
            (f"{SERVICE}/Radiology", True): 1,
            (f"{SERVICE}/{instance_file_name(9)}", False): 1,
        }
    )
    # "x" is a marker blob AND a prefix: one folder entry.
    inside = Counter(
        (i.path.removeprefix(PARTITION + "/"), i.is_dir) for i in lake.list_dir(PARTITION)
    )
    assert inside[("x", True)] == 1 and inside[("extra", True)] == 1
    assert inside[("13", False)] == 1 and inside[("13", True)] == 1  # file and folder "13"
    with pytest.raises(StorageNotFoundError, match="NoSuchPartition"):
        list(lake.list_dir(f"{SERVICE}/NoSuchPartition"))


def test_empty_marker_folder_lists_as_empty(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    seed_blobs(azurite_container, [f"{SERVICE}/empty"], data=b"", metadata={"hdi_isfolder": "true"})
    lake = _backend(azurite_env, azurite_container)
    assert list(lake.list_dir(f"{SERVICE}/empty")) == []


def test_walker_plans_and_runs_on_azurite(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    seeded = _seed_partition(azurite_container, watermarks=50)
    spec = BackendSpec(azurite_env.root(azurite_container.container_name))
    lake = open_backend(spec)
    tasks = plan_listing(lake, "ws", "svc", digits=2)
    assert len(tasks) == len(shard_keys(2))
    listed = Counter(i.path for t in tasks for i in run_listing_task(open_backend(spec), t))
    assert listed == Counter(seeded)


def test_file_info_fields(azurite_env: AzuriteServer, azurite_container: ContainerClient) -> None:
    name = f"{PARTITION}/{instance_file_name(1)}"
    azurite_container.upload_blob(name, b"x" * 1234)
    before = datetime.now(UTC) - timedelta(minutes=5)
    lake = _backend(azurite_env, azurite_container)
    (info,) = lake.list_tree(PARTITION, "", 0)
    props = azurite_container.get_blob_client(name).get_blob_properties()
    assert info == FileInfo(
        name,
        1234,
        props.last_modified.astimezone(UTC),
        props.etag.strip('"'),
        is_dir=False,
        access_tier="Hot",
    )
    assert info.last_modified is not None and info.last_modified.tzinfo is UTC
    assert before < info.last_modified < datetime.now(UTC) + timedelta(minutes=5)
    azurite_container.get_blob_client(name).set_standard_blob_tier("Cool")
    (cool,) = lake.list_tree(PARTITION, "", 0)
    assert cool.access_tier == "Cool"


def test_root_prefix_is_transparent(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    name = f"{PARTITION}/{instance_file_name(2)}"
    azurite_container.upload_blob(name, b"0123456789")
    root = azurite_env.root(azurite_container.container_name, "AHDS/ws")
    lake = AdlsBackend(root)
    rel = f"dicom/svc/Microsoft.Default/{instance_file_name(2)}"
    assert [i.path for i in lake.list_tree("dicom/svc/Microsoft.Default", "", 0)] == [rel]
    assert [i.path for i in lake.list_dir("dicom/svc")] == ["dicom/svc/Microsoft.Default"]
    assert lake.read_range(rel, 2, 3) == b"234"


def test_read_range_offsets_and_end_of_file(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    name = f"{PARTITION}/{instance_file_name(3)}"
    body = bytes(range(256)) * 40
    azurite_container.upload_blob(name, body)
    azurite_container.upload_blob(f"{PARTITION}/empty.dcm", b"")
    lake = _backend(azurite_env, azurite_container)
    assert lake.read_range(name, 0, 132) == body[:132]
    assert lake.read_range(name, 128, 4) == body[128:132]
    assert lake.read_range(name, len(body) - 10, 100) == body[-10:]  # fewer at the end
    assert lake.read_range(name, len(body), 10) == b""
    assert lake.read_range(name, len(body) + 50, 10) == b""
    assert lake.read_range(name, 5, 0) == b""
    assert lake.read_range(f"{PARTITION}/empty.dcm", 0, 10) == b""
    with pytest.raises(ValueError, match="negative"):
        lake.read_range(name, -1, 10)


def test_read_of_vanished_file_is_not_found(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    name = f"{SERVICE}/healthCheck/health7c9e6679-7425-40de-944b-e07fc1f90ae7.txt"
    azurite_container.upload_blob(name, b"ok")
    lake = _backend(azurite_env, azurite_container)
    assert [i.path for i in lake.list_tree(f"{SERVICE}/healthCheck", "", 0)] == [name]
    azurite_container.delete_blob(name)
    with pytest.raises(StorageNotFoundError):
        lake.read_range(name, 0, 16)


def test_archived_blob_is_listed_with_its_tier_and_read_raises(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    name = f"{PARTITION}/{instance_file_name(4)}"
    azurite_container.upload_blob(name, b"DICM" * 100)
    azurite_container.get_blob_client(name).set_standard_blob_tier("Archive")
    lake = _backend(azurite_env, azurite_container)
    (info,) = lake.list_tree(PARTITION, "", 0)
    assert info.access_tier == "Archive"
    with pytest.raises(StorageArchivedError) as caught:
        lake.read_range(name, 0, 128)
    assert caught.value.quarantine_reason == "archived"


def test_wrong_account_key_is_an_auth_error_without_the_key(
    azurite: AzuriteServer, azurite_container: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_key = "V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5V3JvbmdLZXlXcm9uZ0tleVdyb25nS2V5MDA="
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", connection_string(azurite.port, key=wrong_key)
    )
    name = f"{PARTITION}/{instance_file_name(5)}"
    azurite_container.upload_blob(name, b"x")
    lake = _backend(azurite, azurite_container)
    for action in (
        lambda: list(lake.list_tree(PARTITION, "", 0)),
        lambda: list(lake.list_dir(SERVICE)),
        lambda: lake.read_range(name, 0, 1),
    ):
        with pytest.raises(StorageAuthError) as caught:
            action()
        message = str(caught.value)
        assert "Storage Blob Data Reader" in message
        assert azurite_container.container_name in message
        for secret in (wrong_key, AZURITE_KEY, wrong_key[:16]):
            assert secret not in message
            assert secret not in str(caught.value.__cause__)


def test_bad_sas_is_an_auth_error_without_the_sas(
    azurite: AzuriteServer, azurite_container: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    sas = generate_container_sas(
        AZURITE_ACCOUNT,
        azurite_container.container_name,
        account_key="QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5QmFkS2V5",
        permission="rl",
        expiry=datetime.now(UTC) + timedelta(hours=1),
    )
    signature = dict(p.split("=", 1) for p in sas.split("&"))["sig"]
    endpoint = f"http://127.0.0.1:{azurite.port}/{AZURITE_ACCOUNT}"
    monkeypatch.setenv(
        "AZURE_STORAGE_CONNECTION_STRING", f"BlobEndpoint={endpoint};SharedAccessSignature={sas}"
    )
    lake = _backend(azurite, azurite_container)
    with pytest.raises(StorageAuthError) as caught:
        list(lake.list_tree(PARTITION, "", 0))
    assert signature not in str(caught.value) and sas not in str(caught.value)
    assert signature not in str(caught.value.__cause__)


def test_connection_string_for_another_account_is_refused(
    azurite: AzuriteServer, azurite_container: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    lake = AdlsBackend(f"abfss://{azurite_container.container_name}@other.dfs.core.windows.net")
    with pytest.raises(ConfigError, match="other"):
        list(lake.list_dir(SERVICE))


def test_dfs_listing_needs_a_dfs_endpoint(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    lake = _backend(azurite_env, azurite_container, listing="dfs")
    with pytest.raises(ConfigError, match="listing=dfs"):
        list(lake.list_dir(SERVICE))
    assert _backend(azurite_env, azurite_container).uses_dfs is False


def test_concurrent_reads_share_one_lazily_built_client(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    names = [f"{PARTITION}/{instance_file_name(w)}" for w in range(1, 161)]
    seed_blobs(azurite_container, names)
    lake = _backend(azurite_env, azurite_container)
    barrier = threading.Barrier(16)

    def clients_after_barrier(_: int) -> object:
        barrier.wait()
        return lake._get_clients()

    with ThreadPoolExecutor(16) as pool:
        built = set(map(id, pool.map(clients_after_barrier, range(16))))
        assert len(built) == 1
        got = list(pool.map(lambda n: lake.read_range(n, 0, 64), names * 2))
    assert got == [n.encode()[:64] for n in names * 2]


def test_backend_pickles_without_live_clients(
    azurite_env: AzuriteServer, azurite_container: ContainerClient
) -> None:
    name = f"{PARTITION}/{instance_file_name(6)}"
    azurite_container.upload_blob(name, b"abcdef")
    spec = BackendSpec(azurite_env.root(azurite_container.container_name), (("page_size", "100"),))
    lake = open_backend(spec)
    assert isinstance(lake, AdlsBackend)
    assert lake.read_range(name, 1, 3) == b"bcd"
    copy = pickle.loads(pickle.dumps(lake))
    assert isinstance(copy, AdlsBackend) and copy is not lake
    assert copy._clients is None and copy.options.page_size == 100
    assert copy.read_range(name, 3, 10) == b"def"
    assert open_backend(spec) is lake  # one backend per process and spec
    lake.close()
    assert lake.read_range(name, 0, 2) == b"ab"  # reconnects after close
