"""The job definitions in ``jobs/``: each task resolves to the package's entry points (or
the main file / notebook) and its parameters parse; then every distinct task runs locally,
in dependency order, with the definition's own parameters against the sample lake.

How a task becomes a CLI call:

- Databricks ``python_wheel_task``: the entry point ``entry_point`` of ``package_name`` in
  the ``dicom_lakehouse.tasks`` group; the subcommand is what the entry point function
  runs (``ingest_task`` -> ``ingest``); ``named_parameters`` become ``--key=value``
  (bundle ``${var.*}`` resolved for the dev target). Run: the entry point function with
  ``sys.argv`` as Databricks sets it.
- Synapse Spark job definitions and Fabric Spark job definitions: ``jobs/<main file>``
  with ``args`` / ``commandLineArguments``; the first argument is the subcommand. Run:
  the main file as ``__main__`` (runpy). ``${NAME}`` placeholders are filled as
  ``envsubst`` does at deploy time, from :data:`DEPLOY`.
- Fabric pipeline: each notebook activity runs ``jobs/fabric/<notebook>.ipynb`` with its
  parameters (``@pipeline().parameters.X`` expressions resolved from the pipeline's
  defaults). The CLI arguments are what the notebook itself builds. Run: the notebook's
  cells, the parameters injected after the parameters cell as Fabric does.

For the runs, every ``--config`` layer named ``base.yaml`` is the repository's
``conf/base.yaml`` and every platform layer is replaced by a config for the sample lake.
"""

from __future__ import annotations

import contextlib
import importlib.metadata as md
import io
import itertools
import json
import logging
import re
import runpy
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

import dicom_lakehouse.cli as cli
from dicom_lakehouse.config import TablesConfig

REPO = Path(__file__).resolve().parents[1]
JOBS = REPO / "jobs"
CONF = REPO / "conf"
TASK_GROUP = "dicom_lakehouse.tasks"
ORDER = ("ingest", "refine", "cohort", "writeback")

#: Deploy-time values for the ``${NAME}`` placeholders of the Synapse and Fabric JSON.
DEPLOY = {
    "SYNAPSE_SPARK_POOL": "dicompool",
    "SYNAPSE_JOBS_ROOT": "abfss://code@account1.dfs.core.windows.net/dicom-lakehouse",
    "DICOM_LAKE_ROOT": "abfss://lake@account1.dfs.core.windows.net",
    "DICOM_WORKSPACE": "ws1",
    "DICOM_SERVICE": "svc1",
    "DICOM_TABLES_ROOT": "abfss://tables@account1.dfs.core.windows.net/dicom",
    "FABRIC_WORKSPACE_ID": "11111111-1111-1111-1111-111111111111",
    "FABRIC_LAKEHOUSE_ID": "22222222-2222-2222-2222-222222222222",
    "FABRIC_ENVIRONMENT_ID": "33333333-3333-3333-3333-333333333333",
    "FABRIC_NOTEBOOK_ID": "44444444-4444-4444-4444-444444444444",
}
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REQUIRED_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")  # no ":-default"
_BUNDLE_VAR = re.compile(r"\$\{var\.([A-Za-z0-9_]+)\}")
_PIPELINE_PARAM = re.compile(r"@\{?pipeline\(\)\.parameters\.([A-Za-z0-9_]+)\}?")


@dataclass(frozen=True)
class Task:
    """One task of a job definition, as the CLI sees it."""

    platform: str
    key: str
    command: str
    argv: tuple[str, ...]  # what the platform passes after the program name
    depends_on: tuple[str, ...]
    source: Path
    runner: str  # entry_point | main_file | notebook
    target: str  # entry point name, main file path or notebook path
    params: dict[str, str] = field(default_factory=dict, compare=False)  # notebook only


# -- loading the definitions ---------------------------------------------------------


