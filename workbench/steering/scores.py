"""Input and output scores of SAE features (Arad, Mueller, Belinkov, "SAEs Are Good for
Steering -- If You Select the Right Features", EMNLP 2025).

Both start from a feature's logit-lens tokens: its decoder row through the final norm and
the unembedding, top k = 20 tokens by probability (`logit_lens_tokens`).

Output score (does adding the feature make the model say its tokens?): on the neutral
prompt "From my experience,", add amp (10) x the largest latent activation at the last
position to the feature's code at the last position, decode and keep the SAE error (so the
residual there becomes x + amp * max_act * W_dec[f]), run the rest of the model, and read
the next-token distribution p:

    output_score = (1 - best_rank / |V|) * max_{t in lens tokens} p(t)

where best_rank is the rank of the best-placed lens token (0 = the most likely token).
It is computed for many features at once: each batch row is the same prompt with a
different feature amplified (one forward per batch), which makes all 8192 features of a
SmolLM2 SAE a matter of a minute or two on CPU.

Input score (is the feature about what it reads rather than what it writes?): the share
of the feature's top activating contexts (up to 100) whose max-activating token is one of
its logit-lens tokens; features with fewer than 10 activating contexts get NaN.
High scores on both rarely co-occur; steering works best with high-output-score features.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from workbench.errors import WorkbenchError

NEUTRAL_PROMPT = "From my experience,"
AMP_FACTOR = 10.0
LENS_K = 20
TOP_EXAMPLES = 100
MIN_EXAMPLES = 10


def logit_lens_logits(model, sae, features: torch.Tensor) -> torch.Tensor:
    """[n, V] logits of the decoder rows of `features` through the final norm and unembedding."""
    rows = sae.W_dec[features.to(sae.W_dec.device)].detach()
    return model.final_logits(rows).float()


def logit_lens_tokens(model, sae, *, k: int = LENS_K, batch_size: int = 512, progress: bool = False) -> torch.Tensor:
    """[d_sae, k] token ids: each feature's top-k logit-lens tokens (highest first), on CPU."""
    from tqdm.auto import tqdm

    _check_sae_fits(model, sae)
    if not 1 <= k <= model.vocab_size:
        raise WorkbenchError(f"k must be in 1..{model.vocab_size}, got {k}")
    d_sae = sae.cfg.d_sae
    out = torch.empty(d_sae, k, dtype=torch.long)
    for start in tqdm(range(0, d_sae, batch_size), desc="logit lens", disable=not progress):
        index = torch.arange(start, min(start + batch_size, d_sae))
        out[index] = logit_lens_logits(model, sae, index).topk(k, dim=-1).indices.cpu()
    return out


def _check_sae_fits(model, sae) -> None:
    site = sae.cfg.output_site
    model.check_site(site)
    if model.site_width(site) != sae.W_dec.shape[1]:
        raise WorkbenchError(f"the SAE writes width {sae.W_dec.shape[1]} but {site} of {model.name} has width "
                             f"{model.site_width(site)}")
    if not model.is_causal:
        raise WorkbenchError(f"{model.name} is not a causal language model; output scores need next-token logits")


@dataclass
class OutputScores:
    """Output scores of some features.

    features: [n] indices. scores: [n] output scores in [0, 1].
    best_rank: [n] rank of the best-placed logit-lens token after amplification (0 = top).
    top_prob: [n] its probability. max_act: the largest latent at the prompt's last token.
    """

    features: torch.Tensor
    scores: torch.Tensor
    best_rank: torch.Tensor
    top_prob: torch.Tensor
    max_act: float
    prompt: str
    amp_factor: float


def output_scores(
    model,
    sae,
    *,
    features: torch.Tensor | list[int] | None = None,
    prompt: str = NEUTRAL_PROMPT,
    amp_factor: float = AMP_FACTOR,
    k: int = LENS_K,
    batch_size: int = 64,
    lens: torch.Tensor | None = None,
    progress: bool = False,
) -> OutputScores:
    """Output scores of `features` (default: all), `batch_size` features per forward.

    lens: precomputed `logit_lens_tokens` [d_sae, >= k] (computed when None).
    """
    from tqdm.auto import tqdm

    _check_sae_fits(model, sae)
    d_sae = sae.cfg.d_sae
    features = torch.arange(d_sae) if features is None else torch.as_tensor(features, dtype=torch.long).reshape(-1)
    if features.numel() == 0:
        raise WorkbenchError("no features to score")
    if int(features.min()) < 0 or int(features.max()) >= d_sae:
        raise WorkbenchError(f"feature indices must be in 0..{d_sae - 1}")
    if batch_size < 1:
        raise WorkbenchError(f"batch_size must be >= 1, got {batch_size}")
    if lens is None:
        lens = logit_lens_tokens(model, sae, k=k)
    lens = lens[:, :k]
    site = sae.cfg.output_site
    ids = torch.tensor([model.tokenizer(prompt)["input_ids"]], dtype=torch.long)
    if ids.shape[1] == 0:
        raise WorkbenchError("the neutral prompt is empty")
    with torch.no_grad():
        x_last = model.read_sites(ids, torch.ones_like(ids), [sae.cfg.site])[sae.cfg.site][0, -1]
        max_act = float(sae.encode(x_last.to(sae.W_dec.device, sae.W_dec.dtype)).max())
    if not max_act > 0:
        raise WorkbenchError(f"no latent is active at the last token of {prompt!r}; pick another neutral prompt")
    scores, ranks, probs = [], [], []
    vocab = model.vocab_size
    for start in tqdm(range(0, features.numel(), batch_size), desc="output scores", disable=not progress):
        chunk = features[start:start + batch_size]
        deltas = (amp_factor * max_act) * sae.W_dec[chunk.to(sae.W_dec.device)].detach().float()  # [b, d]

        def amplify(x: torch.Tensor, deltas: torch.Tensor = deltas) -> torch.Tensor:
            x = x.clone()
            x[:, -1] = (x[:, -1].float() + deltas.to(x.device)).to(x.dtype)
            return x

        batch = ids.repeat(chunk.numel(), 1)
        logits = model.forward_with_edits(batch, torch.ones_like(batch), {site: amplify}).logits[:, -1].float()
        p = torch.softmax(logits, dim=-1)
        lens_probs = p.gather(1, lens[chunk].to(p.device))
        top = lens_probs.max(dim=1).values
        rank = (p > top[:, None]).sum(dim=1)
        scores.append(((1 - rank.float() / vocab) * top).cpu())
        ranks.append(rank.cpu())
        probs.append(top.cpu())
    return OutputScores(features=features, scores=torch.cat(scores), best_rank=torch.cat(ranks),
                        top_prob=torch.cat(probs), max_act=max_act, prompt=prompt, amp_factor=float(amp_factor))


