"""`workbench app`: serve the Panel app on 127.0.0.1 (DESIGN.md: never a public address by default)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys

from workbench.cli.common import add_json_flag


def register(subparsers) -> None:
    parser = subparsers.add_parser("app", help="serve the web app (Panel) on 127.0.0.1",
                                   description="Serve the Sparse Workbench web app.")
    parser.add_argument("--port", type=int, default=5006, help="port (default 5006)")
    parser.add_argument("--address", default="127.0.0.1",
                        help="address to bind (default 127.0.0.1; anything else exposes the app to the network)")
    parser.add_argument("--model", default=None, help="model the app opens with (default smollm2-135m)")
    parser.add_argument("--show", action="store_true", help="open a browser tab")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def app_command(port: int, address: str = "127.0.0.1", show: bool = False) -> list[str]:
    """The `panel serve` command line for the app."""
    from workbench.paths import REPO_ROOT

    origins = [f"{address}:{port}", f"localhost:{port}", f"127.0.0.1:{port}"]
    command = [sys.executable, "-m", "panel", "serve", str(REPO_ROOT / "apps" / "sparse_workbench.py"),
               "--address", address, "--port", str(port), "--num-threads", "4", "--index", "sparse_workbench"]
    for origin in dict.fromkeys(origins):
        command += ["--allow-websocket-origin", origin]
    if show:
        command.append("--show")
    return command


def run(args: argparse.Namespace) -> int:
    env = dict(os.environ)
    if args.model:
        env["WORKBENCH_APP_MODEL"] = args.model
    command = app_command(args.port, args.address, args.show)
    print(f"Sparse Workbench on http://{args.address}:{args.port}/  (Ctrl-C stops it)", flush=True)
    return subprocess.call(command, env=env)
