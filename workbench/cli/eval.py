"""`workbench eval SAE_DIR --model M --corpus C --tokens N [--json]`: evaluate a dictionary.

Reconstruction and sparsity metrics on N held-out tokens, and CE / KL with the SAE spliced
into the model (definitions: workbench/sae/evals.py and docs/sae.md). With --json the
last line is one JSON object with the keys l0, mse, fvu, fvu_typical, nmse, cos,
dead_frac, dense_frac, ce_clean, ce_spliced, delta_ce (nats), ce_loss_recovered, kl and
more (l1, shrinkage, ce_zero_ablation, ce_mean_ablation, ce_with_error_term, ...).
"""

from __future__ import annotations

import argparse

from workbench.cli.common import add_json_flag, emit

_SHOWN = [
    ("l0", "L0 (active latents per token)", ".2f"),
    ("fvu", "FVU (about the mean)", ".4f"),
    ("fvu_typical", "FVU on typical tokens (norm <= 3x median)", ".4f"),
    ("nmse", "per-token normalised MSE", ".4f"),
    ("cos", "cosine(x, x_hat)", ".4f"),
    ("mse", "MSE (sum over dims)", ".4g"),
    ("shrinkage", "shrinkage ||x_hat||/||x||", ".4f"),
    ("dead_frac", "dead latents", ".2%"),
    ("dense_frac", "dense latents (>10% of tokens)", ".2%"),
    ("ce_clean", "CE clean (nats)", ".4f"),
    ("ce_spliced", "CE with the SAE spliced in", ".4f"),
    ("delta_ce", "CE increase (nats)", "+.4f"),
    ("ce_with_error_term", "CE with the error term", ".4f"),
    ("ce_zero_ablation", "CE zero ablation", ".4f"),
    ("ce_mean_ablation", "CE mean ablation", ".4f"),
    ("ce_loss_recovered", "CE loss recovered vs zero ablation", ".4f"),
    ("ce_loss_recovered_mean_ablation", "CE loss recovered vs mean ablation", ".4f"),
    ("kl", "KL(clean || spliced) per token", ".4f"),
]


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "eval", help="evaluate an SAE on held-out text (reconstruction, sparsity, spliced CE/KL)",
        description="Evaluate an SAE folder (SAELens layout, sparsify or dictionary_learning) on the held-out "
                    "split of a corpus, with the SAE spliced into the model for CE and KL.")
    parser.add_argument("sae_dir", metavar="SAE_DIR", help="the SAE folder")
    parser.add_argument("--model", help="model (default: the one recorded in the SAE)")
    parser.add_argument("--corpus", default="default", help="corpus name or file (default: default)")
    parser.add_argument("--tokens", type=int, default=8192, help="evaluation tokens (default 8192)")
    parser.add_argument("--ce-tokens", type=int, default=None, help="tokens for CE/KL (default: --tokens)")
    parser.add_argument("--split", default="test", choices=["train", "test", "all"], help="corpus split (default test)")
    parser.add_argument("--context-size", type=int, default=128, help="tokens per context (default 128)")
    parser.add_argument("--batch-size", type=int, default=8, help="contexts per forward (default 8)")
    parser.add_argument("--site", help="override the site recorded in the SAE")
    parser.add_argument("--no-ce", action="store_true", help="skip the spliced CE/KL (reconstruction only)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="model dtype (float32, bfloat16)")
    parser.add_argument("--out", help="also write the JSON result to this file")
    add_json_flag(parser)
    parser.set_defaults(func=run_eval)


def run_eval(args: argparse.Namespace) -> int:
    from workbench.atomic import write_json
    from workbench.engine.registry import load_model
    from workbench.errors import WorkbenchError
    from workbench.sae.evals import evaluate_sae
    from workbench.sae.loading import load_sae

    if args.tokens < 1:
        raise WorkbenchError(f"--tokens must be >= 1, got {args.tokens}")
    sae = load_sae(args.sae_dir, site=args.site)
    model_name = args.model or sae.cfg.model_name
    if not model_name:
        raise WorkbenchError("the SAE does not record its model; pass --model")
    model = load_model(model_name, device=args.device, dtype=args.dtype)
    sae = load_sae(args.sae_dir, model, site=args.site)
    result = evaluate_sae(sae, model, args.corpus, args.tokens, split=args.split, context_size=args.context_size,
                          batch_size=args.batch_size, ce_tokens=args.ce_tokens, compute_ce=not args.no_ce,
                          progress=True)
    result["sae_dir"] = str(args.sae_dir)
    if args.out:
        write_json(args.out, result)
    lines = [f"{args.sae_dir}: {sae.cfg.architecture} d_sae={sae.cfg.d_sae} k={sae.cfg.k} at {sae.cfg.site} "
             f"of {model.name}, {result['n_tokens']} {result['split']} tokens of {result['corpus']}"]
    for key, label, fmt in _SHOWN:
        if key in result and result[key] is not None:
            lines.append(f"  {label:<44} {format(result[key], fmt)}")
    if "splice_position0" in result:
        lines.append(f"  position 0 of each context spliced: {result['splice_position0']}")
    emit(args, result, "\n".join(lines))
    return 0
