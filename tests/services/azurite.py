"""Azurite (blob service) and Toxiproxy as real services for the ADLS backend tests.

Session-scoped fixtures:

* ``azurite``: one ``azurite-blob`` process from ``node_modules`` (pinned in the repo's
  ``package.json``, installed by ``scripts/install-azurite.sh``) on a free port, started
  with ``--skipApiVersionCheck --inMemoryPersistence --silent --loose``;
* ``toxiproxy``: one ``toxiproxy-server`` (``scripts/install-toxiproxy.sh`` puts it in
  ``.tools/bin``), driven through its HTTP API.

Function-scoped: ``azurite_container`` (a fresh, empty container), ``azurite_env``
(``AZURE_STORAGE_CONNECTION_STRING`` pointing at Azurite, identity variables removed)
and ``azurite_proxy`` (a Toxiproxy proxy in front of Azurite, removed afterwards).

If a service cannot start, every test using it FAILS with the reason: it is never
skipped. Overrides: ``AZURITE_BIN``, ``TOXIPROXY_BIN``.

The ``run_*`` context managers raise :class:`ServiceStartError` instead of failing a
test, so the benchmarks can use them too.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest
import requests
from azure.storage.blob import BlobServiceClient, ContainerClient

__all__ = [
    "AZURITE_ACCOUNT",
    "AZURITE_KEY",
    "AzuriteServer",
    "ProxiedAzurite",
    "Proxy",
    "ServiceStartError",
    "Toxic",
    "ToxiproxyServer",
    "azurite",
    "azurite_container",
    "azurite_env",
    "azurite_proxy",
    "run_azurite",
    "run_toxiproxy",
    "seed_blobs",
    "toxiproxy",
]

REPO_ROOT = Path(__file__).resolve().parents[2]
# Azurite's well-known development account (public, documented by Microsoft).
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
_START_TIMEOUT = 30.0
_S = TypeVar("_S")
_IDENTITY_ENV = (
    "AZURE_CLIENT_ID",
    "AZURE_TENANT_ID",
    "AZURE_CLIENT_SECRET",
    "AZURE_CLIENT_CERTIFICATE_PATH",
    "AZURE_FEDERATED_TOKEN_FILE",
)


class ServiceStartError(RuntimeError):
    """A test service is not installed or did not come up."""


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def connection_string(port: int, *, key: str = AZURITE_KEY) -> str:
    """A connection string for Azurite's development account on ``port``."""
    return (
        f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};AccountKey={key};"
        f"BlobEndpoint=http://127.0.0.1:{port}/{AZURITE_ACCOUNT};"
    )


@dataclass(frozen=True)
class AzuriteServer:
    """A running Azurite blob service."""

    port: int
    version: str
    workdir: Path
    pid: int

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)

    def service_client(self, **kwargs: Any) -> BlobServiceClient:
        """A plain SDK client, for seeding and checking (not the code under test)."""
        return BlobServiceClient.from_connection_string(self.connection_string, **kwargs)

    def root(self, container: str, prefix: str = "") -> str:
        """An ``abfss://`` lake root for ``container`` in the development account."""
        tail = f"/{prefix.strip('/')}" if prefix.strip("/") else ""
        return f"abfss://{container}@{AZURITE_ACCOUNT}.dfs.core.windows.net{tail}"


def _which(env: str, candidates: Iterable[Path], name: str, hint: str) -> str:
    configured = os.environ.get(env)
    if configured:
        if not Path(configured).is_file():
            raise ServiceStartError(f"${env} points at {configured}, which does not exist")
        return configured
    for candidate in candidates:
        if candidate.is_file():
            return str(candidate)
    found = shutil.which(name)
    if found:
        return found
    raise ServiceStartError(f"{name} not found; {hint}")


