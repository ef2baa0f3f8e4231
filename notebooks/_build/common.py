"""The plumbing shared by the notebook modules: cell helpers, and building and writing a .ipynb."""

from __future__ import annotations

import pathlib

import nbformat

NOTEBOOK_DIR = pathlib.Path(__file__).resolve().parent.parent  # notebooks/


def md(text: str) -> tuple[str, str]:
    return ("markdown", text.strip("\n"))


def code(text: str) -> tuple[str, str]:
    return ("code", text.strip("\n"))


def build(cells: list[tuple[str, str]], prefix: str) -> nbformat.NotebookNode:
    nb = nbformat.v4.new_notebook()
    nb.metadata = {
        "kernelspec": {"name": "python3", "display_name": "Python 3 (ipykernel)", "language": "python"},
        "language_info": {"name": "python"},
    }
    for index, (kind, text) in enumerate(cells):
        make = nbformat.v4.new_markdown_cell if kind == "markdown" else nbformat.v4.new_code_cell
        nb.cells.append(make(text, id=f"{prefix}-{index:02d}"))
    nbformat.validate(nb)
    return nb


def write(notebooks: dict[str, list[tuple[str, str]]], argv: list[str]) -> None:
    """Write notebooks/<name> for each name that contains one of argv (every one if argv is empty)."""
    for name, cells in notebooks.items():
        if argv and not any(a in name for a in argv):
            continue
        nbformat.write(build(cells, name[:2]), NOTEBOOK_DIR / name)
        print("wrote", NOTEBOOK_DIR / name)
