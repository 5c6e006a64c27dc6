"""`workbench train`: train sparse dictionaries from an activation store or live from a model.

    workbench train --store STORE --arch topk --d-sae 4096 --k 32 --tokens 2000000 --out runs/sae
    workbench train --model smollm2-135m --site blocks.15.hook_resid_post --corpus default \\
                    --arch topk --d-sae 8192 --k 32 --tokens 5000000 --out runs/l15 [--resume]

Several values of --arch, --d-sae or --k train the whole grid on one activation stream
(one folder per dictionary under --out). --site-out makes transcoders. Under torchrun the
batch is split across the processes (gloo on CPU, NCCL on GPUs).
"""

from __future__ import annotations

import argparse
import itertools

from workbench.cli.common import add_json_flag, emit


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "train", help="train SAEs / transcoders from an activation store or a model and corpus (resumable)",
        description="Train one sparse dictionary, or a grid of them on one activation stream. "
                    "Interrupt and run the same command with --resume to continue exactly.")
    source = parser.add_argument_group("activations (a store, or a model + corpus)")
    source.add_argument("--store", help="activation store folder (from `workbench capture`)")
    source.add_argument("--model", help="model name, HF repo id or local folder (live training)")
    source.add_argument("--corpus", help="corpus name or .txt/.jsonl file (live training)")
    source.add_argument("--site", help="input site (required live; with --store, default: the store's only site)")
    source.add_argument("--site-out", help="output site: train transcoders from --site to this site")
    source.add_argument("--context-size", type=int, default=128, help="tokens per context, live (default 128)")
    source.add_argument("--buffer-tokens", type=int, default=262144, help="shuffle-buffer rows, live (default 262144)")
    source.add_argument("--split", default="train", choices=["train", "test", "all"], help="corpus split (live)")
    source.add_argument("--keep-bos", action="store_true", help="train on position 0 of each context too (live)")
    source.add_argument("--dtype", default=None, help="model dtype, live (float32, bfloat16)")

    sae = parser.add_argument_group("dictionary")
    sae.add_argument("--arch", nargs="+", required=True, metavar="A",
                     help="relu, topk, batchtopk, jumprelu, matryoshka, abstopk, hierarchical_topk, mp")
    sae.add_argument("--d-sae", nargs="+", type=int, required=True, metavar="N", help="latents")
    sae.add_argument("--k", nargs="+", type=int, default=[None], metavar="K", help="active latents per token")
    sae.add_argument("--l1-coefficient", type=float, default=5.0, help="relu: L1 weight (default 5)")
    sae.add_argument("--l0-coefficient", type=float, default=1.0, help="jumprelu: L0 weight (default 1)")
    sae.add_argument("--aux-k-coefficient", type=float, default=1 / 32, help="AuxK weight (default 1/32)")
    sae.add_argument("--k-budgets", nargs="+", type=int, help="hierarchical_topk budgets (last = k)")
    sae.add_argument("--matryoshka-widths", nargs="+", type=int, help="matryoshka prefix widths (last = d-sae)")

    run = parser.add_argument_group("training")
    run.add_argument("--tokens", type=int, required=True, help="training tokens per dictionary")
    run.add_argument("--out", required=True, help="output folder")
    run.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    run.add_argument("--lr", type=float, default=None, help="Adam rate (default 2e-4/sqrt(d_sae/16384))")
    run.add_argument("--batch-size", type=int, default=4096, help="tokens per step (default 4096)")
    run.add_argument("--seed", type=int, default=0, help="seed of the weights and the batch order")
    run.add_argument("--checkpoint-every", type=int, default=500, help="steps between checkpoints (default 500)")
    run.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    run.add_argument("--save-dtype", default="float32", help="dtype of the saved weights (default float32)")
    run.add_argument("--no-normalize", action="store_true", help="do not rescale inputs to mean norm sqrt(d)")
    add_json_flag(parser)
    parser.set_defaults(func=run_train)


