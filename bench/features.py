"""Feature-store query latency: how fast the dashboards get their data.

Opens a registered SAE's feature store (default: the app's default SAE of smollm2-135m;
`WORKBENCH_SAE_DIRS` registers others) and times, over a seeded sample of latents:

    open            FeatureStore(path) (meta, version checks)
    card (cold)     the first card of a fresh store (loads the context token matrix once)
    card            store.card(i): everything a dashboard shows          goal: <= 50 ms
    contexts        store.contexts(i)
    neighbours      store.neighbours(i)
    list top 100    store.list_features("max_act", limit=100)
    by token        features_by_token(store, t) for frequent tokens
    full text       search_text(store, w) for words from top contexts
    umap map        store.umap_map()
    export          card_document (the self-contained HTML)
    for text        features_for_text (model + SAE forward), when --with-model

    python bench/features.py                       # default SAE of smollm2-135m
    python bench/features.py --model M --sae NAME --samples 300 --with-model

Prints a table and writes bench/results/features-cpu.json (or $OUT/ when set).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

GOAL_MS = 50.0


def timed(fn, items) -> list[float]:
    """Milliseconds of fn(item) for each item."""
    out = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        out.append((time.perf_counter() - start) * 1e3)
    return out


def summary(samples: list[float]) -> dict:
    ordered = sorted(samples)
    p95 = ordered[min(len(ordered) - 1, int(round(0.95 * (len(ordered) - 1))))]
    return {"n": len(samples), "median_ms": statistics.median(samples), "p95_ms": p95, "max_ms": ordered[-1]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--sae", default=None, help="registered SAE name (default: the model's default SAE)")
    parser.add_argument("--samples", type=int, default=200, help="latents sampled for the per-latent queries")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--with-model", action="store_true", help="also time features_for_text (loads the model)")
    parser.add_argument("--machine", default=None)
    args = parser.parse_args()

    from workbench.catalog import default_sae, get_sae
    from workbench.features import FeatureStore, features_by_token, search_text
    from workbench.features.export import card_document

    entry = get_sae(args.model, args.sae) if args.sae else default_sae(args.model)
    if entry is None:
        raise SystemExit(f"no SAE registered for {args.model}; register one (data/saes or WORKBENCH_SAE_DIRS)")
    path = entry.feature_store
    if not path.is_file():
        raise SystemExit(f"{entry.name} has no feature store at {path}; build it with workbench harvest")
    rng = random.Random(args.seed)
    results: dict[str, dict] = {}

    start = time.perf_counter()
    store = FeatureStore(path, model=args.model)
    results["open"] = summary([(time.perf_counter() - start) * 1e3])
    alive = [int(i) for i, n in enumerate(store.column("n_fired")) if n > 0]
    sample = rng.sample(alive, min(args.samples, len(alive)))
    results["card (cold)"] = summary(timed(store.card, sample[:1]))
    results["card"] = summary(timed(store.card, sample))
    results["contexts"] = summary(timed(store.contexts, sample))
    results["neighbours"] = summary(timed(store.neighbours, sample))
    results["list top 100"] = summary(timed(lambda _: store.list_features("max_act", limit=100), range(20)))
    tokens = [row[0] for row in store._query("SELECT token FROM token_features ORDER BY count DESC LIMIT 40")]
    token_texts = [t for t in (store.token_text(i) for i in tokens) if t and t.strip()][:20]
    results["by token"] = summary(timed(lambda t: features_by_token(store, t), token_texts))
    words = []
    for index in sample[:40]:
        for example in store.contexts(index, "top")[:1]:
            found = re.findall(r"[A-Za-z]{5,}", "".join(example.tokens))
            if found:
                words.append(rng.choice(found))
    results["full text"] = summary(timed(lambda w: search_text(store, w), words[:20]))
    results["umap map"] = summary(timed(lambda _: store.umap_map(), range(5)))
    results["export"] = summary(timed(lambda i: card_document(store, i), sample[:20]))
    if args.with_model:
        import workbench as wb
        from workbench.features import features_for_text
        from workbench.sae.loading import load_sae

        model = wb.load_model(args.model)
        sae = load_sae(entry.folder, model, check_tokens=0)
        texts = ["The capital of France is Paris, and the capital of Italy is Rome.",
                 "def add(a, b):\n    return a + b", "A dog is a domesticated carnivorous mammal."]
        features_for_text(store, model, sae, texts[0])  # warm-up
        results["for text (model+SAE)"] = summary(timed(lambda t: features_for_text(store, model, sae, t), texts))

    machine = args.machine or platform.processor() or "cpu"
    report = {
        "benchmark": "features", "model": args.model, "sae": entry.name, "store": str(path),
        "store_mb": path.stat().st_size / 1e6, "d_sae": store.d_sae, "n_tokens": store.n_tokens,
        "machine": machine, "python": platform.python_version(), "goal": f"card data <= {GOAL_MS:.0f} ms",
        "goal_met": results["card"]["p95_ms"] <= GOAL_MS, "results": results,
    }
    out_dir = Path(os.environ.get("OUT", Path(__file__).parent / "results"))
    out_dir.mkdir(parents=True, exist_ok=True)
    out = out_dir / "features-cpu.json"
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{entry.name} ({store.d_sae} latents, {store.n_tokens:,} tokens, {report['store_mb']:.1f} MB) on {machine}")
    print(f"{'query':<24} {'n':>4} {'median ms':>10} {'p95 ms':>8} {'max ms':>8}")
    for name, r in results.items():
        print(f"{name:<24} {r['n']:>4} {r['median_ms']:>10.2f} {r['p95_ms']:>8.2f} {r['max_ms']:>8.2f}")
    print(f"goal (card p95 <= {GOAL_MS:.0f} ms): {'met' if report['goal_met'] else 'NOT met'}; wrote {out}")
    if not report["goal_met"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