@dataclass
class TopExamples:
    """Each feature's top activating contexts: values [d_sae, n] (descending; -inf = none)
    and the id of the max-activating token of each [d_sae, n]."""

    values: torch.Tensor
    tokens: torch.Tensor
    n_contexts: int


def top_examples(model, sae, corpus: str = "default", *, max_tokens: int = 65_536, context_size: int = 128,
                 n_examples: int = TOP_EXAMPLES, batch_size: int = 8, split: str = "all",
                 progress: bool = False) -> TopExamples:
    """Scan a corpus and keep, per feature, the n contexts where it peaks highest (position 0 skipped)."""
    from tqdm.auto import tqdm

    from workbench.corpora import load_corpus, pack_corpus

    site = sae.cfg.site
    model.check_site(site)
    if model.site_width(site) != sae.cfg.d_in:
        raise WorkbenchError(f"the SAE reads width {sae.cfg.d_in} but {site} of {model.name} has width "
                             f"{model.site_width(site)}")
    packed = pack_corpus(load_corpus(corpus), model.tokenizer, context_size, split=split, max_tokens=max_tokens)
    d_sae = sae.cfg.d_sae
    values = torch.full((d_sae, n_examples), float("-inf"))
    tokens = torch.full((d_sae, n_examples), -1, dtype=torch.long)
    for start in tqdm(range(0, len(packed), batch_size), desc="top examples", disable=not progress):
        ids = packed.tokens[start:start + batch_size]
        with torch.no_grad():
            x = model.read_sites(ids, torch.ones_like(ids), [site])[site][:, 1:]  # drop the attention sink
            codes = sae.encode(x.to(sae.W_dec.device, sae.W_dec.dtype)).float()  # [b, T-1, d_sae]
            peak, where = codes.max(dim=1)  # [b, d_sae]
        peak_tokens = ids[:, 1:].gather(1, where.cpu())  # [b, d_sae]
        all_values = torch.cat([values, peak.cpu().T], dim=1)
        all_tokens = torch.cat([tokens, peak_tokens.T], dim=1)
        values, order = all_values.topk(n_examples, dim=1)
        tokens = all_tokens.gather(1, order)
    return TopExamples(values=values, tokens=tokens, n_contexts=len(packed))


def top_examples_from_store(store, n_examples: int = TOP_EXAMPLES) -> TopExamples:
    """TopExamples from a harvested feature store (`workbench.features.store.FeatureStore`):
    each latent's stored "top" contexts, their peak values and peak token ids."""
    d_sae = int(store.d_sae)
    values = torch.full((d_sae, n_examples), float("-inf"))
    tokens = torch.full((d_sae, n_examples), -1, dtype=torch.long)
    for index in range(d_sae):
        top = store.contexts(index, kind="top")[:n_examples]
        for slot, example in enumerate(top):
            values[index, slot] = example.value
            tokens[index, slot] = example.token_ids[example.peak]
    return TopExamples(values=values, tokens=tokens, n_contexts=-1)


def input_scores_from_examples(examples: TopExamples, lens: torch.Tensor, *,
                               min_examples: int = MIN_EXAMPLES) -> torch.Tensor:
    """[d_sae] share of activating top examples whose max token is a logit-lens token (NaN below min_examples)."""
    active = examples.values > 0
    hits = (examples.tokens[:, :, None] == lens[:, None, :]).any(-1) & active
    count = active.sum(1)
    scores = hits.sum(1).float() / count.clamp_min(1).float()
    scores[count < min_examples] = float("nan")
    return scores


def input_scores(model, sae, corpus: str = "default", *, max_tokens: int = 65_536, n_examples: int = TOP_EXAMPLES,
                 min_examples: int = MIN_EXAMPLES, k: int = LENS_K, lens: torch.Tensor | None = None,
                 batch_size: int = 8, progress: bool = False) -> torch.Tensor:
    """[d_sae] input scores over the top contexts of `max_tokens` tokens of `corpus`."""
    if lens is None:
        lens = logit_lens_tokens(model, sae, k=k)
    examples = top_examples(model, sae, corpus, max_tokens=max_tokens, n_examples=n_examples,
                            batch_size=batch_size, progress=progress)
    return input_scores_from_examples(examples, lens[:, :k], min_examples=min_examples)
