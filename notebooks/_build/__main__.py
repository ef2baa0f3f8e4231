"""Writes the teaching notebooks (notebooks/*.ipynb) from the cells in this folder.

    python notebooks/_build            # rewrite every notebook, outputs cleared
    python notebooks/_build 03         # only those whose name contains "03"

One module per notebook holds its cells (quickstart.py for 01-quickstart.ipynb, and so on);
common.py has the cell helpers and writes the .ipynb files. These modules are the notebooks'
source: edit the cells there and rerun this (an edit made in Jupyter should be carried back,
or the next rebuild undoes it). It keeps the text reviewable as plain Python and gives the
cells stable ids, so a rebuild changes only what changed. tests/test_notebooks.py runs every
notebook in a real kernel and checks that none is committed with outputs.

Run as `python notebooks/_build`: the folder itself goes first on sys.path, so the modules
import one another by their plain names (`from common import md`).
"""

from __future__ import annotations

import sys

import calculus
import failures
import parameter_sweep
import quickstart
import scale_out
from common import write

NOTEBOOKS = {
    "01-quickstart.ipynb": quickstart.CELLS,
    "02-calculus.ipynb": calculus.CELLS,
    "03-parameter-sweep.ipynb": parameter_sweep.CELLS,
    "04-failures.ipynb": failures.CELLS,
    "05-scale-out.ipynb": scale_out.CELLS,
}

if __name__ == "__main__":
    write(NOTEBOOKS, sys.argv[1:])
