"""Compute input and output scores (Arad, Mueller, Belinkov 2025) for registered SAEs and store them.

For each SAE: the logit-lens top-20 tokens of every feature, the output score of every
feature (batched: `--batch-size` features per forward on the neutral prompt), and the
input score (from the feature store's top contexts when the store exists, else from a
scan of `--input-tokens` tokens of the default corpus). The scores go into the feature
store's `input_score` / `output_score` columns (when the store exists) and always into
the sidecar `data/features/<model>/<sae>.scores.safetensors`, where the Steering page
and notebook 04 read them.

Usage (the shipped SAEs, after they and their feature stores exist):
  .venv/bin/python scripts/score_features.py --model smollm2-135m            # every registered SAE
  .venv/bin/python scripts/score_features.py --model smollm2-135m --sae batchtopk-l15-8k --dtype bfloat16

The model runs in bfloat16 by default (CPU AMX makes it ~4x faster than float32 here; the
scores rank features, so bf16 logits are precise enough); pass --dtype float32 for exact
fp32 scores. Measured on the 2-core dev CPU while other jobs ran: 1024 features took 10.6 s
in bf16 and 44 s in fp32 (128 features per forward), so an 8192-feature SAE takes about
1.5 min in bf16; the corpus scan for input scores takes a few minutes per 64k tokens.
With --json the last line is a JSON summary (timings, top features).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings


def score_one(model, entry, args) -> dict:
    import torch

    from workbench.steering.resolve import open_sae
    from workbench.steering.scores import (
        input_scores_from_examples,
        logit_lens_tokens,
        output_scores,
        top_examples,
        top_examples_from_store,
    )
    from workbench.steering.scores_store import write_scores

    _, sae = open_sae(model, entry.name)
    timings = {}
    started = time.perf_counter()
    lens = logit_lens_tokens(model, sae, k=args.k, progress=True)
    timings["logit_lens_s"] = round(time.perf_counter() - started, 1)
    started = time.perf_counter()
    output = output_scores(model, sae, lens=lens, k=args.k, batch_size=args.batch_size, progress=True)
    timings["output_s"] = round(time.perf_counter() - started, 1)
    metadata = {"prompt": output.prompt, "amp_factor": output.amp_factor, "k": args.k,
                "model_dtype": str(model.dtype), "max_act": output.max_act}
    # store the output scores at once: the input scores below may take a while (or be skipped)
    written = write_scores(entry.feature_store, {"output_score": output.scores}, d_sae=sae.cfg.d_sae,
                           metadata=metadata)
    scores = {}
    source = "skipped"
    if not args.skip_input:
        started = time.perf_counter()
        if entry.feature_store.is_file() and not args.input_from_corpus:
            from workbench.features.store import FeatureStore

            with FeatureStore(entry.feature_store) as store:
                examples = top_examples_from_store(store)
            source = f"feature store top contexts ({entry.feature_store.name})"
        else:
            examples = top_examples(model, sae, "default", max_tokens=args.input_tokens, progress=True)
            source = f"{args.input_tokens} tokens of the default corpus"
        scores["input_score"] = input_scores_from_examples(examples, lens[:, :args.k])
        timings["input_s"] = round(time.perf_counter() - started, 1)
        written.update(write_scores(entry.feature_store, scores, d_sae=sae.cfg.d_sae,
                                    metadata={**metadata, "input_source": source}))
    top = output.scores.argsort(descending=True)[:10].tolist()
    decode = model.tokenizer.decode
    summary = {
        "sae": entry.name, "d_sae": sae.cfg.d_sae, "site": sae.cfg.site, **timings, "input_source": source,
        "written": written,
        "top_output": [{"feature": f, "output_score": round(float(output.scores[f]), 4),
                        "tokens": [decode([t]) for t in lens[f, :5].tolist()]} for f in top],
    }
    if "input_score" in scores:
        values = scores["input_score"]
        finite = values[~torch.isnan(values)]
        summary["input_scored"] = int(finite.numel())
        summary["input_mean"] = round(float(finite.mean()), 4) if finite.numel() else math.nan
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2-135m", help="model name (default smollm2-135m)")
    parser.add_argument("--sae", nargs="+", default=None, help="registered SAE names (default: all of the model)")
    parser.add_argument("--dtype", default="bfloat16", help="model dtype (default bfloat16; float32 for exact scores)")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--batch-size", type=int, default=128, help="features per forward (default 128)")
    parser.add_argument("--k", type=int, default=20, help="logit-lens tokens per feature (default 20)")
    parser.add_argument("--skip-input", action="store_true", help="output scores only")
    parser.add_argument("--input-from-corpus", action="store_true",
                        help="scan the corpus for input scores even when a feature store exists")
    parser.add_argument("--input-tokens", type=int, default=65_536, help="corpus tokens for input scores")
    parser.add_argument("--json", action="store_true", help="print a JSON summary as the last line")
    args = parser.parse_args(argv)

    from workbench.catalog import get_sae, list_saes
    from workbench.engine.registry import load_model
    from workbench.errors import WorkbenchError

    warnings.filterwarnings("ignore", message=".*which nnsight already serves.*")
    try:
        model = load_model(args.model, device=args.device, dtype=args.dtype)
        entries = [get_sae(model.name, n) for n in args.sae] if args.sae else list_saes(model.name)
        if not entries:
            raise WorkbenchError(f"no SAE is registered for {model.name} (data/saes/{model.name}/ or "
                                 "$WORKBENCH_SAE_DIRS)")
        summaries = []
        for entry in entries:
            print(f"== {entry.name} ({entry.site}, d_sae {entry.d_sae}) on {model.name} {model.dtype}", flush=True)
            summary = score_one(model, entry, args)
            summaries.append(summary)
            print(f"   logit lens {summary['logit_lens_s']} s, output scores {summary['output_s']} s"
                  + (f", input scores {summary['input_s']} s ({summary['input_source']})" if "input_s" in summary
                     else ""))
            for row in summary["top_output"][:5]:
                print(f"   #{row['feature']:>5}  output {row['output_score']:.3f}  {row['tokens']}")
            for name, where in summary["written"].items():
                print(f"   {name} -> {where}")
    except WorkbenchError as error:
        print(f"score_features: error: {error}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": model.name, "dtype": str(model.dtype), "saes": summaries}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
