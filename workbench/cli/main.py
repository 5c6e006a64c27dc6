"""Entry point of the `workbench` command: builds the parser from the verb modules.

Each verb module exposes `register(subparsers)`, which adds its sub-parser and sets
`func` (called with the parsed args; returns an exit status or None). Adding a verb
is one line in VERB_MODULES. Imports of heavy libraries happen inside the verbs, so
`workbench --help` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# Verb modules, in the order `workbench --help` lists them.
VERB_MODULES = [
    "workbench.cli.models",   # models, sites
    "workbench.cli.capture",  # capture
    "workbench.cli.train",    # train
    "workbench.cli.eval",     # eval
    "workbench.cli.harvest",  # harvest
    "workbench.cli.steer",    # steer
    "workbench.cli.app",      # app
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="workbench",
        description="Sparse Workbench: capture activations, train and read sparse dictionaries, "
        "steer, and study sparse attention and retrieval, offline.",
    )
    subparsers = parser.add_subparsers(dest="verb", metavar="VERB")
    subparsers.required = True
    for name in VERB_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one verb; bad input prints a one-line error and exits with status 2."""
    from workbench.errors import WorkbenchError

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = args.func(args)
    except WorkbenchError as error:
        print(f"workbench {args.verb}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"workbench {args.verb}: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
