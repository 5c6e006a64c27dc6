"""The Panel web app: a shell with navigation (shell.py) and one module per page (pages/).

Served by `workbench app` / `make app` through `panel serve apps/workbench.py` on
127.0.0.1. Pages bind to GUI-free view-models in `workbench.viewmodels`.
"""
