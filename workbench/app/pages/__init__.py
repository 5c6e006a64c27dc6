"""The page registry: slug, title and the module whose `build(context)` makes the page.

Adding a page is one line here; the shell builds the navigation and the `?page=` URL
from this list.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PageSpec:
    slug: str
    title: str
    module: str


PAGES: list[PageSpec] = [
    PageSpec("activations", "Activations", "workbench.app.pages.activations"),
    PageSpec("features", "Features", "workbench.app.pages.features"),
    PageSpec("steering", "Steering", "workbench.app.pages.steering"),
]
