"""The ``dicom-lakehouse`` command line and the platform entry points.

``dicom-lakehouse ingest --config FILE [--config FILE ...] [--json]``. With
``--json`` the last line of stdout is one JSON summary object; without it a
person sees progress on stderr and a summary table. Databricks
``python_wheel_task`` calls :func:`ingest_task` with named parameters
(``--config=...``); Synapse and Fabric run ``python -m dicom_lakehouse``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dicom_lakehouse.config import Settings, load_config
from dicom_lakehouse.errors import DicomLakehouseError

__all__ = ["cohort_task", "ingest_task", "main", "refine_task", "writeback_task"]

logger = logging.getLogger("dicom_lakehouse.cli")


def _parse_set(items: Sequence[str]) -> dict[str, Any]:
    """``--set a.b=c`` overrides as a nested mapping (values parsed as YAML)."""
    import yaml

    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise DicomLakehouseError(f"--set needs KEY=VALUE, got {item!r}")
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = yaml.safe_load(raw)
    return out


def _settings(args: argparse.Namespace) -> Settings:
    return load_config(args.config or [], _parse_set(args.set or []))


def _table(summary: dict[str, Any], keys: Sequence[str]) -> str:
    width = max(len(k) for k in keys)
    return "\n".join(f"  {k.ljust(width)}  {summary[k]}" for k in keys if k in summary)


_INGEST_KEYS = (
    "files_listed",
    "files_ingested",
    "files_unchanged",
    "files_quarantined",
    "files_ignored",
    "files_foreign",
    "files_vanished",
    "bytes_read",
    "lake_bytes",
    "batches",
    "seconds",
)


def _emit(summary: dict[str, Any], as_json: bool, keys: Sequence[str], title: str) -> None:
    if as_json:
        print(json.dumps(summary, sort_keys=True, default=str))
        return
    print(title)
    print(_table(summary, keys))
    for extra in ("quarantine_reasons", "foreign_reasons", "partitions"):
        if summary.get(extra):
            print(f"  {extra}: " + ", ".join(f"{k}={v}" for k, v in sorted(summary[extra].items())))


def cmd_ingest(args: argparse.Namespace) -> int:
    from dicom_lakehouse.ingest import run_ingest

    summary = run_ingest(_settings(args)).as_dict()
    _emit(summary, args.json, _INGEST_KEYS, "ingest summary")
    return 0


_REFINE_KEYS = (
    "instances",
    "series",
    "studies",
    "patients",
    "instances_changed",
    "instances_deleted",
    "studies_recomputed",
    "ingest_runs_refined",
    "study_conflicts",
    "full",
    "seconds",
)
_COHORT_KEYS = ("name", "version", "level", "studies", "series", "instances", "seconds")


def cmd_refine(args: argparse.Namespace) -> int:
    from dicom_lakehouse.refine import run_refine

    summary = run_refine(_settings(args), full=args.full).as_dict()
    _emit(summary, args.json, _REFINE_KEYS, "refine summary")
    if summary.get("coerced") and not args.json:
        print("  coerced: " + ", ".join(f"{k}={v}" for k, v in summary["coerced"].items()))
    return 0


def cmd_cohort(args: argparse.Namespace) -> int:
    from dicom_lakehouse.cohort import build_cohort

    summary = build_cohort(_settings(args), args.name, args.where, level=args.level).as_dict()
    _emit(summary, args.json, _COHORT_KEYS, f"cohort {args.name}")
    return 0


_WRITEBACK_KEYS = (
    "cohort",
    "cohort_version",
    "deriver",
    "series",
    "series_skipped",
    "derived",
    "stored",
    "already_stored",
    "failed",
    "retryable",
    "source_bytes_read",
    "seconds",
)


def cmd_writeback(args: argparse.Namespace) -> int:
    from dicom_lakehouse.writeback import run_writeback

    summary = run_writeback(
        _settings(args), args.cohort, args.deriver, model_uri=args.model
    ).as_dict()
    _emit(summary, args.json, _WRITEBACK_KEYS, f"write-back of cohort {args.cohort}")
    # a scheduled job must not look green while instances are still missing
    return 0 if not (summary["failed"] or summary["retryable"]) else 1


def cmd_config_show(args: argparse.Namespace) -> int:
    from dicom_lakehouse.config_show import load_with_sources, render

    settings, sources = load_with_sources(args.config or [], _parse_set(args.set or []))
    print(render(settings, sources), end="")
    return 0


def cmd_doctor(args: argparse.Namespace) -> int:
    import dataclasses

    from dicom_lakehouse.doctor import render, run_checks

    checks = run_checks(_settings(args))
    if args.json:
        print(json.dumps([dataclasses.asdict(c) for c in checks]))
    else:
        print(render(checks))
    return 0 if all(c.ok for c in checks) else 1


def cmd_demo(args: argparse.Namespace) -> int:
    from dicom_lakehouse.demo import run_demo

    dicomweb = None
    if args.dicomweb_url:
        dicomweb = {"url": args.dicomweb_url}
        if args.dicomweb_user:
            dicomweb.update(
                auth="basic", username=args.dicomweb_user, password_env=args.dicomweb_password_env
            )
    result = run_demo(Path(args.dir), show=not args.json, dicomweb=dicomweb)
    _emit(result, args.json, _INGEST_KEYS, "demo ingest summary")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dicom-lakehouse", description=__doc__.split("\n")[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--config",
            action="append",
            metavar="FILE",
            help="YAML config; repeat to layer files (later wins)",
        )
        p.add_argument(
            "--set",
            action="append",
            metavar="KEY=VALUE",
            help="override one key, e.g. --set spark.master=local[2]",
        )
        p.add_argument("--json", action="store_true", help="print one JSON summary line last")

    ingest = sub.add_parser("ingest", help="land new lake file versions in the bronze tables")
    common(ingest)
    ingest.set_defaults(func=cmd_ingest)

    refine = sub.add_parser("refine", help="refine bronze into the typed silver tables")
    common(refine)
    refine.add_argument("--full", action="store_true", help="rebuild silver from bronze")
    refine.set_defaults(func=cmd_refine)

    cohort = sub.add_parser("cohort", help="build a named, versioned cohort from silver")
    common(cohort)
    cohort.add_argument("--name", required=True, help="cohort name (letters, digits, - _)")
    cohort.add_argument(
        "--where",
        required=True,
        metavar="SQL_PREDICATE",
        help="Spark SQL predicate on the silver table of --level",
    )
    cohort.add_argument("--level", choices=("study", "series", "instance"), default="instance")
    cohort.set_defaults(func=cmd_cohort)

    writeback = sub.add_parser(
        "writeback", help="derive DICOM objects from a cohort and store them via STOW-RS"
    )
    common(writeback)
    writeback.add_argument("--cohort", required=True, help="cohort name (its latest version)")
    writeback.add_argument("--deriver", required=True, choices=("sc", "seg"))
    writeback.add_argument(
        "--model",
        default=None,
        metavar="URI",
        help="MLflow model URI (models:/... or runs:/...) for seg",
    )
    writeback.set_defaults(func=cmd_writeback)

    config = sub.add_parser("config", help="inspect the resolved configuration")
    config_sub = config.add_subparsers(dest="config_command", required=True)
    show = config_sub.add_parser("show", help="print the resolved config as YAML, secrets masked")
    common(show)
    show.set_defaults(func=cmd_config_show)

    doctor = sub.add_parser("doctor", help="check Spark/Delta, storage, tables, DICOMweb, MLflow")
    common(doctor)
    doctor.set_defaults(func=cmd_doctor)

    demo = sub.add_parser("demo", help="build a sample lake locally and ingest it")
    demo.add_argument("--dir", default=".demo", help="folder for the sample lake and tables")
    demo.add_argument("--json", action="store_true", help="print one JSON summary line last")
    demo.add_argument(
        "--dicomweb-url", default=None, help="a DICOMweb base URL: also write derived objects back"
    )
    demo.add_argument("--dicomweb-user", default=None, help="basic-auth user name")
    demo.add_argument(
        "--dicomweb-password-env",
        default="DICOMWEB_PASSWORD",
        help="environment variable holding the basic-auth password",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is now (tests and notebooks swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stderr
        super().emit(record)


def _configure_logging(verbose: bool) -> None:
    package = logging.getLogger("dicom_lakehouse")
    if not any(isinstance(h, _StderrHandler) for h in package.handlers):
        handler = _StderrHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        package.addHandler(handler)  # once per process, however often main() runs
    package.setLevel(logging.DEBUG if verbose else logging.INFO)


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point."""
    args = build_parser().parse_args(argv)
    _configure_logging(args.verbose)
    try:
        return int(args.func(args))
    except DicomLakehouseError as exc:
        print(f"dicom-lakehouse: error: {exc}", file=sys.stderr)
        return 2


def _task(command: str) -> Callable[[], None]:
    def run() -> None:
        code = main([command, *sys.argv[1:]])
        if code:
            raise SystemExit(code)

    run.__name__ = f"{command}_task"
    return run


ingest_task = _task("ingest")
"""Databricks ``python_wheel_task`` entry: ``named_parameters: {config: ...}``."""
refine_task = _task("refine")
cohort_task = _task("cohort")
writeback_task = _task("writeback")