def _deploy(text: str) -> str:
    """Fill ``${NAME}`` placeholders like ``envsubst`` (unknown names fail the test)."""
    unknown = sorted(set(_PLACEHOLDER.findall(text)) - set(DEPLOY))
    assert not unknown, f"placeholders without a deploy value in the test: {unknown}"
    return _PLACEHOLDER.sub(lambda m: DEPLOY[m[1]], text)


def _bundle() -> tuple[dict[str, Any], Path]:
    path = JOBS / "databricks" / "databricks.yml"
    return yaml.safe_load(path.read_text()), path


def _bundle_vars(bundle: dict[str, Any], target: str) -> dict[str, Any]:
    values = {
        name: spec.get("default") for name, spec in bundle["variables"].items() if "default" in spec
    }
    values.update(bundle["targets"][target].get("variables", {}))
    return values


def _resolve_vars(value: Any, variables: dict[str, Any]) -> Any:
    if isinstance(value, str):
        return _BUNDLE_VAR.sub(lambda m: str(variables.get(m[1], m[0])), value)
    if isinstance(value, dict):
        return {k: _resolve_vars(v, variables) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve_vars(v, variables) for v in value]
    return value


def _task_entry_point(package_name: str, name: str) -> md.EntryPoint:
    """The entry point Databricks would call: ``name`` in the package's metadata."""
    dist = md.distribution(package_name)
    found = [ep for ep in dist.entry_points if ep.name == name and ep.group == TASK_GROUP]
    assert len(found) == 1, (
        f"{package_name} has no {TASK_GROUP} entry point {name!r} "
        "(pip install -e . refreshes the metadata)"
    )
    return found[0]


def _command_of(ep: md.EntryPoint) -> str:
    function = ep.load()
    assert function.__name__.endswith("_task"), function
    return function.__name__.removesuffix("_task")


def databricks_tasks() -> list[Task]:
    bundle, path = _bundle()
    variables = _bundle_vars(bundle, "dev")
    tasks = []
    for job in bundle["resources"]["jobs"].values():
        for spec in _resolve_vars(job["tasks"], variables):
            wheel = spec["python_wheel_task"]
            ep = _task_entry_point(wheel["package_name"], wheel["entry_point"])
            params = wheel.get("named_parameters", {})
            tasks.append(
                Task(
                    platform="databricks",
                    key=spec["task_key"],
                    command=_command_of(ep),
                    argv=tuple(f"--{k}={v}" for k, v in params.items()),
                    depends_on=tuple(d["task_key"] for d in spec.get("depends_on", [])),
                    source=path,
                    runner="entry_point",
                    target=ep.name,
                )
            )
    return tasks


def _main_file(uri: str) -> Path:
    main = JOBS / uri.rsplit("/", 1)[-1]
    assert main.is_file(), f"{uri}: no main file {main.name} under jobs/"
    return main


def _synapse_definitions() -> dict[str, tuple[Path, dict[str, Any]]]:
    found = {}
    for path in sorted((JOBS / "synapse").glob("*.json")):
        data = json.loads(_deploy(path.read_text()))
        if "jobProperties" in data:
            found[data["jobProperties"]["name"]] = (path, data)
    return found


def _synapse_pipeline() -> dict[str, Any]:
    return json.loads(_deploy((JOBS / "synapse" / "pipeline.json").read_text()))


def synapse_tasks() -> list[Task]:
    definitions = _synapse_definitions()
    depends: dict[str, tuple[str, ...]] = {}
    for activity in _synapse_pipeline()["properties"]["activities"]:
        ref = activity["typeProperties"]["sparkJob"]["referenceName"]
        depends[ref] = tuple(d["activity"] for d in activity["dependsOn"])
    names = {
        a["name"]: a["typeProperties"]["sparkJob"]["referenceName"]
        for a in _synapse_pipeline()["properties"]["activities"]
    }
    tasks = []
    for name, (path, data) in definitions.items():
        args = data["jobProperties"]["args"]
        tasks.append(
            Task(
                platform="synapse",
                key=name,
                command=args[0],
                argv=tuple(args[1:]),
                depends_on=tuple(names[a] for a in depends.get(name, ())),
                source=path,
                runner="main_file",
                target=str(_main_file(data["jobProperties"]["file"])),
            )
        )
    return tasks


