"""ADLS backend through Toxiproxy in front of Azurite: latency, resets, stalls.

Every test checks that each seeded file is listed and read exactly once, and that the
faults really happened (retries were logged, or a backend without retries fails).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from azure.storage.blob import ContainerClient

from dicom_lakehouse.errors import StorageAuthError, StorageError, StorageNotFoundError
from dicom_lakehouse.lake.adls import AdlsBackend, AdlsOptions
from dicom_lakehouse.lake.layout import instance_file_name, shard_keys
from tests.services.azurite import AZURITE_KEY, ProxiedAzurite, Toxic, seed_blobs

PARTITION = "AHDS/ws/dicom/svc/Microsoft.Default"
LOGGER = "dicom_lakehouse.lake.adls"


@pytest.fixture
def seeded(azurite_container: ContainerClient) -> list[str]:
    names = [f"{PARTITION}/{instance_file_name(w)}" for w in range(1, 241)]
    names += [f"{PARTITION}/healthCheck/health.txt", f"{PARTITION}/notes_1.txt"]
    seed_blobs(azurite_container, names)  # straight to Azurite, not through the proxy
    return names


def _backend(proxy: ProxiedAzurite, container: ContainerClient, **options: object) -> AdlsBackend:
    defaults: dict[str, object] = {
        "retry_total": 8,
        "retry_backoff": 0.05,
        "retry_backoff_max": 0.5,
        "connection_timeout": 2.0,
        "read_timeout": 2.0,
        "page_size": 40,
    }
    opts = AdlsOptions(**{**defaults, **options})  # type: ignore[arg-type]
    return AdlsBackend(proxy.azurite.root(container.container_name), opts)


def _list_and_read(lake: AdlsBackend, digits: int = 1) -> tuple[Counter[str], dict[str, bytes]]:
    """List every shard concurrently, then read the head of every file from 16 threads."""

    def shard(key: str) -> list[str]:
        return [i.path for i in lake.list_tree(PARTITION, key, digits) if not i.is_dir]

    with ThreadPoolExecutor(16, thread_name_prefix="test-io") as pool:
        listed = Counter(p for paths in pool.map(shard, shard_keys(digits)) for p in paths)
        heads = dict(
            zip(listed, pool.map(lambda p: lake.read_range(p, 0, 64), listed), strict=True)
        )
    return listed, heads


def _assert_complete(seeded: list[str], listed: Counter[str], heads: dict[str, bytes]) -> None:
    assert listed == Counter(seeded)  # every file exactly once
    assert heads == {name: name.encode()[:64] for name in seeded}


def _remove_later(toxic: Toxic, seconds: float) -> threading.Timer:
    timer = threading.Timer(seconds, toxic.remove)
    timer.start()
    return timer


def _retries(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if "transient storage fault" in r.getMessage()]


@pytest.fixture
def retry_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger=LOGGER):
        yield caplog


def test_latency_slows_but_does_not_break(
    azurite_proxy: ProxiedAzurite, azurite_container: ContainerClient, seeded: list[str]
) -> None:
    lake = _backend(azurite_proxy, azurite_container)
    name = seeded[0]
    assert lake.read_range(name, 0, 4)  # connect outside the timed part
    azurite_proxy.add_toxic("latency", latency=150)
    started = time.perf_counter()
    assert lake.read_range(name, 0, 64) == name.encode()[:64]
    assert time.perf_counter() - started >= 0.15  # the proxy is really in the path
    azurite_proxy.clear()
    azurite_proxy.add_toxic("latency", latency=20, jitter=5)
    _assert_complete(seeded, *_list_and_read(lake))


def test_reset_without_retries_fails_cleanly(
    azurite_proxy: ProxiedAzurite, azurite_container: ContainerClient, seeded: list[str]
) -> None:
    lake = _backend(azurite_proxy, azurite_container, retry_total=0)
    azurite_proxy.add_toxic("reset_peer", timeout=0)
    for action in (
        lambda: list(lake.list_tree(PARTITION, "1", 1)),
        lambda: lake.read_range(seeded[0], 0, 64),
    ):
        with pytest.raises(StorageError) as caught:
            action()
        assert not isinstance(caught.value, StorageAuthError | StorageNotFoundError)
        assert "after 0 retries" in str(caught.value)
        assert AZURITE_KEY not in str(caught.value)


@pytest.mark.parametrize(
    ("kind", "attributes", "options"),
    [
        pytest.param("reset_peer", {"timeout": 0}, {}, id="reset_peer"),
        pytest.param("timeout", {"timeout": 0}, {"read_timeout": 0.5}, id="stall_until_timeout"),
        pytest.param("timeout", {"timeout": 100}, {}, id="close_after_100ms"),
    ],
)
def test_outage_is_ridden_out_by_retries(
    azurite_proxy: ProxiedAzurite,
    azurite_container: ContainerClient,
    seeded: list[str],
    retry_log: pytest.LogCaptureFixture,
    kind: str,
    attributes: dict[str, int],
    options: dict[str, object],
) -> None:
    """A total outage of ~1 s in the middle of the work: everything still completes."""
    lake = _backend(azurite_proxy, azurite_container, **options)
    assert lake.read_range(seeded[0], 0, 4)
    toxic = azurite_proxy.add_toxic(kind, timeout=attributes["timeout"])
    timer = _remove_later(toxic, 1.0)
    try:
        started = time.perf_counter()
        listed, heads = _list_and_read(lake)
        elapsed = time.perf_counter() - started
    finally:
        timer.join()
    _assert_complete(seeded, listed, heads)
    assert elapsed >= 0.9  # nothing got through while the toxic was on
    assert _retries(retry_log), "no retry was logged: the fault did not hit"


def test_flaky_connections_every_file_once(
    azurite_proxy: ProxiedAzurite,
    azurite_container: ContainerClient,
    seeded: list[str],
    retry_log: pytest.LogCaptureFixture,
) -> None:
    """Latency plus a share of connections reset or cut mid-body, for the whole run."""
    lake = _backend(azurite_proxy, azurite_container)
    azurite_proxy.add_toxic("latency", latency=20, jitter=10)
    azurite_proxy.add_toxic("reset_peer", toxicity=0.3, timeout=150)
    azurite_proxy.add_toxic("limit_data", toxicity=0.3, bytes=3000)
    for _ in range(2):  # a second round runs on the connections the first one left
        _assert_complete(seeded, *_list_and_read(lake, digits=2))
    assert _retries(retry_log), "no retry was logged: the faults did not hit"


def test_listing_stream_survives_a_reset_between_pages(
    azurite_proxy: ProxiedAzurite,
    azurite_container: ContainerClient,
    seeded: list[str],
    retry_log: pytest.LogCaptureFixture,
) -> None:
    """A fault after the first page: the continuation is retried, nothing is repeated."""
    lake = _backend(azurite_proxy, azurite_container, page_size=25)
    listing = lake.list_tree(PARTITION, "", 0)
    first = [next(listing).path for _ in range(25)]  # exactly the first page
    toxic = azurite_proxy.add_toxic("reset_peer", timeout=0)
    timer = _remove_later(toxic, 0.5)
    try:
        rest = [i.path for i in listing]
    finally:
        timer.join()
    assert Counter(first + rest) == Counter(seeded)
    assert _retries(retry_log)
