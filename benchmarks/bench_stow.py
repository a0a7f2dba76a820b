"""STOW-RS benchmark: batched, concurrent stores vs one request per instance, against a
local Orthanc behind Toxiproxy with 20 ms latency per direction of each request.

    .venv/bin/python benchmarks/bench_stow.py [--instances 200] [--latency-ms 20]

Needs Orthanc (scripts/install-orthanc.sh) and Toxiproxy (scripts/install-toxiproxy.sh).
Prints the figures and the ratio, then one JSON line.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the test service helpers start Orthanc and Toxiproxy

from tests.services.azurite import run_toxiproxy  # noqa: E402
from tests.services.orthanc import make_ct_dataset, run_orthanc  # noqa: E402

from dicom_lakehouse.dicomweb import DicomWebClient  # noqa: E402


def _datasets(n: int, tag: str) -> list:  # type: ignore[type-arg]
    import pydicom

    study = pydicom.uid.generate_uid(entropy_srcs=[tag, "study"])
    series = pydicom.uid.generate_uid(entropy_srcs=[tag, "series"])
    return [
        make_ct_dataset(
            study_uid=study,
            series_uid=series,
            sop_uid=pydicom.uid.generate_uid(entropy_srcs=[tag, str(i)]),
            instance_number=i + 1,
        )
        for i in range(n)
    ]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=200)
    parser.add_argument("--latency-ms", type=int, default=20)
    parser.add_argument("--batch", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=4)
    args = parser.parse_args()
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        orthanc = stack.enter_context(run_orthanc(work / "orthanc"))
        proxy = stack.enter_context(run_toxiproxy(work / "toxiproxy"))
        port = int(orthanc.root_url.rsplit(":", 1)[1])
        name, listen = proxy.proxy_to(port)
        for stream in ("upstream", "downstream"):
            proxy.api(
                "POST",
                f"/proxies/{name}/toxics",
                {
                    "name": f"latency-{stream}",
                    "type": "latency",
                    "stream": stream,
                    "attributes": {"latency": args.latency_ms, "jitter": 0},
                },
            )
        base = orthanc.settings(url=f"http://127.0.0.1:{listen}/dicom-web/")
        figures: dict[str, float | int] = {
            "instances": args.instances,
            "latency_ms": args.latency_ms,
        }
        modes = {
            "single": dataclasses.replace(base, max_batch_instances=1, concurrency=1),
            "batched": dataclasses.replace(
                base, max_batch_instances=args.batch, concurrency=args.concurrency
            ),
        }
        for mode, settings in modes.items():
            datasets = _datasets(args.instances, mode)
            with DicomWebClient(settings, environ=orthanc.environ()) as client:
                started = time.perf_counter()
                results = client.store(datasets)
                seconds = time.perf_counter() - started
            assert all(r.ok for r in results), f"{mode}: not every instance was stored"
            figures[f"{mode}_seconds"] = round(seconds, 3)
            figures[f"{mode}_instances_per_s"] = round(args.instances / seconds, 1)
    figures["ratio"] = round(
        figures["batched_instances_per_s"] / figures["single_instances_per_s"], 2
    )
    for key, value in figures.items():
        print(f"{key:26} {value}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
