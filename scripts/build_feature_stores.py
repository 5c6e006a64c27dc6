"""Rebuild the shipped feature stores from the shipped SAEs (the exact recipe).

For every SAE under data/saes/<model>/ (or the ones named with --saes) this harvests the
held-out split of the shipped default corpus into data/features/<model>/<sae>.sqlite.
All SAEs share one forward pass per batch, which stops after the deepest SAE's layer, and
the model runs in bfloat16 (about 2x faster than float32 on these CPUs). Interrupted, the
same command continues from the last checkpoint (data/features/<model>/<sae>.sqlite.harvest/).

    .venv/bin/python scripts/build_feature_stores.py                  # all SAEs of smollm2-135m
    .venv/bin/python scripts/build_feature_stores.py --saes batchtopk-l15-8k --tokens 300000

Equivalent, one SAE at a time (slower: one forward per SAE):

    workbench harvest data/saes/smollm2-135m/batchtopk-l15-8k --model smollm2-135m --dtype bfloat16 \\
        --corpus default --split test --tokens 240000 --out data/features/smollm2-135m/batchtopk-l15-8k.sqlite

Prints a table (latents, dead fraction, store size, time) and checks the size budget
(all stores of a model together <= 30 MB, so that data/ stays under ~100 MB).
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

BUDGET_MB = 30.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--saes", nargs="*", default=None, help="SAE names under data/saes/<model>/ (default: all)")
    parser.add_argument("--corpus", default="default")
    parser.add_argument("--split", default="test", choices=["train", "test", "all"])
    parser.add_argument("--tokens", type=int, default=240_000,
                        help="tokens per store (default 240000: the whole held-out split of the default corpus)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--device", default=None)
    parser.add_argument("--no-umap", action="store_true")
    parser.add_argument("--data-dir", default=None, help="root holding saes/ and features/ (default: data/)")
    args = parser.parse_args()

    import workbench as wb
    from workbench.features import HarvestConfig, HarvestTarget, harvest_many
    from workbench.paths import data_dir
    from workbench.sae.loading import load_sae

    root = Path(args.data_dir) if args.data_dir else data_dir()
    sae_root = root / "saes" / args.model
    names = args.saes
    if not names and sae_root.is_dir():
        names = sorted(p.name for p in sae_root.iterdir() if (p / "cfg.json").is_file())
    if not names:
        print(f"no SAEs under {sae_root}", file=sys.stderr)
        return 2
    model = wb.load_model(args.model, device=args.device, dtype=args.dtype)
    targets = []
    for name in names:
        sae = load_sae(sae_root / name, model)
        out = root / "features" / args.model / f"{name}.sqlite"
        targets.append(HarvestTarget(sae=sae, out=out, name=name))
        print(f"{name}: {sae.cfg.architecture} d_sae={sae.cfg.d_sae} at {sae.cfg.site} -> {out}")
    config = HarvestConfig(corpus=args.corpus, split=args.split, n_tokens=args.tokens, batch_size=args.batch_size,
                           umap=not args.no_umap)
    command = "python scripts/build_feature_stores.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    start = time.time()
    summaries = harvest_many(model, targets, config, progress=True, overwrite=True, command=command.strip())
    total = 0.0
    print(f"\n{'store':<28} {'latents':>8} {'tokens':>9} {'dead':>7} {'MB':>6}")
    for target, summary in zip(targets, summaries):
        mb = summary.stats["size_bytes"] / 1e6
        total += mb
        print(f"{target.name:<28} {target.sae.cfg.d_sae:>8} {summary.n_tokens:>9,} "
              f"{summary.stats['dead_frac']:>7.2%} {mb:>6.1f}")
    print(f"total {total:.1f} MB (budget {BUDGET_MB:.0f} MB) in {time.time() - start:.0f} s")
    if total > BUDGET_MB:
        print(f"WARNING: the stores exceed the {BUDGET_MB:.0f} MB budget; rerun with fewer --tokens", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
