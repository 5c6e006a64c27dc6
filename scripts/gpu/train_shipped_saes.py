#!/usr/bin/env python3
"""Train the shipped SmolLM2-135M SAEs on one GPU, evaluate them, and pack them for data/.

One run, about 8 minutes on an H200 (the time budget is a flag):

1. load smollm2-135m through the workbench engine (bf16; the GGUF path is `--gguf`, passed
   to the embedded loader as WORKBENCH_SMOLLM2_GGUF);
2. pack the training text: the train split of the shipped `default` corpus, plus an
   optional larger corpus file (`--train-corpus`, from scripts/build_corpora.py
   --train-corpus) with every document of `default`'s held-out split removed, plus
   optionally text the model generates itself (`--generate-tokens`, FaithfulSAE-style);
3. capture the residual stream after the main layer and the other layers in one pass
   per batch, position 0 of every context dropped (the attention sink: norms ~23k against
   ~170 elsewhere at layer 15), activations kept on the GPU in bf16;
4. measure the step time, size the run to the time left, and train every SAE on the one
   activation stream with the workbench trainer (TopK, AuxK for dead latents, b_dec from
   the geometric median, unit-norm decoder with the parallel gradient removed, Adam with
   warm-up and a linear decay over the last 20% of the steps, fp32 SAE with TF32 matmuls);
5. save each SAE in fp16 in the SAELens layout under saes/smollm2-135m/<name>/, reload
   the fp16 file and evaluate it with the workbench evaluations on the held-out split
   (fp32 model): FVU, FVU on typical tokens, L0, dead latents, CE with the SAE spliced in
   (position 0 not spliced, as in training; the CE increase when position 0 *is* spliced
   is reported too, for comparison with other evaluations), KL, CE recovered;
6. write eval.json beside each SAE, pack saes/ into a tar split into 15 MiB pieces under
   $OUT (8 files of <= 16 MiB come back), write summary.json, and print a table last.

CPU smoke test (tiny model, a minute):  python scripts/gpu/train_shipped_saes.py --tiny --out /tmp/out
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tarfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

T0 = time.perf_counter()
PIECE_BYTES = 15 * 1024 * 1024


def log(message: str) -> None:
    print(f"[{time.perf_counter() - T0:7.1f}s] {message}", flush=True)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gguf", help="path of SmolLM2-135M-Instruct.Q4_1.gguf (sets WORKBENCH_SMOLLM2_GGUF)")
    p.add_argument("--out", default=os.environ.get("OUT", "out"), help="output folder (default $OUT)")
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--main-layer", type=int, default=15)
    p.add_argument("--other-layers", type=int, nargs="*", default=[6, 24])
    p.add_argument("--d-sae-main", type=int, default=8192)
    p.add_argument("--d-sae-other", type=int, default=4096)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--arch", default="topk", choices=["topk", "batchtopk"], help="architecture of every SAE")
    p.add_argument("--also-main-arch", default=None, choices=["topk", "batchtopk"],
                   help="also train the main-layer SAE with this architecture on the same stream (a comparison)")
    p.add_argument("--context-size", type=int, default=128)
    p.add_argument("--train-corpus", help="extra training corpus file (.jsonl.gz from build_corpora.py)")
    p.add_argument("--max-train-tokens", type=int, default=16_000_000, help="cap on captured training rows")
    p.add_argument("--generate-tokens", type=int, default=0, help="model-generated training tokens (0: none)")
    p.add_argument("--budget-seconds", type=float, default=470.0, help="wall-clock budget of the whole run")
    p.add_argument("--eval-reserve-seconds", type=float, default=75.0, help="time kept for evaluation and packing")
    p.add_argument("--max-steps", type=int, default=200_000)
    p.add_argument("--steps", type=int, default=None,
                   help="train exactly this many steps (default: size the run to the time budget)")
    p.add_argument("--max-norm-multiple", type=float, default=0.0,
                   help="drop training rows whose norm exceeds this multiple of the site's median norm at any "
                        "site (attention-sink tokens inside contexts; 0: keep all)")
    p.add_argument("--min-steps", type=int, default=500)
    p.add_argument("--batch-size", type=int, default=4096)
    p.add_argument("--lr", type=float, default=None, help="default 2e-4/sqrt(d_sae/16384) per SAE")
    p.add_argument("--autocast", action="store_true", help="bf16 autocast for the SAEs (default: fp32 with TF32)")
    p.add_argument("--kernels", default="auto", choices=["auto", "reference", "triton"],
                   help="sparse-kernel backend (auto: Triton on CUDA, checked on first use)")
    p.add_argument("--eval-tokens", type=int, default=196_608, help="held-out tokens for the reconstruction metrics")
    p.add_argument("--ce-tokens", type=int, default=65_536, help="held-out tokens for CE/KL")
    p.add_argument("--eval-batch", type=int, default=64, help="contexts per forward in evaluation")
    p.add_argument("--capture-batch", type=int, default=256, help="contexts per forward in capture")
    p.add_argument("--kl-finetune-seconds", type=float, default=0.0,
                   help="after MSE training, fine-tune each SAE spliced into the model on KL + FVU for this many "
                        "seconds (workbench.sae.finetune; 0: off)")
    p.add_argument("--kl-steps", type=int, default=None,
                   help="KL fine-tune exactly this many steps per SAE (default: sized to --kl-finetune-seconds)")
    p.add_argument("--kl-lr", type=float, default=1e-4, help="Adam step size of the KL fine-tune")
    p.add_argument("--kl-batch", type=int, default=32, help="contexts per KL fine-tune step")
    p.add_argument("--kl-mse-coef", type=float, default=1.0, help="weight of the batch FVU in the KL fine-tune")
    p.add_argument("--model-dtype", default="float32", choices=["float32", "bfloat16"],
                   help="dtype of the model for capture and the KL fine-tune on CUDA (evaluation always runs it "
                        "in fp32): float32 trains on the activations the evaluation and users' fp32 runs see")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="CPU smoke test: tiny-llama, small sizes")
    args = p.parse_args(argv)
    if args.tiny:
        args.model, args.main_layer, args.other_layers = "tiny-llama", 1, [0]
        args.d_sae_main, args.d_sae_other, args.k, args.context_size = 256, 128, 8, 32
        args.max_train_tokens = min(args.max_train_tokens, 60_000)
        args.budget_seconds, args.eval_reserve_seconds = min(args.budget_seconds, 90.0), 30.0
        args.min_steps, args.max_steps, args.batch_size = 50, 400, 512
        args.eval_tokens, args.ce_tokens, args.eval_batch, args.capture_batch = 2048, 1024, 16, 32
        args.device = args.device or "cpu"
        args.generate_tokens = args.generate_tokens and min(args.generate_tokens, 2048)
        args.kl_finetune_seconds, args.kl_batch = min(args.kl_finetune_seconds, 10.0), 4
    return args


# ---------------------------------------------------------------------- data
def training_tokens(args, model):
    """[n_ctx, T] token ids for training, and the held-out PackedCorpus for evaluation."""
    import torch

    from workbench.corpora import load_corpus, pack_corpus
    from workbench.corpora.corpus import Corpus

    T = args.context_size
    default = load_corpus("default")
    held_out = pack_corpus(default, model.tokenizer, T, split="test",
                           max_tokens=math.ceil(args.eval_tokens / (T - 1)) * T)
    if args.train_corpus:
        # More text: the `default` train split plus every document of the file that `default`
        # does not hold (a superset file from build_corpora.py --train-corpus, or only its extra
        # documents); nothing of `default`'s held-out split goes in.
        extra = load_corpus(args.train_corpus)
        train_docs, added = combined_training_docs(default, extra)
        log(f"train corpus: {len(train_docs)} documents of default's train split + {len(added)} of "
            f"{args.train_corpus} ({len(extra.docs) - len(added)} already in default, held-out ones included)")
        base = Corpus(name=f"default+{extra.name}", docs=tuple(train_docs + added), source=extra.source,
                      license=extra.license)
        parts = [pack_corpus(base, model.tokenizer, T, split="all").tokens]
    else:
        parts = [pack_corpus(default, model.tokenizer, T, split="train").tokens]
    log(f"training contexts from the corpus: {parts[0].shape[0]:,}; held-out contexts: {held_out.tokens.shape[0]:,}")
    if args.generate_tokens > 0:
        parts.append(generated_contexts(args, model, torch.cat(parts)))
    tokens = torch.cat(parts)
    max_ctx = max(1, args.max_train_tokens // (T - 1))
    if tokens.shape[0] > max_ctx:
        order = torch.randperm(tokens.shape[0], generator=torch.Generator().manual_seed(args.seed))[:max_ctx]
        tokens = tokens[order.sort().values]
    log(f"training text: {tokens.shape[0]} contexts x {T} = {tokens.numel():,} tokens")
    return tokens, held_out


def combined_training_docs(default, extra) -> tuple[list[str], list[str]]:
    """(default's train-split documents, the documents of `extra` that `default` does not hold).

    Nothing of default's held-out split is returned, whichever file `extra` came from."""
    held = {text for _, text in default.split("test")}
    train_docs = [text for _, text in default.split("train")]
    known = held | set(train_docs)
    seen: set[str] = set()
    added = []
    for doc in extra.docs:
        if doc not in known and doc not in seen:
            seen.add(doc)
            added.append(doc)
    return train_docs, added


def generated_contexts(args, model, tokens):
    """Contexts the model writes itself: 4-token prompts from the training text, sampled at T=1."""
    import torch

    T, prompt = args.context_size, 4
    n_ctx = max(1, args.generate_tokens // T)
    gen = torch.Generator().manual_seed(args.seed + 1)
    starts = tokens[torch.randint(0, tokens.shape[0], (n_ctx,), generator=gen), :prompt]
    eos = model.tokenizer.eos_token_id
    out = []
    batch = 512 if model.device.type == "cuda" else 8
    torch.manual_seed(args.seed + 2)
    with torch.no_grad(), model.lock:
        for i in range(0, n_ctx, batch):
            ids = starts[i:i + batch].to(model.device)
            seq = model.hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0,
                                    top_k=0, top_p=1.0, max_new_tokens=T - prompt, min_new_tokens=T - prompt,
                                    pad_token_id=eos)
            out.append(seq[:, :T].cpu())
    log(f"generated {n_ctx} contexts ({n_ctx * T:,} tokens)")
    return torch.cat(out)


def capture_rows(model, tokens, sites, args, dtype):
    """Every site's activations for tokens [n_ctx, T], position 0 dropped: {site: [n_ctx*(T-1), d]}."""
    import torch

    n_ctx, T = tokens.shape
    per = T - 1
    rows = {s: torch.empty(n_ctx * per, model.site_width(s), dtype=dtype, device=model.device) for s in sites}
    with torch.no_grad():
        for i in range(0, n_ctx, args.capture_batch):
            ids = tokens[i:i + args.capture_batch].to(model.device)
            reads = model.read_sites(ids, torch.ones_like(ids), sites)  # stops after the last site
            for s in sites:
                acts = reads[s][:, 1:]
                rows[s][i * per:i * per + acts.shape[0] * per] = acts.reshape(-1, acts.shape[-1]).to(dtype)
    return rows


def drop_outlier_rows(rows, multiple: float):
    """Drop rows whose norm at any site exceeds `multiple` x that site's median norm.

    Besides position 0, a few tokens inside a context become attention sinks with norms
    ~100x the median. Under an MSE loss one such row weighs as much as ~10^4 typical rows,
    so a handful of them steer the dictionary (dictionary_learning's buffer drops them the
    same way, `max_activation_norm_multiple`).
    """
    import torch

    n = next(iter(rows.values())).shape[0]
    keep = torch.ones(n, dtype=torch.bool, device=next(iter(rows.values())).device)
    for site, r in rows.items():
        norms = torch.cat([r[i:i + 1_000_000].float().norm(dim=-1) for i in range(0, n, 1_000_000)])
        median = norms[:: max(1, n // 1_000_000)].median()
        keep &= norms <= multiple * median
    dropped = int(n - keep.sum())
    log(f"dropped {dropped:,} of {n:,} training rows with a norm above {multiple:g}x the median ({dropped / n:.4%})")
    return {site: r[keep] for site, r in rows.items()}


# ---------------------------------------------------------------------- training
def probe_step_seconds(configs, source, args, device) -> float:
    """Seconds per step of the real trainer (all SAEs, syncs and bookkeeping included):
    a 10-step run first (kernel compilation, autotuning, first-use checks), then 40 timed steps."""
    from workbench.sae.train import TrainConfig, Trainer

    def run(steps: int) -> float:
        # The real run's dead window (10M tokens). With a 4-batch window the probe read 576 ms a
        # step for a BatchTopK SAE against the 5.5 ms the run itself took, and sized that run to
        # its 500-step minimum (probably AuxK over the many latents such a window calls dead).
        tc = TrainConfig(total_tokens=steps * args.batch_size, batch_size=args.batch_size, init_tokens=8192,
                         lr_warmup_steps=1, log_every=10,
                         device=str(device), autocast=args.autocast, progress=False, seed=args.seed + 1)
        return Trainer(configs, tc).fit(source).seconds / steps

    run(10)
    return run(40)


def train(configs, rows, args, device, seconds):
    from workbench.sae.sources import TensorSource
    from workbench.sae.train import TrainConfig, Trainer

    source = TensorSource(rows, description={"model_name": args.model, "context_size": args.context_size,
                                             "dataset": "default" + (" + " + Path(args.train_corpus).name
                                                                     if args.train_corpus else ""),
                                             "exclude_position0": True})
    if args.steps:
        step_s, steps = float("nan"), args.steps
    else:
        probe_start = time.perf_counter()
        step_s = probe_step_seconds(configs, source, args, device) * 1.05
        seconds -= time.perf_counter() - probe_start
        steps = int(min(args.max_steps, max(args.min_steps, seconds / step_s)))
    log(f"step time ~{step_s * 1e3:.1f} ms for {len(configs)} SAEs: {steps} steps of {args.batch_size} "
        f"= {steps * args.batch_size:,} tokens each ({seconds:.0f} s available)")
    tc = TrainConfig(total_tokens=steps * args.batch_size, batch_size=args.batch_size, lr=args.lr,
                     lr_warmup_steps=min(1000, max(1, steps // 20)), lr_decay_start=0.8, init_tokens=65_536,
                     log_every=max(1, steps // 20), seed=args.seed, device=str(device), autocast=args.autocast,
                     progress=False)
    # the time limit is a safety net: a step-time estimate that is far off must not cost the run
    limit = None if args.steps else seconds * 1.25
    result = Trainer(configs, tc, names=[name_of(c, args) for c in configs]).fit(source, time_limit_s=limit)
    log(f"trained {result.steps} steps in {result.seconds:.1f} s ({result.tokens_per_second:,.0f} tokens/s per SAE)"
        + (" -- STOPPED EARLY by the time limit, before the end of the lr schedule" if result.stopped_early else ""))
    for name, history in result.history.items():
        for row in history[:: max(1, len(history) // 5)] + history[-1:]:
            log(f"  {name:>12} step {row['step']:>6}  loss {row['loss']:9.3f}  L0 {row['l0']:6.1f}  "
                f"batch FVU {row['fvu']:.4f}  dead {row['dead_frac']:.2%}  lr {row['lr']:.2e}")
    return result


def name_of(cfg, args) -> str:
    layer = int(cfg.site.split(".")[1])
    width = f"{cfg.d_sae // 1024}k" if cfg.d_sae % 1024 == 0 else str(cfg.d_sae)
    return f"{cfg.architecture}-l{layer}-{width}"


def kl_finetune_all(result, model, tokens, args, device):
    """Fine-tune every trained SAE on KL(clean || spliced) + FVU, each for about
    --kl-finetune-seconds (steps sized from 5 timed steps). The MSE-only SAEs are kept
    (deep copies) for the before/after evaluation. Returns {name: MSE-only copy}."""
    import copy

    import torch

    from workbench.sae.finetune import FinetuneConfig, finetune_summary, kl_finetune

    before = {}
    for name, sae in result.saes.items():
        before[name] = copy.deepcopy(sae)
        if args.kl_steps:
            steps = args.kl_steps
        else:
            probe = FinetuneConfig(steps=5, batch_contexts=args.kl_batch, lr=1e-12, mse_coef=args.kl_mse_coef)
            kl_finetune(copy.deepcopy(sae), model, tokens, probe, progress=False)  # compile and warm up
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            kl_finetune(copy.deepcopy(sae), model, tokens, probe, progress=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_s = (time.perf_counter() - start) / 5
            steps = max(20, int((args.kl_finetune_seconds - 3 * 5 * step_s) / step_s))
        cfg = FinetuneConfig(steps=steps, batch_contexts=args.kl_batch, lr=args.kl_lr, mse_coef=args.kl_mse_coef,
                             seed=args.seed)
        start = time.perf_counter()
        ft = kl_finetune(sae, model, tokens, cfg, progress=False)
        summary = finetune_summary(ft)
        if ft.threshold is not None:  # BatchTopK: kl_finetune re-set it on 256 training contexts
            summary["threshold_before_after"] = list(ft.threshold)
            log(f"{name}: inference threshold re-set after the KL fine-tune, {ft.threshold[0]:.4g} -> "
                f"{ft.threshold[1]:.4g}")
        summary.update({"lr": args.kl_lr, "batch_contexts": args.kl_batch, "mse_coef": args.kl_mse_coef,
                        "contexts_seen": steps * args.kl_batch, "seconds": time.perf_counter() - start})
        sae.metadata.setdefault("training", {})["kl_finetune"] = summary
        log(f"KL fine-tune {name}: {steps} steps x {args.kl_batch} contexts in {summary['seconds']:.1f} s; "
            f"KL {summary['kl_first']:.4f} -> {summary['kl_last']:.4f}, batch FVU {summary['fvu_first']:.4f} -> "
            f"{summary['fvu_last']:.4f}")
    return before


# ---------------------------------------------------------------------- evaluation and packing
def save_and_evaluate(sae, folder: Path, model, held_out, args, metadata: dict | None = None) -> tuple:
    """Save `sae` in fp16 to `folder`, reload that file as users will, and evaluate it on the
    held-out split (fp32 model): evaluate_sae's metrics plus the training metadata."""
    from workbench.sae.evals import evaluate_sae
    from workbench.sae.io import save_sae
    from workbench.sae.loading import load_sae

    save_sae(sae, folder, dtype="float16", metadata=metadata)
    reloaded = load_sae(folder, model, check_tokens=256)
    metrics = evaluate_sae(reloaded, model, held_out, args.eval_tokens, context_size=args.context_size,
                           batch_size=args.eval_batch, ce_tokens=args.ce_tokens)
    metrics["training"] = sae.metadata.get("training", {})
    return metrics, reloaded


def evaluate_and_save(result, model, held_out, args, saes_dir):
    import torch

    from workbench.atomic import write_json
    from workbench.sae.evals import downstream_metrics

    model.hf.float()  # evaluate in fp32: CE differences of a few hundredths of a nat need it
    strict_fp32()
    evals = {}
    for name, sae in result.saes.items():
        folder = saes_dir / name
        metrics, shipped = save_and_evaluate(sae, folder, model, held_out, args,
                                             {"trained_by": "scripts/gpu/train_shipped_saes.py", "gpu": _device_name()})
        ce_tokens = held_out.tokens[:max(1, math.ceil(min(args.ce_tokens, 32_768) / (args.context_size - 1)))]
        with_pos0 = downstream_metrics(shipped, model, ce_tokens, batch_size=args.eval_batch, splice_position0=True)
        metrics["delta_ce_splicing_position0"] = with_pos0["delta_ce"]
        metrics["ce_loss_recovered_splicing_position0"] = with_pos0["ce_loss_recovered"]
        metrics["n_ce_tokens_splicing_position0"] = with_pos0["n_ce_tokens"]
        metrics["file_bytes"] = sum(f.stat().st_size for f in folder.iterdir())
        write_json(folder / "eval.json", metrics)
        evals[name] = metrics
        log(f"evaluated {name}: FVU {metrics['fvu']:.4f}, FVU typical {metrics['fvu_typical']:.4f}, "
            f"dCE {metrics['delta_ce']:+.4f} nats, dead {metrics['dead_frac']:.2%}")
        del shipped
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return evals


def strict_fp32() -> None:
    """Full-precision fp32 matmuls from here on (training ran with TF32). TF32's 10-bit
    mantissa perturbs the clean and the spliced runs differently: on the first shipped SAE
    the CE increase read +0.041 nats with TF32 and +0.037 in strict fp32 (on a CPU)."""
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def evaluate_before_finetune(saes: dict, model, held_out, args, folder: Path) -> dict:
    """The MSE-only SAEs, saved in fp16 (not shipped) and evaluated like the shipped ones, for the
    before/after comparison of the KL fine-tune."""
    strict_fp32()
    evals = {}
    for name, sae in saes.items():
        metrics, _ = save_and_evaluate(sae, folder / name, model, held_out, args)
        metrics["delta_ce_splicing_position0"] = float("nan")
        evals[name] = metrics
        log(f"evaluated {name} before the KL fine-tune: FVU typical {metrics['fvu_typical']:.4f}, "
            f"dCE {metrics['delta_ce']:+.4f} nats")
    if folder.exists():
        shutil.rmtree(folder)  # only the shipped SAEs come back
    return evals


def _device_name() -> str:
    import torch

    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def pack(out: Path, saes_dir: Path) -> list[str]:
    """saes/ -> shipped_saes.tar split into 15 MiB pieces; the unsplit copies are removed."""
    tar_path = out / "shipped_saes.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(saes_dir, arcname="saes")
    data = tar_path.read_bytes()
    pieces = []
    for i in range(0, len(data), PIECE_BYTES):
        piece = out / f"shipped_saes.tar.part{i // PIECE_BYTES:02d}"
        piece.write_bytes(data[i:i + PIECE_BYTES])
        pieces.append(piece.name)
    tar_path.unlink()
    for path in sorted(saes_dir.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    saes_dir.rmdir()
    return pieces


def table(evals: dict, bars: dict) -> str:
    head = (f"{'SAE':<18}{'site':<28}{'d_sae':>6}{'L0':>7}{'FVU':>8}{'FVU typ':>9}{'dCE':>9}{'dCE p0':>9}"
            f"{'CE rec':>8}{'KL':>8}{'dead':>7}{'tokens':>13}")
    lines = [head, "-" * len(head)]
    for name, m in evals.items():
        lines.append(
            f"{name:<18}{m['site']:<28}{m['d_sae']:>6}{m['l0']:>7.1f}{m['fvu']:>8.4f}{m['fvu_typical']:>9.4f}"
            f"{m['delta_ce']:>+9.4f}{m['delta_ce_splicing_position0']:>+9.4f}{m['ce_loss_recovered']:>8.4f}"
            f"{m['kl']:>8.4f}{m['dead_frac']:>7.2%}{m['training'].get('tokens', 0):>13,}")
    lines.append(f"bars for the main SAE: dCE <= {bars['delta_ce']} nats, FVU typical <= {bars['fvu_typical']}, "
                 f"dead <= {bars['dead_frac']:.0%} (reference TopK: +0.042, 0.138, 0%)")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.gguf:
        os.environ["WORKBENCH_SMOLLM2_GGUF"] = str(Path(args.gguf).resolve())
    os.environ["WORKBENCH_KERNELS"] = args.kernels
    import torch

    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    import workbench as wb
    from workbench.atomic import write_json
    from workbench.kernels import dispatch
    from workbench.sae import SaeConfig

    dispatch.reset()  # $WORKBENCH_KERNELS is read once per process: take the value set above

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    capture_dtype = getattr(torch, args.model_dtype) if device.type == "cuda" else torch.float32
    log(f"torch {torch.__version__} on {_device_name()}; kernels={args.kernels}")
    model = wb.load_model(args.model, device=device, dtype=capture_dtype)
    log(f"loaded {model}")

    tokens, held_out = training_tokens(args, model)
    layers = [args.main_layer] + [layer for layer in args.other_layers if layer != args.main_layer]
    sites = [f"blocks.{layer}.hook_resid_post" for layer in layers]
    rows = capture_rows(model, tokens, sites, args, capture_dtype)
    n_rows = next(iter(rows.values())).shape[0]
    log(f"captured {n_rows:,} rows x {len(sites)} sites ({sum(r.numel() * r.element_size() for r in rows.values()) / 2**30:.1f} GiB)")
    if args.max_norm_multiple > 0:
        rows = drop_outlier_rows(rows, args.max_norm_multiple)
    for site, r in rows.items():
        norms = r[:200_000].float().norm(dim=-1)
        log(f"  {site}: mean norm {float(norms.mean()):.1f}, median {float(norms.median()):.1f}, "
            f"max {float(norms.max()):.1f}")

    configs = [SaeConfig(args.arch, model.d_model, args.d_sae_main if i == 0 else args.d_sae_other, k=args.k,
                         site=site) for i, site in enumerate(sites)]
    if args.also_main_arch and args.also_main_arch != args.arch:
        configs.append(SaeConfig(args.also_main_arch, model.d_model, args.d_sae_main, k=args.k, site=sites[0]))
    finetune_seconds = args.kl_finetune_seconds * 1.2 * len(configs) if args.kl_finetune_seconds > 0 else 0.0
    seconds = args.budget_seconds - (time.perf_counter() - T0) - args.eval_reserve_seconds - finetune_seconds
    result = train(configs, rows, args, device, max(seconds, 10.0))
    del rows
    if device.type == "cuda":
        torch.cuda.empty_cache()

    before_finetune = {}
    if args.kl_finetune_seconds > 0 or args.kl_steps:
        before_finetune = kl_finetune_all(result, model, tokens, args, device)
    saes_dir = out / "saes" / args.model
    evals = evaluate_and_save(result, model, held_out, args, saes_dir)
    evals_before = evaluate_before_finetune(before_finetune, model, held_out, args, out / "mse_only")
    bars = {"delta_ce": 0.035, "fvu_typical": 0.125, "dead_frac": 0.01}
    main_name = name_of(configs[0], args)
    main_eval = evals[main_name]
    passed = {key: main_eval[key] <= bar for key, bar in bars.items()}
    summary = {
        "main_sae": main_name,
        "bars": bars,
        "main_passes": passed,
        "evals": {name: {k: v for k, v in m.items() if k != "density_histogram"} for name, m in evals.items()},
        "evals_before_kl_finetune": {name: {k: v for k, v in m.items() if k not in ("density_histogram", "feature_density")}
                                     for name, m in evals_before.items()},
        "training_tokens_unique": int(tokens.numel() - tokens.shape[0]),
        "train_seconds": result.seconds,
        "total_seconds": time.perf_counter() - T0,
        "args": vars(args),
        "device": _device_name(),
        "torch": torch.__version__,
    }
    write_json(out / "summary.json", summary)
    write_json(out / "train_history.json", result.history)
    pieces = pack(out.resolve(), saes_dir.parent.resolve())
    log(f"packed {len(pieces)} pieces: {', '.join(pieces)}; unpack with "
        "`cat shipped_saes.tar.part* > s.tar && tar xf s.tar -C data/`")
    if evals_before:
        print("before the KL fine-tune (MSE training only):", flush=True)
        print(table(evals_before, bars), flush=True)
        print("shipped (after the KL fine-tune):", flush=True)
    print(table(evals, bars), flush=True)
    print(f"main SAE {main_name}: " + ", ".join(f"{k} {'PASS' if v else 'FAIL'}" for k, v in passed.items())
          + f"; total {time.perf_counter() - T0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
