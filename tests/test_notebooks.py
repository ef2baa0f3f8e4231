"""The teaching notebooks (notebooks/*.ipynb) run top to bottom in a real Jupyter kernel.

Headless, with nbclient, as a fresh kernel would: each notebook starts what it needs (job
servers, workers) on free loopback ports and stops it at the end. A cell that raises fails
the test with that cell's traceback.
"""

from __future__ import annotations

import pathlib
import time

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent / "notebooks"
NOTEBOOKS = sorted(NOTEBOOK_DIR.glob("*.ipynb"))
CELL_TIMEOUT = 120  # seconds for any one cell; whole notebooks take well under a minute
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


def test_the_notebooks_are_there():
    names = [p.name for p in NOTEBOOKS]
    for expected in ("01-quickstart.ipynb", "02-calculus.ipynb", "03-parameter-sweep.ipynb",
                     "04-failures.ipynb", "05-scale-out.ipynb"):
        assert expected in names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_without_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    dirty = [i for i, c in enumerate(nb.cells) if c.cell_type == "code" and (c.outputs or c.execution_count)]
    assert not dirty, f"{path.name}: cells {dirty} carry outputs; `python notebooks/_build` writes them without"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path):
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=CELL_TIMEOUT, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK_DIR)}})
    started = time.monotonic()
    client.execute()  # raises CellExecutionError, with the cell's traceback, if a cell raises
    elapsed = time.monotonic() - started
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.execution_count for c in code_cells), "some code cells did not run"
    errors = [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    print(f"{path.name}: {len(code_cells)} cells in {elapsed:.1f} s")
    shown = [o.get("data", {}) for c in code_cells for o in c.outputs]
    svgs = [d["image/svg+xml"] for d in shown if "image/svg+xml" in d]
    if path.name.startswith("01-"):
        # The live progress panel is an ipywidgets view in a kernel, not a text line.
        assert any(WIDGET_VIEW in d for d in shown)
    if path.name.startswith("02-"):
        # Taught with pictures: four packet traces drawn as sequence diagrams, the live picture
        # of the job server shown in four cells, and still pictures of it.
        assert sum('aria-label="Gearman sequence diagram' in s for s in svgs) == 4, len(svgs)
        assert sum(WIDGET_VIEW in d for d in shown) == 4
        assert sum('aria-label="Gearman job server' in s for s in svgs) == 3
    if path.name.startswith("03-"):
        # It ends with the task stream of its sweep: a picture and a matplotlib figure.
        assert sum('aria-label="task stream"' in s for s in svgs) == 1
        assert "image/png" in shown[-1] and "task stream" in shown[-2].get("text/plain", "")