def _configs(args: argparse.Namespace, site: str, width_in: int, width_out: int | None, description: dict):
    from workbench.sae.config import K_ARCHITECTURES, SaeConfig

    configs, seen = [], set()
    for arch, d_sae, k in itertools.product(args.arch, args.d_sae, args.k):
        k = k if arch in K_ARCHITECTURES else None
        key = (arch, d_sae, k)
        if key in seen:
            continue
        seen.add(key)
        extra = {}
        if arch == "hierarchical_topk" and args.k_budgets:
            extra["k_budgets"] = tuple(args.k_budgets)
        if arch == "matryoshka" and args.matryoshka_widths:
            extra["matryoshka_widths"] = tuple(args.matryoshka_widths)
        configs.append(SaeConfig(
            architecture=arch, d_in=width_in, d_sae=d_sae, k=k,
            transcoder=bool(args.site_out), d_out=width_out if args.site_out else None,
            l1_coefficient=args.l1_coefficient, l0_coefficient=args.l0_coefficient,
            aux_k_coefficient=args.aux_k_coefficient, site=site, site_out=args.site_out or "",
            model_name=str(description.get("model_name", "")), **extra))
    return configs


def _source(args: argparse.Namespace):
    from workbench.errors import WorkbenchError

    if bool(args.store) == bool(args.model):
        raise WorkbenchError("give either --store DIR or --model M --site S --corpus C")
    if args.store:
        from workbench.engine.store import ActivationStore
        from workbench.sae.sources import StoreSource

        store = ActivationStore.open(args.store)
        site = args.site
        if site is None:
            if len(store.sites) != 1:
                raise WorkbenchError(f"the store holds several sites {store.sites}; choose one with --site")
            site = store.sites[0]
        sites = [site] + ([args.site_out] if args.site_out else [])
        return StoreSource(store, sites), site
    if not args.site or not args.corpus:
        raise WorkbenchError("live training needs --model, --site and --corpus")
    from workbench.corpora import load_corpus, pack_corpus
    from workbench.engine.registry import load_model
    from workbench.sae.sources import LiveSource

    model = load_model(args.model, device=args.device, dtype=args.dtype)
    corpus = load_corpus(args.corpus)
    packed = pack_corpus(corpus, model.tokenizer, args.context_size, split=args.split)
    sites = [args.site] + ([args.site_out] if args.site_out else [])
    return LiveSource(model, packed, sites, buffer_tokens=args.buffer_tokens, drop_bos=not args.keep_bos), args.site


def run_train(args: argparse.Namespace) -> int:
    import torch

    from workbench.sae import distributed as dd
    from workbench.sae.train import TrainConfig, Trainer

    dd.init_from_env()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if dd.is_distributed() and device == "cuda":
        device = f"cuda:{torch.cuda.current_device()}"
    source, site = _source(args)
    width_out = source.width(args.site_out) if args.site_out else None
    configs = _configs(args, site, source.width(site), width_out, source.description)
    train_cfg = TrainConfig(
        total_tokens=args.tokens, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        checkpoint_every=args.checkpoint_every, device=device, save_dtype=args.save_dtype,
        normalize_activations=not args.no_normalize, progress=True)
    result = Trainer(configs, train_cfg, out_dir=args.out).fit(source, resume=args.resume)
    rows = []
    for name, sae in result.saes.items():
        last = result.history[name][-1] if result.history[name] else {}
        cfg = sae.cfg
        rows.append({"name": name or cfg.architecture, "path": str(result.out_dirs.get(name, args.out)),
                     "architecture": cfg.architecture, "d_sae": cfg.d_sae, "k": cfg.k, "site": cfg.site,
                     "site_out": cfg.site_out or None, "l0": last.get("l0"), "batch_fvu": last.get("fvu"),
                     "dead_frac": last.get("dead_frac")})
    summary = {"out": args.out, "steps": result.steps, "tokens": result.tokens, "seconds": round(result.seconds, 2),
               "tokens_per_s": round(result.tokens_per_second, 1), "saes": rows}
    if dd.rank() == 0:
        lines = [f"trained {len(rows)} dictionar{'y' if len(rows) == 1 else 'ies'}: {result.steps} steps, "
                 f"{result.tokens} tokens in {result.seconds:.1f} s ({result.tokens_per_second:.0f} tok/s)"]
        for row in rows:
            lines.append(f"  {row['path']}: {row['architecture']} d_sae={row['d_sae']} k={row['k']} "
                         f"L0={row['l0']:.1f} batch FVU={row['batch_fvu']:.3f} dead={row['dead_frac']:.1%}")
        emit(args, summary, "\n".join(lines))
    return 0
