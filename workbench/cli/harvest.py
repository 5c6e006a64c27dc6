"""`workbench harvest SAE_DIR --model M --corpus C --tokens N --out STORE [--json]`: build a feature store.

Runs the SAE over N tokens of the corpus (batched, with a progress bar) and writes the
SQLite feature store (workbench/features/schema.py) atomically. Interrupted (Ctrl-C, or
`--stop-after` batches), it keeps its state in STORE.harvest/; the same command run again
continues from there. With --json the last line is one JSON object: out, complete,
n_tokens, d_sae, dead_frac, dense_frac, size_bytes, seconds, batches_done, n_batches, resumed_from.
"""

from __future__ import annotations

import argparse
import shlex
import sys

from workbench.cli.common import add_json_flag, emit


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "harvest", help="record what each SAE latent responds to into a SQLite feature store",
        description="Run an SAE over corpus activations and record per latent: density, activation histogram, "
                    "top and quantile-sampled contexts, logit effects, co-firing and decoder neighbours, UMAP "
                    "coordinates and the latents that fire most on each token. Resumable.")
    parser.add_argument("sae_dir", metavar="SAE_DIR", help="the SAE folder (SAELens layout, sparsify, dictionary_learning)")
    parser.add_argument("--model", help="model (default: the one recorded in the SAE)")
    parser.add_argument("--corpus", default="default", help="corpus name or file (default: default)")
    parser.add_argument("--tokens", type=int, default=200_000, help="tokens to harvest (default 200000)")
    parser.add_argument("--out", required=True, help="the store file to write (e.g. data/features/M/NAME.sqlite)")
    parser.add_argument("--name", help="the SAE's name in feature ids (default: the SAE folder's name)")
    parser.add_argument("--split", default="test", choices=["train", "test", "all"], help="corpus split (default test)")
    parser.add_argument("--context-size", type=int, default=128, help="tokens per context (default 128)")
    parser.add_argument("--batch-size", type=int, default=16, help="contexts per forward (default 16)")
    parser.add_argument("--top", type=int, default=12, help="top contexts kept per latent (default 12)")
    parser.add_argument("--quantile-samples", type=int, default=12,
                        help="contexts sampled across 4 activation quantile intervals (default 12)")
    parser.add_argument("--no-umap", action="store_true", help="skip the UMAP map of decoder directions")
    parser.add_argument("--site", help="override the site recorded in the SAE")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="model dtype (float32, bfloat16; bfloat16 is faster on CPU)")
    parser.add_argument("--overwrite", action="store_true", help="rebuild STORE if it exists")
    parser.add_argument("--stop-after", type=int, default=None, metavar="BATCHES",
                        help="stop (resumably) after this many batches in this run")
    add_json_flag(parser)
    parser.set_defaults(func=run_harvest)


def run_harvest(args: argparse.Namespace) -> int:
    from pathlib import Path

    from workbench.engine.registry import load_model
    from workbench.errors import WorkbenchError
    from workbench.features.harvest import HarvestConfig, harvest
    from workbench.sae.loading import load_sae

    if args.tokens < 1:
        raise WorkbenchError(f"--tokens must be >= 1, got {args.tokens}")
    sae_dir = Path(args.sae_dir)
    sae = load_sae(sae_dir, site=args.site)
    model_name = args.model or sae.cfg.model_name
    if not model_name:
        raise WorkbenchError("the SAE does not record its model; pass --model")
    config = HarvestConfig(corpus=args.corpus, split=args.split, n_tokens=args.tokens, context_size=args.context_size,
                           batch_size=args.batch_size, n_top=args.top, n_quantile=args.quantile_samples,
                           reservoir_size=max(40, args.quantile_samples), umap=not args.no_umap)
    model = load_model(model_name, device=args.device, dtype=args.dtype)
    sae = load_sae(sae_dir, model, site=args.site)
    name = args.name or sae_dir.resolve().name
    command = "workbench " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["harvest"] else ""
    summary = harvest(model, sae, Path(args.out), config, sae_name=name, progress=True, overwrite=args.overwrite,
                      stop_after_batches=args.stop_after, command=command)
    result = {"out": str(summary.out), "complete": summary.complete, "n_tokens": summary.n_tokens,
              "d_sae": sae.cfg.d_sae, "batches_done": summary.batches_done, "n_batches": summary.n_batches,
              "resumed_from": summary.resumed_from,
              "seconds": round(summary.seconds, 1), **{k: v for k, v in summary.stats.items() if k != "path"}}
    if summary.complete:
        stats = summary.stats
        text = (f"{summary.out}: {sae.cfg.d_sae} latents of {name} at {sae.cfg.site} of {model.name}, "
                f"{summary.n_tokens:,} tokens of {args.corpus} ({args.split}) in {summary.seconds:.0f} s\n"
                f"  dead latents {stats['dead_frac']:.2%}, dense (>10% of tokens) {stats['dense_frac']:.2%}, "
                f"store {stats['size_bytes'] / 1e6:.1f} MB")
    else:
        text = (f"stopped after {summary.batches_done}/{summary.n_batches} batches; run the same command again to "
                "continue")
    emit(args, result, text)
    return 0
