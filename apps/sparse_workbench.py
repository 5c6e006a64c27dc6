"""Entry point for `panel serve apps/sparse_workbench.py` (use `workbench app` or `make app`)."""

from workbench.app.shell import build_app

build_app().servable(title="Sparse Workbench")
