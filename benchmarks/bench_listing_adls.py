"""ADLS listing benchmark: one listing stream vs sharded listing, on Azurite behind Toxiproxy.

Seeds one partition of ``--blobs`` tiny blobs named like the service names instances
(``layout.instance_file_name``), straight into Azurite with concurrent uploads, then
lists it through a Toxiproxy proxy that adds ``--latency-ms`` to every response:

* single: ``AdlsBackend.list_tree(partition, "", 0)``, one paged stream;
* sharded: every ``shard_keys(--digits)`` shard listed concurrently by ``--threads``
  threads (``digits=2``: 90 digit shards + the rest shard).

Both must return every blob exactly once. The same two listings are also timed without
the latency toxic, to show how much of the time is the emulator's own work.

    .venv/bin/python benchmarks/bench_listing_adls.py [--blobs 50000] [--digits 2]
        [--threads 16] [--latency-ms 20]

Needs Azurite (scripts/install-azurite.sh) and toxiproxy-server
(scripts/install-toxiproxy.sh). Prints a table of figures and the ratio, then one JSON
line with all of them.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))  # for tests.services.azurite (the service runners)

from tests.services.azurite import (  # noqa: E402
    ProxiedAzurite,
    run_azurite,
    run_toxiproxy,
    seed_blobs,
)

from dicom_lakehouse.lake.adls import AdlsBackend, AdlsOptions, _transport  # noqa: E402
from dicom_lakehouse.lake.layout import instance_file_name, shard_key, shard_keys  # noqa: E402

PARTITION = "AHDS/bench/dicom/svc/Microsoft.Default"


class _RetryCounter(logging.Handler):
    """Counts the backend's "transient storage fault" log lines (one per retry)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "transient storage fault" in record.getMessage():
            self.count += 1


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of process ``pid`` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class _Counted:
    """Counts the HTTP requests a backend's transport sends."""

    def __init__(self, options: AdlsOptions) -> None:
        self.transport = _transport(options)
        self.count = 0
        self._lock = threading.Lock()
        send = self.transport.send

        def counting_send(request: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.count += 1
            return send(request, **kwargs)

        self.transport.send = counting_send  # type: ignore[method-assign]


def _single(lake: AdlsBackend) -> Counter[str]:
    return Counter(i.path for i in lake.list_tree(PARTITION, "", 0))


def _sharded(lake: AdlsBackend, digits: int, threads: int) -> tuple[Counter[str], Counter[str]]:
    def one(shard: str) -> list[str]:
        return [i.path for i in lake.list_tree(PARTITION, shard, digits)]

    listed: Counter[str] = Counter()
    sizes: Counter[str] = Counter()
    with ThreadPoolExecutor(threads, thread_name_prefix="bench-shard") as pool:
        for shard, paths in zip(shard_keys(digits), pool.map(one, shard_keys(digits)), strict=True):
            listed.update(paths)
            sizes[shard] = len(paths)
    return listed, sizes


def _warm_up(lake: AdlsBackend, connections: int) -> None:
    """Open ``connections`` pooled connections with listings that match nothing."""
    with ThreadPoolExecutor(connections) as pool:
        list(pool.map(lambda _: list(lake.list_tree(PARTITION, "9999", 4)), range(connections)))


def _timed_pair(
    root: str,
    options: AdlsOptions,
    digits: int,
    threads: int,
    expected: Counter[str],
    server_pid: int,
) -> dict[str, Any]:
    """Time one single-stream and one sharded listing with fresh, warmed-up backends.

    Also records the CPU seconds this process (the SDK parsing responses) and the
    emulator spent, and how many requests and retries the listing took.
    """
    out: dict[str, Any] = {}
    retries = _RetryCounter()
    logging.getLogger("dicom_lakehouse.lake.adls").addHandler(retries)
    logging.getLogger("dicom_lakehouse.lake.adls").setLevel(logging.INFO)
    for mode in ("single", "sharded"):
        counted = _Counted(options)
        lake = AdlsBackend(root, options, transport=counted.transport)
        _warm_up(lake, threads if mode == "sharded" else 1)
        counted.count = retries.count = 0
        client_cpu, server_cpu = time.process_time(), _cpu_seconds(server_pid)
        started = time.perf_counter()
        if mode == "single":
            listed = _single(lake)
        else:
            listed, sizes = _sharded(lake, digits, threads)
            out["largest_shard"] = max(sizes.values())
            out["largest_shard_key"] = max(sizes, key=lambda k: sizes[k])
        out[f"{mode}_s"] = round(time.perf_counter() - started, 3)
        out[f"{mode}_client_cpu_s"] = round(time.process_time() - client_cpu, 2)
        out[f"{mode}_azurite_cpu_s"] = round(_cpu_seconds(server_pid) - server_cpu, 2)
        out[f"{mode}_requests"] = counted.count
        out[f"{mode}_retries"] = retries.count
        if listed != expected:
            missing = sum((expected - listed).values())
            extra = sum((listed - expected).values())
            raise SystemExit(f"{mode} listing is wrong: {missing} missing, {extra} extra")
        lake.close()
    logging.getLogger("dicom_lakehouse.lake.adls").removeHandler(retries)
    out["ratio"] = round(out["single_s"] / out["sharded_s"], 2)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--blobs", type=int, default=50_000, help="blobs in the partition")
    parser.add_argument("--digits", type=int, default=2, help="shard digits (2: 91 shards)")
    parser.add_argument("--threads", type=int, default=16, help="threads listing shards")
    parser.add_argument("--latency-ms", type=int, default=20, help="added to each response")
    parser.add_argument("--page-size", type=int, default=5000, help="entries per request")
    parser.add_argument("--seed-threads", type=int, default=16)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temp dir)")
    args = parser.parse_args()

    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="bench-adls-"))
    options = AdlsOptions(
        page_size=args.page_size, max_connections=max(args.threads, 16) + 4, retry_backoff=0.1
    )
    figures: dict[str, Any] = {
        "blobs": args.blobs,
        "digits": args.digits,
        "shards": len(shard_keys(args.digits)),
        "threads": args.threads,
        "latency_ms": args.latency_ms,
        "page_size": args.page_size,
    }
    with run_azurite(work / "azurite") as azurite, run_toxiproxy(work / "toxiproxy") as toxi:
        figures["azurite"] = azurite.version
        service = azurite.service_client()
        container = service.create_container("bench")
        names = [f"{PARTITION}/{instance_file_name(w)}" for w in range(1, args.blobs + 1)]
        started = time.perf_counter()
        seed_blobs(container, names, data=b"x", threads=args.seed_threads)
        figures["seed_s"] = round(time.perf_counter() - started, 1)
        print(f"seeded {len(names)} blobs in {figures['seed_s']}s", file=sys.stderr, flush=True)
        expected = Counter(names)
        digit_share = Counter(shard_key(instance_file_name(w), 1) for w in range(1, 10_001))
        figures["leading_1_share"] = round(digit_share["1"] / 10_000, 3)

        name, port = toxi.proxy_to(azurite.port)
        proxy = ProxiedAzurite(server=toxi, azurite=azurite, name=name, port=port)
        os.environ["AZURE_STORAGE_CONNECTION_STRING"] = proxy.connection_string
        root = azurite.root("bench")

        plain = _timed_pair(root, options, args.digits, args.threads, expected, azurite.pid)
        figures.update({f"no_latency_{k}": v for k, v in plain.items()})
        if args.latency_ms > 0:
            proxy.add_toxic("latency", latency=args.latency_ms)
        figures.update(_timed_pair(root, options, args.digits, args.threads, expected, azurite.pid))
        service.close()

    print(f"{'figure':28} value")
    for key, value in figures.items():
        print(f"{key:28} {value}")
    print(
        f"sharded listing ({figures['shards']} shards, {args.threads} threads) is "
        f"{figures['ratio']}x the single stream with {args.latency_ms} ms latency "
        f"({figures['no_latency_ratio']}x without)"
    )
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