def _fabric_sjds() -> list[tuple[Path, dict[str, Any]]]:
    found = []
    for path in sorted((JOBS / "fabric").glob("*.json")):
        data = json.loads(_deploy(path.read_text()))
        if "executableFile" in data:
            found.append((path, data))
    return found


def fabric_sjd_tasks() -> list[Task]:
    tasks = []
    for path, data in _fabric_sjds():
        args = shlex.split(data["commandLineArguments"])
        tasks.append(
            Task(
                platform="fabric-sjd",
                key=path.stem,
                command=args[0],
                argv=tuple(args[1:]),
                depends_on=(),
                source=path,
                runner="main_file",
                target=str(_main_file(data["executableFile"])),
            )
        )
    return tasks


def _fabric_pipeline() -> tuple[dict[str, Any], str]:
    raw = (JOBS / "fabric" / "pipeline.json").read_text()
    return json.loads(_deploy(raw)), raw


def _notebook() -> Path:
    notebooks = sorted((JOBS / "fabric").glob("*.ipynb"))
    assert len(notebooks) == 1, f"expected one thin notebook in jobs/fabric, got {notebooks}"
    return notebooks[0]


def _evaluate(value: dict[str, Any], defaults: dict[str, str]) -> str:
    """A notebook activity parameter: a literal or ``@pipeline().parameters`` expressions."""
    text = str(value["value"])
    if value.get("type") != "Expression":
        return text
    result = _PIPELINE_PARAM.sub(lambda m: defaults[m[1]], text)
    assert "@" not in result and "pipeline()" not in result, f"unresolved expression {text!r}"
    return result


def fabric_pipeline_tasks() -> list[Task]:
    pipeline, raw = _fabric_pipeline()
    props = pipeline["properties"]
    defaults = {k: str(v["defaultValue"]) for k, v in props.get("parameters", {}).items()}
    tasks = []
    for activity in props["activities"]:
        assert activity["type"] == "TridentNotebook", activity["name"]
        params = {
            k: _evaluate(v, defaults) for k, v in activity["typeProperties"]["parameters"].items()
        }
        notebook = _notebook()
        tasks.append(
            Task(
                platform="fabric-pipeline",
                key=activity["name"],
                command=params["command"],
                argv=tuple(_notebook_argv(notebook, params)),
                depends_on=tuple(d["activity"] for d in activity["dependsOn"]),
                source=JOBS / "fabric" / "pipeline.json",
                runner="notebook",
                target=str(notebook),
                params=params,
            )
        )
    assert '"notebookId": "${FABRIC_NOTEBOOK_ID}"' in raw
    return tasks


def all_tasks() -> list[Task]:
    return databricks_tasks() + synapse_tasks() + fabric_sjd_tasks() + fabric_pipeline_tasks()


# -- notebooks -----------------------------------------------------------------------


def _notebook_cells(path: Path) -> tuple[str, list[str]]:
    """(the parameters cell, the code cells after it)."""
    cells = [c for c in json.loads(path.read_text())["cells"] if c["cell_type"] == "code"]
    index = next(
        i for i, c in enumerate(cells) if "parameters" in c.get("metadata", {}).get("tags", [])
    )
    source = ["".join(c["source"]) for c in cells]
    return source[index], source[index + 1 :]


def _run_notebook(path: Path, params: dict[str, str]) -> None:
    """Run the notebook as Fabric does: parameters cell, injected values, the rest."""
    parameters, rest = _notebook_cells(path)
    namespace: dict[str, Any] = {"__name__": "__main__"}
    exec(compile(parameters, f"{path.name}:parameters", "exec"), namespace)
    unknown = set(params) - set(namespace)
    assert not unknown, f"the pipeline passes parameters the notebook lacks: {unknown}"
    namespace.update(params)
    for number, cell in enumerate(rest):
        exec(compile(cell, f"{path.name}:cell{number}", "exec"), namespace)


