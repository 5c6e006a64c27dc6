"""GUI-free page state: one `param.Parameterized` class per page or widget.

The Panel pages (workbench/app) and the ipywidgets shells (workbench/widgets) both bind
to these classes. Nothing in this package imports panel or ipywidgets (a test checks).
"""