def _stop(process: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM, then SIGKILL after ``grace`` s (in-memory services have nothing to save;
    Azurite otherwise waits for idle keep-alive connections to close)."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)


def _tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


def _wait_http(process: subprocess.Popen[bytes], url: str, what: str, log: Path) -> None:
    """Wait until ``url`` answers with any HTTP status."""
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceStartError(
                f"{what} exited with code {process.returncode} at start:\n{_tail(log)}"
            )
        try:
            requests.get(url, timeout=2)
            return
        except requests.RequestException:
            time.sleep(0.05)
    _stop(process)
    raise ServiceStartError(f"{what} did not answer within {_START_TIMEOUT:.0f} s:\n{_tail(log)}")


@contextlib.contextmanager
def run_azurite(workdir: Path, port: int | None = None) -> Iterator[AzuriteServer]:
    """Start Azurite's blob service in memory on ``port`` (a free one by default);
    stop it on exit."""
    binary = _which(
        "AZURITE_BIN",
        [REPO_ROOT / "node_modules" / ".bin" / "azurite-blob"],
        "azurite-blob",
        "install it with scripts/install-azurite.sh (npm ci at the repo root)",
    )
    package = REPO_ROOT / "node_modules" / "azurite" / "package.json"
    version = "unknown"
    with contextlib.suppress(OSError, ValueError, KeyError):
        version = str(json.loads(package.read_text())["version"])
    workdir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log = workdir / "azurite.log"
    args = [
        binary,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--skipApiVersionCheck",
        "--inMemoryPersistence",
        "--silent",
        "--loose",
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            args, cwd=workdir, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        _wait_http(process, f"http://127.0.0.1:{port}/{AZURITE_ACCOUNT}?comp=list", "Azurite", log)
        yield AzuriteServer(port=port, version=version, workdir=workdir, pid=process.pid)
    finally:
        _stop(process)


@dataclass(frozen=True)
class Toxic:
    """A toxic on a proxy (see Toxiproxy's README for types and attributes)."""

    proxy: Proxy
    name: str

    def remove(self) -> None:
        self.proxy.server.api("DELETE", f"/proxies/{self.proxy.name}/toxics/{self.name}")


@dataclass(frozen=True)
class ToxiproxyServer:
    """A running toxiproxy-server and its HTTP API."""

    api_url: str
    version: str

    def api(self, method: str, path: str, body: object | None = None) -> Any:
        response = requests.request(method, f"{self.api_url}{path}", json=body, timeout=10)
        if response.status_code >= 300:
            raise RuntimeError(f"toxiproxy {method} {path}: {response.status_code} {response.text}")
        return response.json() if response.content else None

    def proxy_to(self, upstream_port: int, name: str | None = None) -> tuple[str, int]:
        """Create a proxy listening on a free port; return (name, listen port)."""
        proxy_name = name or f"p-{uuid.uuid4().hex[:8]}"
        body = {
            "name": proxy_name,
            "listen": "127.0.0.1:0",
            "upstream": f"127.0.0.1:{upstream_port}",
        }
        created = self.api("POST", "/proxies", body)
        return proxy_name, int(str(created["listen"]).rsplit(":", 1)[1])

    def proxy(self, upstream_port: int) -> Proxy:
        """A new proxy to ``upstream_port`` (delete it with :meth:`Proxy.delete`)."""
        name, port = self.proxy_to(upstream_port)
        return Proxy(server=self, name=name, port=port)


@dataclass(frozen=True)
class Proxy:
    """A Toxiproxy proxy listening on ``127.0.0.1:port``."""

    server: ToxiproxyServer
    name: str
    port: int

    def add_toxic(
        self, kind: str, *, stream: str = "downstream", toxicity: float = 1.0, **attributes: int
    ) -> Toxic:
        """Add a toxic (``latency``, ``reset_peer``, ``timeout``, ``limit_data``, ...)."""
        name = f"{kind}-{stream}-{uuid.uuid4().hex[:6]}"
        body = {
            "name": name,
            "type": kind,
            "stream": stream,
            "toxicity": toxicity,
            "attributes": attributes,
        }
        self.server.api("POST", f"/proxies/{self.name}/toxics", body)
        return Toxic(self, name)

    def clear(self) -> None:
        """Remove every toxic from this proxy."""
        for toxic in self.server.api("GET", f"/proxies/{self.name}/toxics") or []:
            self.server.api("DELETE", f"/proxies/{self.name}/toxics/{toxic['name']}")

    def set_enabled(self, enabled: bool) -> None:
        """Disabled, the proxy closes its connections and refuses new ones (server down)."""
        self.server.api("POST", f"/proxies/{self.name}", {"enabled": enabled})

    def delete(self) -> None:
        self.server.api("DELETE", f"/proxies/{self.name}")


@dataclass(frozen=True)
class ProxiedAzurite(Proxy):
    """Azurite behind a Toxiproxy proxy: point clients at ``connection_string``."""

    azurite: AzuriteServer

    @property
    def connection_string(self) -> str:
        return connection_string(self.port)


@contextlib.contextmanager
def run_toxiproxy(workdir: Path) -> Iterator[ToxiproxyServer]:
    """Start toxiproxy-server on a free port; stop it on exit."""
    binary = _which(
        "TOXIPROXY_BIN",
        [REPO_ROOT / ".tools" / "bin" / "toxiproxy-server"],
        "toxiproxy-server",
        "install it with scripts/install-toxiproxy.sh (needs go)",
    )
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = workdir / "toxiproxy.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [binary, "-host", "127.0.0.1", "-port", str(port)],
            cwd=workdir,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    api_url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(process, f"{api_url}/version", "toxiproxy-server", log)
        version = str(requests.get(f"{api_url}/version", timeout=5).text).strip()
        yield ToxiproxyServer(api_url=api_url, version=version)
    finally:
        _stop(process)


def seed_blobs(
    container: ContainerClient,
    names: Iterable[str],
    *,
    data: bytes | None = None,
    threads: int = 8,
    metadata: dict[str, str] | None = None,
    source_root: Path | None = None,
) -> int:
    """Upload one blob per name concurrently (content: the file ``source_root/name``,
    else ``data``, else the name itself)."""

    def upload(name: str) -> None:
        if source_root is not None:
            body = (source_root / name).read_bytes()
        else:
            body = data if data is not None else name.encode()
        container.upload_blob(name, body, overwrite=True, metadata=metadata)

    todo = list(names)
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="seed") as pool:
        for _ in pool.map(upload, todo):
            pass
    return len(todo)


@contextlib.contextmanager
def _started(service: contextlib.AbstractContextManager[_S]) -> Iterator[_S]:
    """Enter ``service``; a start failure FAILS the test (never skips it)."""
    with contextlib.ExitStack() as stack:
        try:
            running = stack.enter_context(service)
        except ServiceStartError as exc:
            reason = str(exc)
        else:
            reason = ""
        if reason:
            pytest.fail(reason, pytrace=False)
        yield running


@pytest.fixture(scope="session")
def azurite(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AzuriteServer]:
    """A running Azurite blob service for the whole session."""
    with _started(run_azurite(tmp_path_factory.mktemp("azurite"))) as server:
        yield server


@pytest.fixture(scope="session")
def toxiproxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ToxiproxyServer]:
    """A running toxiproxy-server for the whole session."""
    with _started(run_toxiproxy(tmp_path_factory.mktemp("toxiproxy"))) as server:
        yield server


