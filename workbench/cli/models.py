"""`workbench models` and `workbench sites MODEL`."""

from __future__ import annotations

import argparse

from workbench.cli.common import add_json_flag, emit


def register(subparsers) -> None:
    models = subparsers.add_parser("models", help="list the named models and whether they load offline",
                                   description="List the named models and whether they are available offline.")
    models.add_argument("--prepare", action="store_true",
                        help="build the de-quantised SmolLM2 cache now (once; later loads take < 1 s)")
    add_json_flag(models)
    models.set_defaults(func=run_models)

    sites = subparsers.add_parser("sites", help="list the sites a model offers, with their widths",
                                  description="List the canonical site names of a model and their widths.")
    sites.add_argument("model", help="a model name (see `workbench models`), HF repo id or local folder")
    sites.add_argument("--device", default="cpu")
    add_json_flag(sites)
    sites.set_defaults(func=run_sites)


def run_models(args: argparse.Namespace) -> int:
    from workbench.engine import embedded
    from workbench.engine.registry import list_models

    prepared = None
    if args.prepare:
        prepared = str(embedded.prepare_smollm2())
    rows = list_models()
    lines = [f"{'name':<14} {'offline':<8} description"]
    lines += [f"{r['name']:<14} {'yes' if r['available_offline'] else 'no':<8} {r['description']}" for r in rows]
    lines.append("Any Hugging Face repo id (org/name) or local model folder also loads when reachable.")
    if prepared:
        lines.append(f"SmolLM2 cache ready: {prepared}")
    emit(args, {"models": rows, "smollm2_cache": prepared}, "\n".join(lines))
    return 0


def run_sites(args: argparse.Namespace) -> int:
    from workbench.engine.registry import load_model

    model = load_model(args.model, device=args.device)
    rows = []
    for site in model.sites():
        width = "heads x keys" if site.endswith("attn.hook_pattern") else model.site_width(site)
        rows.append({"site": site, "width": width})
    text = "\n".join(f"{r['site']:<32} {r['width']}" for r in rows)
    emit(args, {"model": model.name, "arch": model.arch, "n_layers": model.n_layers, "sites": rows}, text)
    return 0