def _notebook_argv(path: Path, params: dict[str, str]) -> list[str]:
    """The arguments the notebook passes to ``cli.main`` for these parameters."""
    seen: list[list[str]] = []
    original = cli.main

    def capture(argv: list[str]) -> int:
        seen.append(list(argv))
        return 0

    cli.main = capture  # type: ignore[assignment]
    try:
        _run_notebook(path, params)
    finally:
        cli.main = original
    assert len(seen) == 1, seen
    assert seen[0][0] == params["command"]
    return seen[0][1:]


# -- parsing -------------------------------------------------------------------------


def _subcommands() -> set[str]:
    """The CLI's subcommands, from the parser itself."""
    parser = cli.build_parser()
    actions = [a for a in parser._actions if a.dest == "command"]
    assert len(actions) == 1 and actions[0].choices is not None
    return set(actions[0].choices)


def _parse(task: Task) -> Any:
    try:
        return cli.build_parser().parse_args([task.command, *task.argv])
    except SystemExit as exc:
        pytest.fail(f"{task.source.name}:{task.key}: the CLI refuses {task.argv} ({exc.code})")


def _config_args(args: Any) -> list[str]:
    return list(args.config or [])


def _required_env(path: Path) -> set[str]:
    """Environment variables a config layer needs (``${VAR}`` without a default)."""
    return set(_REQUIRED_ENV.findall(path.read_text()))


def _required_keys(path: Path) -> set[str]:
    """Dotted keys whose value needs an environment variable without a default."""

    def walk(node: Any, prefix: str) -> Iterator[str]:
        if isinstance(node, dict):
            for key, value in node.items():
                yield from walk(value, f"{prefix}.{key}" if prefix else str(key))
        elif isinstance(node, str) and _REQUIRED_ENV.search(node):
            yield prefix

    return set(walk(yaml.safe_load(path.read_text()), ""))


def _sets(argv: tuple[str, ...]) -> set[str]:
    keys = []
    for i, arg in enumerate(argv):
        if arg == "--set":
            keys.append(argv[i + 1].split("=", 1)[0])
        elif arg.startswith("--set="):
            keys.append(arg.removeprefix("--set=").split("=", 1)[0])
    return set(keys)


def test_every_definition_file_is_understood() -> None:
    known = {
        JOBS / "databricks" / "databricks.yml",
        JOBS / "fabric" / "pipeline.json",
        _notebook(),
        *(p for p, _ in _fabric_sjds()),
        JOBS / "synapse" / "pipeline.json",
        *(p for p, _ in _synapse_definitions().values()),
    }
    on_disk = {p for p in JOBS.rglob("*") if p.suffix in {".yml", ".yaml", ".json", ".ipynb"}}
    assert on_disk == known, f"definitions this test does not load: {sorted(on_disk - known)}"


def test_every_task_resolves_and_its_parameters_parse() -> None:
    tasks = all_tasks()
    assert {t.platform for t in tasks} == {"databricks", "synapse", "fabric-sjd", "fabric-pipeline"}
    commands = _subcommands()
    eps = {ep.name for ep in md.entry_points(group=TASK_GROUP)}
    for task in tasks:
        assert task.command in eps, f"{task.source.name}:{task.key}: no entry point {task.command}"
        assert task.command in commands, f"{task.key}: the CLI has no subcommand {task.command}"
        args = _parse(task)
        assert args.command == task.command
        assert _config_args(args), f"{task.source.name}:{task.key}: no --config"
        if task.command == "cohort":
            assert args.name and args.where and args.level in ("study", "series", "instance")
        if task.command == "writeback":
            assert args.cohort and args.deriver in ("sc", "seg")


def _by_dependencies(tasks: list[Task]) -> list[Task]:
    """The tasks in the order their ``depends_on`` allows (a failure if it is not a chain)."""
    left, order, done = list(tasks), [], set()
    while left:
        ready = [t for t in left if set(t.depends_on) <= done]
        assert len(ready) == 1, f"not one chain: {[t.key for t in ready]} ready after {order}"
        order.append(ready[0])
        done.add(ready[0].key)
        left.remove(ready[0])
    return order


