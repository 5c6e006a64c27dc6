"""What every notebook builder here shares: cells -> notebook, execute it, write it.

Each `NN_name.py` beside this file holds its notebook's cells as (kind, source) pairs, kind
"md" or "code", and calls `main` below with them.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook


def build(cells: list[tuple[str, str]]) -> nbformat.NotebookNode:
    """A Python 3 notebook of the (kind, source) cells, in order."""
    nb = new_notebook()
    nb.metadata["kernelspec"] = {"display_name": "Python 3", "language": "python", "name": "python3"}
    for kind, source in cells:
        nb.cells.append(new_markdown_cell(source) if kind == "md" else new_code_cell(source))
    return nb


def main(cells: list[tuple[str, str]], notebook: Path, description: str, argv: list[str] | None = None, *,
         timeout: int = 600, unstored_marker: str | None = None) -> int:
    """Build the notebook, execute it in its folder (unless --no-execute) and write it.

    unstored_marker: code cells whose source contains it keep no outputs in the written file
    (large embedded plots).
    """
    parser = argparse.ArgumentParser(description=description.split("\n\n")[0])
    parser.add_argument("--no-execute", action="store_true", help="write the notebook without running it")
    args = parser.parse_args(argv)
    nb = build(cells)
    if not args.no_execute:
        from nbclient import NotebookClient

        NotebookClient(nb, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(notebook.parent)}}).execute()
        if unstored_marker:
            for cell in nb.cells:
                if cell.cell_type == "code" and unstored_marker in cell.source:
                    cell.outputs = []
    nbformat.write(nb, notebook)
    print(f"wrote {notebook}")
    return 0