@pytest.fixture
def azurite_container(azurite: AzuriteServer) -> Iterator[ContainerClient]:
    """A fresh, empty container in Azurite (deleted afterwards)."""
    service = azurite.service_client()
    container = service.create_container(f"t{uuid.uuid4().hex[:20]}")
    try:
        yield container
    finally:
        with contextlib.suppress(Exception):
            container.delete_container()
        service.close()


@pytest.fixture
def azurite_env(azurite: AzuriteServer, monkeypatch: pytest.MonkeyPatch) -> AzuriteServer:
    """``AZURE_STORAGE_CONNECTION_STRING`` set to Azurite; identity variables removed."""
    for name in _IDENTITY_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", azurite.connection_string)
    return azurite


@pytest.fixture
def azurite_proxy(
    azurite: AzuriteServer, toxiproxy: ToxiproxyServer, monkeypatch: pytest.MonkeyPatch
) -> Iterator[ProxiedAzurite]:
    """Azurite behind a fresh Toxiproxy proxy; the connection string env points at it."""
    name, port = toxiproxy.proxy_to(azurite.port)
    proxied = ProxiedAzurite(server=toxiproxy, azurite=azurite, name=name, port=port)
    for env in _IDENTITY_ENV:
        monkeypatch.delenv(env, raising=False)
    monkeypatch.setenv("AZURE_STORAGE_CONNECTION_STRING", proxied.connection_string)
    try:
        yield proxied
    finally:
        toxiproxy.api("DELETE", f"/proxies/{name}")