def test_each_platform_runs_the_four_tasks_in_order() -> None:
    chains = {
        "databricks": databricks_tasks(),
        "synapse": synapse_tasks(),
        "fabric-pipeline": fabric_pipeline_tasks(),
    }
    for platform, tasks in chains.items():
        ordered = _by_dependencies(tasks)
        assert [t.command for t in ordered] == list(ORDER), platform
        for earlier, later in itertools.pairwise(ordered):
            assert later.depends_on == (earlier.key,), (
                f"{platform}: {later.key} after {earlier.key}"
            )
        # the cohort written is the cohort written back
        cohort = _parse(ordered[2])
        writeback = _parse(ordered[3])
        assert cohort.name == writeback.cohort, platform


def test_databricks_bundle_settings() -> None:
    bundle, path = _bundle()
    assert bundle["bundle"]["name"]
    (artifact,) = bundle["artifacts"].values()
    assert artifact["type"] == "whl"
    assert (path.parent / artifact["path"]).resolve() == REPO
    assert "build" in artifact["build"]
    assert (path.parent / "../../conf").resolve() == CONF
    assert "../../conf" in bundle["sync"]["paths"]
    for target, paused in (("dev", "PAUSED"), ("prod", "UNPAUSED")):
        (job,) = _resolve_vars(bundle["resources"]["jobs"], _bundle_vars(bundle, target)).values()
        assert job["schedule"]["pause_status"] == paused, target
    assert job["schedule"]["quartz_cron_expression"].count(" ") >= 5
    assert job["email_notifications"]["on_failure"]
    assert job["timeout_seconds"] > 0
    variables = _bundle_vars(bundle, "dev")
    assert variables["config_path"].endswith("/conf/databricks.yaml")
    (cluster,) = job["job_clusters"]
    assert cluster["new_cluster"]["spark_version"].startswith(("15.4.", "16.4."))
    for prod_version in (variables["spark_version"],):
        assert prod_version.startswith(("15.4.", "16.4."))
    env = cluster["new_cluster"]["spark_env_vars"]
    assert _required_env(CONF / "databricks.yaml") <= set(env), "cluster lacks config env vars"
    for name, value in env.items():
        if "SECRET" in name:
            assert value.startswith("{{secrets/"), f"{name} must be a secret reference"
    for task in job["tasks"]:
        assert task["job_cluster_key"] == cluster["job_cluster_key"]
        assert task["python_wheel_task"]["package_name"] == "dicom_lakehouse"
        assert any(
            (path.parent / lib["whl"]).parent.resolve() == REPO / "dist"
            for lib in task["libraries"]
        ), task["task_key"]
        for key in ("max_retries", "min_retry_interval_millis", "timeout_seconds"):
            assert isinstance(task[key], int) and task[key] > 0, (task["task_key"], key)


def test_synapse_definitions_ship_their_configs_and_env() -> None:
    needed = _required_env(CONF / "base.yaml") | _required_env(CONF / "synapse.yaml")
    for name, (path, data) in _synapse_definitions().items():
        assert data["requiredSparkVersion"] == "3.5", name
        assert data["language"] == "python"
        assert data["targetBigDataPool"]["type"] == "BigDataPoolReference"
        assert data["targetBigDataPool"]["referenceName"] == DEPLOY["SYNAPSE_SPARK_POOL"]
        props = data["jobProperties"]
        assert props["numExecutors"] >= 1
        shipped = {uri.rsplit("/", 1)[-1] for uri in props["files"]}
        args = _parse(next(t for t in synapse_tasks() if t.key == name))
        assert set(_config_args(args)) <= shipped, f"{path.name}: --config files not in files"
        assert {"base.yaml", "synapse.yaml"} <= shipped
        env = {
            k.removeprefix("spark.yarn.appMasterEnv.")
            for k in props["conf"]
            if k.startswith("spark.yarn.appMasterEnv.")
        }
        assert needed <= env, f"{path.name}: driver env lacks {needed - env}"
    refs = {
        a["typeProperties"]["sparkJob"]["referenceName"]
        for a in _synapse_pipeline()["properties"]["activities"]
    }
    assert refs == set(_synapse_definitions()), "pipeline and job definitions disagree"


