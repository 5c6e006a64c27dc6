"""Shared pieces of the CLI verbs: the --json convention and error reporting.

Convention (DESIGN.md): with `--json` the last line of output is one JSON object
that scripts and checks parse; human-readable text goes before it.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_json_flag(parser: argparse.ArgumentParser) -> None:
    """Give a verb the `--json` flag."""
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line of output"
    )


def emit(args: argparse.Namespace, result: dict[str, Any], text: str | None = None) -> None:
    """Print `text` for people, then `result` as the JSON last line if --json was given.

    Without --json and without text, the result is printed as aligned key: value lines.
    """
    if text:
        print(text)
    elif not getattr(args, "json", False):
        width = max((len(k) for k in result), default=0)
        for key, value in result.items():
            print(f"{key:<{width}}  {value}")
    if getattr(args, "json", False):
        sys.stdout.flush()
        print(json.dumps(result, default=_jsonable))


def _jsonable(value: Any) -> Any:
    """Make tensors, numpy scalars and paths JSON-serialisable."""
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
