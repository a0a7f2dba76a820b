"""The notebooks run end to end against the embedded sample lake (nbclient, a real kernel)."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

pytestmark = pytest.mark.spark

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"


def _run(name: str, parameters: dict[str, object], workdir: Path) -> nbformat.NotebookNode:
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    # papermill-style injection: a cell after the parameters cell overrides them
    injected = "\n".join(f"{key} = {value!r}" for key, value in parameters.items())
    nb.cells.insert(nb.cells.index(cell) + 1, nbformat.v4.new_code_cell(injected))
    NotebookClient(
        nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(workdir)}}
    ).execute()
    return nb


def test_notebooks_execute_in_order_on_the_sample_lake(tmp_path: Path) -> None:
    params = {"demo_dir": str(tmp_path / "demo")}
    explore = _run("01_explore_lake.ipynb", params, tmp_path)
    outputs = [o for c in explore.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert any(
        o.get("output_type") == "display_data" and "image/png" in o.get("data", {}) for o in outputs
    ), "the exploration notebook draws a plot"
    cohort = _run("02_build_cohort.ipynb", params, tmp_path)
    assert "ct_women_50_70_thin" in str(cohort.cells[-3].outputs)
    model = _run("03_cohort_to_model.ipynb", params, tmp_path)
    assert any(c.get("outputs") for c in model.cells if c.cell_type == "code")
    assert (tmp_path / "demo" / "tables" / "cohorts" / "_delta_log").exists()