def test_fabric_definitions_reference_the_lakehouse_and_cover_the_config() -> None:
    needed = _required_keys(CONF / "base.yaml") | _required_keys(CONF / "fabric.yaml")
    sjds = fabric_sjd_tasks()
    assert sjds
    for task, (path, data) in zip(sjds, _fabric_sjds(), strict=True):
        assert data["defaultLakehouseArtifactId"] == DEPLOY["FABRIC_LAKEHOUSE_ID"]
        assert data["language"] == "Python"
        assert f"/{DEPLOY['FABRIC_LAKEHOUSE_ID']}/Files/" in data["executableFile"]
        # one string: no argument may depend on how Fabric treats quotes
        assert data["commandLineArguments"].split() == list((task.command, *task.argv))
        assert needed <= _sets(task.argv), f"{path.name}: --set lacks {needed - _sets(task.argv)}"
        args = _parse(task)
        assert [Path(c).name for c in _config_args(args)] == ["base.yaml", "fabric.yaml"]
    for task in fabric_pipeline_tasks():
        assert needed <= _sets(task.argv), f"{task.key}: --set lacks {needed - _sets(task.argv)}"
        args = _parse(task)
        assert [Path(c).name for c in _config_args(args)] == ["base.yaml", "fabric.yaml"]
        assert all(c.startswith("/lakehouse/default/Files/") for c in _config_args(args))


def test_deploy_placeholders_are_documented() -> None:
    readme = (JOBS / "README.md").read_text()
    used: set[str] = set()
    for path in [*JOBS.rglob("*.json")]:
        used |= set(_PLACEHOLDER.findall(path.read_text()))
    missing = sorted(name for name in used if name not in readme)
    assert not missing, f"jobs/README.md does not explain {missing}"


# -- running the tasks ---------------------------------------------------------------


