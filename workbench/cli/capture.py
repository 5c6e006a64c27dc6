"""`workbench capture`: capture activations of a corpus into an activation store."""

from __future__ import annotations

import argparse
import time

from workbench.cli.common import add_json_flag, emit


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "capture", help="capture activations of a corpus into an activation store (resumable)",
        description="Capture one or more sites over a corpus into a sharded activation store. "
                    "Running the same command again resumes an interrupted capture.")
    parser.add_argument("--model", required=True, help="model name, HF repo id or local folder")
    parser.add_argument("--sites", required=True, nargs="+", help="site names (see `workbench sites MODEL`)")
    parser.add_argument("--corpus", required=True, help="corpus name (pydocs, wordnet, jargon, default) or a "
                        ".txt/.jsonl file")
    parser.add_argument("--max-tokens", required=True, type=int, help="tokens (rows) to store")
    parser.add_argument("--out", required=True, help="store folder")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing store")
    parser.add_argument("--context-size", type=int, default=128, help="tokens per packed context (default 128)")
    parser.add_argument("--batch-size", type=int, default=8, help="contexts per forward (default 8)")
    parser.add_argument("--split", default="train", choices=["train", "test", "all"], help="corpus split")
    parser.add_argument("--keep-bos", action="store_true", help="keep position 0 of each context "
                        "(dropped by default: it is the attention sink, with outsized norms)")
    parser.add_argument("--dtype", default=None, help="model and storage dtype (float32, bfloat16, float16)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    add_json_flag(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from workbench.engine.registry import load_model
    from workbench.engine.store import capture_to_store
    from workbench.errors import WorkbenchError

    if args.max_tokens < 1:
        raise WorkbenchError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    model = load_model(args.model, device=args.device, dtype=args.dtype)
    started = time.perf_counter()
    store = capture_to_store(model, args.corpus, args.sites, args.out, max_tokens=args.max_tokens,
                             context_size=args.context_size, batch_size=args.batch_size,
                             drop_bos=not args.keep_bos, split=args.split, overwrite=args.overwrite,
                             progress=True)
    seconds = time.perf_counter() - started
    result = {"out": str(store.folder), "model": store.model_name, "sites": store.sites,
              "n_tokens": store.n_tokens, "shards": len(store.manifest["shards"]),
              "seconds": round(seconds, 2), "tokens_per_s": round(store.n_tokens / max(seconds, 1e-9), 1)}
    emit(args, result, f"stored {store.n_tokens} tokens x {len(store.sites)} sites in {store.folder} "
                       f"({result['shards']} shards, {seconds:.1f} s)")
    return 0
