"""Where an incremental refine's time goes: CPU per JVM thread group and JIT work.

Builds the silver benchmark's lake, ingests it and builds silver, runs one full
rebuild to warm the JVM, then ``--loops`` times adds 1% new instances (in new
studies), ingests them and refines incrementally. Around each incremental refine it
reads the driver JVM's CPU time per thread group from ``/proc`` and, with the JDK's
``jcmd``, the JIT compilation count and the code cache's use. Linux only.

    .venv/bin/python benchmarks/profile_refine.py [--instances 100000] [--loops 3]

Prints one line per refine, then one JSON line with all of them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench_silver import _add_instances, bench_spark, build_bench_lake

from dicom_lakehouse.config import settings_from_mapping
from dicom_lakehouse.ingest import run_ingest
from dicom_lakehouse.refine import run_refine

_TICK = os.sysconf("SC_CLK_TCK")


def _thread_cpu(pid: int) -> Counter[str]:
    """CPU seconds per thread group (names with digits folded: ``C2 CompilerThread0``
    and ``C1 CompilerThread0`` are both ``C# CompilerThre``)."""
    groups: Counter[str] = Counter()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            stat = (task / "stat").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat.rsplit(")", 1)[1].split()
        groups[re.sub(r"\d+", "#", name)] += (int(fields[11]) + int(fields[12])) / _TICK
    return groups


def _jcmd(pid: int, command: str) -> str:
    done = subprocess.run(["jcmd", str(pid), command], capture_output=True, text=True)
    return done.stdout if done.returncode == 0 else ""


def _compiles(pid: int) -> int | None:
    """JIT compilations since the JVM started (HotSpot's ``sun.ci.totalCompiles``)."""
    found = re.search(r"sun\.ci\.totalCompiles=(\d+)", _jcmd(pid, "PerfCounter.print"))
    return int(found.group(1)) if found else None


def _code_cache_used(pid: int) -> float | None:
    """The share of the code cache in use, over all its heaps."""
    heaps = re.findall(r"size=(\d+)Kb used=(\d+)Kb", _jcmd(pid, "Compiler.codecache"))
    size = sum(int(s) for s, _ in heaps)
    return round(sum(int(u) for _, u in heaps) / size, 3) if size else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--instances", type=int, default=100_000)
    parser.add_argument("--loops", type=int, default=3)
    parser.add_argument("--work", default=None)
    args = parser.parse_args()
    work = Path(args.work or tempfile.mkdtemp(prefix="dl-profile-refine-"))
    lake, config = build_bench_lake(work, args.instances)
    settings = settings_from_mapping({**config, "silver": {"zorder": True}})
    spark = bench_spark()
    pid = spark.sparkContext._gateway.proc.pid  # type: ignore[union-attr]
    step = max(1, len(lake.instances) // 100)
    top = max(f.watermark or 0 for f in lake.files)
    refines = []
    try:
        run_ingest(settings, spark)
        run_refine(settings, spark)
        run_refine(settings, spark, full=True)  # warms the JVM, as in bench_silver
        for loop in range(args.loops):
            # whole studies (the lake lists instances study by study), new each loop
            sources = [lake.root / f.path for f in lake.instances[loop * step : (loop + 1) * step]]
            top += _add_instances(work / "lake", sources, top + 1)
            run_ingest(settings, spark)
            cpu, compiles = _thread_cpu(pid), _compiles(pid)
            started, python = time.perf_counter(), time.process_time()
            summary = run_refine(settings, spark)
            wall = time.perf_counter() - started
            spent = _thread_cpu(pid)
            spent.subtract(cpu)
            after = _compiles(pid)
            threads = {name: round(s, 2) for name, s in spent.most_common(6)}
            refine = {
                "wall_seconds": round(wall, 2),
                "jvm_cpu_seconds": round(sum(spent.values()), 2),
                "jvm_cpu_per_wall": round(sum(spent.values()) / wall, 2),
                "python_cpu_seconds": round(time.process_time() - python, 2),
                "jit_compilations": after - compiles if after and compiles else None,
                "code_cache_used": _code_cache_used(pid),
                "thread_cpu_seconds": threads,
                "instances_changed": summary.instances_changed,
            }
            refines.append(refine)
            print(" ".join(f"{k}={v}" for k, v in refine.items()))
    finally:
        spark.stop()
    print(json.dumps({"instances": args.instances, "refines": refines}))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