@pytest.fixture(scope="module")
def sample(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from dicom_lakehouse.testing import build_sample_lake

    root = tmp_path_factory.mktemp("jobs")
    return build_sample_lake(root / "lake"), root


@contextlib.contextmanager
def _isolated_run() -> Iterator[None]:
    """Keep sys.argv and the package logger's handlers as they were (main adds one)."""
    package = logging.getLogger("dicom_lakehouse")
    handlers, level, argv = list(package.handlers), package.level, sys.argv
    try:
        yield
    finally:
        package.handlers[:] = handlers
        package.setLevel(level)
        sys.argv = argv


def _local_config(path: Path, lake_root: Path, tables: Path, extra: dict[str, Any]) -> Path:
    data = {
        "lake": {"root": str(lake_root), "workspace": "ws1", "service": "svc1"},
        "tables": {"location": str(tables)},
        "spark": {"master": "local[2]"},
        "silver": {"zorder": False},
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def _substitute(argv: tuple[str, ...], config: Path) -> list[str]:
    """Point ``--config`` layers at local files: base.yaml -> conf/base.yaml, others -> config."""

    def local(value: str) -> str:
        return str(CONF / "base.yaml") if Path(value).name == "base.yaml" else str(config)

    out: list[str] = []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--config":
            out += [arg, local(args.pop(0))]
        elif arg.startswith("--config="):
            out.append("--config=" + local(arg.removeprefix("--config=")))
        else:
            out.append(arg)
    return out


def _run(task: Task, config: Path) -> int:
    """Run one task the way its platform does; return the exit code."""
    with _isolated_run():
        if task.runner == "notebook":
            params = dict(task.params)
            params["config"] = ",".join(
                str(CONF / "base.yaml") if Path(p).name == "base.yaml" else str(config)
                for p in params["config"].split(",")
            )
            try:
                _run_notebook(Path(task.target), params)
            except RuntimeError as exc:  # the notebook raises on a non-zero exit code
                return int(str(exc).rsplit(" ", 1)[-1])
            return 0
        argv = _substitute(task.argv, config)
        run: Callable[[], object]
        if task.runner == "entry_point":
            sys.argv = ["dicom_lakehouse", *argv]
            run = md.entry_points(group=TASK_GROUP)[task.target].load()
        else:
            sys.argv = [task.target, task.command, *argv]  # the main file takes the task
            run = lambda: runpy.run_path(task.target, run_name="__main__")  # noqa: E731
        try:
            run()
        except SystemExit as exc:
            return int(exc.code or 0)
        return 0


def _ordered(tasks: list[Task]) -> list[Task]:
    return sorted(tasks, key=lambda t: ORDER.index(t.command))


def _last_json(out: str) -> dict[str, Any]:
    return json.loads(out.strip().splitlines()[-1])


_RUN_GROUPS = {
    "databricks": databricks_tasks,
    "synapse": synapse_tasks,
    "fabric-sjd": fabric_sjd_tasks,
    "fabric-pipeline": fabric_pipeline_tasks,
}


@dataclass
class Ran:
    """The tasks of one platform run in order: (task, exit code, JSON summary or None)."""

    tables_dir: Path
    fresh: bool  # the run started from no tables
    results: list[tuple[Task, int, dict[str, Any] | None]]


#: The platform whose tasks build the tables from nothing; the others then run on them,
#: as scheduled re-runs do (ingest finds nothing new, refine nothing to merge, cohort a
#: new version). One full build keeps the module's run time down.
FIRST = "databricks"


@pytest.fixture(scope="module")
def chains(spark: Any, sample: Any) -> Callable[[str], Ran]:
    """Run a platform's ingest, refine and cohort tasks once, on demand."""
    lake, root = sample
    tables_dir = root / "tables"
    config = _local_config(root / "local.yaml", lake.root, tables_dir, {})
    done: dict[str, Ran] = {}

    def chain(platform: str) -> Ran:
        if platform != FIRST and FIRST not in done:
            chain(FIRST)
        if platform not in done:
            fresh = not tables_dir.exists()
            results: list[tuple[Task, int, dict[str, Any] | None]] = []
            for task in _ordered(_RUN_GROUPS[platform]()):
                if task.command == "writeback":
                    continue  # needs a DICOMweb server: see the write-back test
                out = io.StringIO()
                with contextlib.redirect_stdout(out):
                    code = _run(task, config)
                text = out.getvalue()
                wants_json = "--json" in task.argv
                results.append((task, code, _last_json(text) if code == 0 and wants_json else None))
                if code:
                    break
            done[platform] = Ran(tables_dir, fresh, results)
        return done[platform]

    return chain


@pytest.mark.spark
@pytest.mark.parametrize("platform", list(_RUN_GROUPS))
def test_tasks_run_locally_with_their_own_parameters(
    platform: str, spark: Any, sample: Any, chains: Callable[[str], Ran]
) -> None:
    from dicom_lakehouse.io.delta import DeltaTables

    lake, _ = sample
    counts = lake.counts()
    ran = chains(platform)
    assert ran.fresh == (platform == FIRST)
    tables = DeltaTables(spark, TablesConfig(location=str(ran.tables_dir)))
    expected = [t.command for t in _ordered(_RUN_GROUPS[platform]()) if t.command != "writeback"]
    for task, code, _ in ran.results:
        assert code == 0, f"{platform}:{task.key} exited {code}"
    assert [task.command for task, _, _ in ran.results] == expected
    assert expected[:2] == ["ingest", "refine"]
    for task, _, summary in ran.results:
        if task.command == "ingest":
            for name in ("bronze_instances", "bronze_quarantine", "lake_files", "ingest_runs"):
                assert tables.exists(name), name
            assert tables.read("bronze_instances").count() == counts["files_ingested"]
            if summary is not None:
                assert summary["files_listed"] == counts["files_listed"]
                new = counts["files_ingested"] if ran.fresh else 0
                assert summary["files_ingested"] == new, summary
        elif task.command == "refine":
            for name in ("silver_instances", "silver_series", "silver_studies"):
                assert tables.exists(name), name
            instances = tables.read("silver_instances").count()
            assert instances > 0
            if summary is not None:
                assert summary["instances"] == instances
                assert summary["full"] == ran.fresh
        elif task.command == "cohort":
            args = _parse(task)
            members = tables.read("cohorts").where(f"cohort_name = '{args.name}'")
            latest = max(r["cohort_version"] for r in members.select("cohort_version").collect())
            current = members.where(f"cohort_version = {latest}").count()
            assert current > 0
            if ran.fresh:
                assert latest == 1
            if summary is not None:
                assert summary["name"] == args.name and summary["level"] == args.level
                assert (summary["version"], summary["instances"]) == (latest, current)


def _has_writeback() -> bool:
    return "writeback" in _subcommands()


@pytest.mark.spark
@pytest.mark.parametrize("platform", ["databricks", "synapse"])
def test_writeback_task_runs_against_orthanc(
    platform: str, spark: Any, sample: Any, orthanc: Any, chains: Callable[[str], Ran]
) -> None:
    """A definition's write-back task, after its cohort, stores into Orthanc."""
    if not _has_writeback():
        pytest.skip("dicom_lakehouse.cli has no writeback subcommand yet")
    lake, root = sample
    ran = chains(platform)
    assert all(code == 0 for _, code, _ in ran.results), "the tasks before write-back failed"
    web = orthanc.settings()
    dicomweb = {
        "url": web.url,
        "auth": "basic",
        "username": web.username,
        "password_env": web.password_env,
    }
    config = _local_config(
        root / f"wb-{platform}.yaml", lake.root, ran.tables_dir, {"dicomweb": dicomweb}
    )
    (task,) = [t for t in _RUN_GROUPS[platform]() if t.command == "writeback"]
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = _run(task, config)
    assert code == 0, f"{platform}:{task.key} exited {code}"
    from dicom_lakehouse.io.delta import DeltaTables

    ledger = DeltaTables(spark, TablesConfig(location=str(ran.tables_dir))).read("writeback_ledger")
    statuses = {r["status"] for r in ledger.select("status").collect()}
    assert ledger.count() > 0 and statuses <= {"stored", "already_stored"}, statuses
    if "--json" in task.argv:
        summary = _last_json(out.getvalue())
        assert summary["cohort"] == _parse(task).cohort
        assert summary["failed"] == 0 and summary["retryable"] == 0, summary
        assert summary["series"] > 0
        # the first write-back of the module stores; a later one finds its series done
        stored = summary["stored"] + summary["already_stored"]
        assert stored == summary["derived"] > 0 or summary["series_skipped"] == summary["series"]


def test_the_main_file_refuses_an_unknown_task(capsys: pytest.CaptureFixture[str]) -> None:
    main = JOBS / "dicom_lakehouse_job.py"
    with _isolated_run():
        sys.argv = [str(main), "inget", "--config", "x.yaml"]
        with pytest.raises(SystemExit) as caught:
            runpy.run_path(str(main), run_name="__main__")
    assert caught.value.code == 2
    usage = capsys.readouterr().err
    assert all(name in usage for name in ORDER)


def test_the_legacy_ingest_main_file_still_runs_ingest(capsys: pytest.CaptureFixture[str]) -> None:
    main = JOBS / "ingest_job.py"
    with _isolated_run():
        sys.argv = [str(main), "--help"]
        with pytest.raises(SystemExit) as caught:
            runpy.run_path(str(main), run_name="__main__")
    assert caught.value.code == 0
    assert "usage: dicom-lakehouse ingest" in capsys.readouterr().out
