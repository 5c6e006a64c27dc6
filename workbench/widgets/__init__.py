"""ipywidgets shells over the GUI-free view-models (workbench.viewmodels), for notebooks."""
