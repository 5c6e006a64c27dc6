"""The `workbench` command line: one module per verb group, wired in `main.py`."""
