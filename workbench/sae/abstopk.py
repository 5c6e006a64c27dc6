"""AbsTopK SAE (*AbsTopK: Rethinking Sparse Autoencoders For Bidirectional Features*).

    pre   = (x - b_dec) @ W_enc + b_enc
    z     = pre at the k entries of largest |pre|, sign kept; 0 elsewhere
    x_hat = z @ W_dec + b_dec
    loss  = mean_n ||x - x_hat||^2 + AuxK (dead latents ranked by |pre|)

A single latent can then encode both poles of a concept (male/female, positive/negative
sentiment) with the sign of its code, so codes can be negative. L0 is exactly k. SAELens
has no AbsTopK class: the file keeps architecture "abstopk" so SAELens refuses it instead
of loading it as a ReLU TopK (see io.py).
"""

from __future__ import annotations

from workbench.sae.topk import TopKSAE


class AbsTopKSAE(TopKSAE):
    """TopK by magnitude with signed codes (exactly k non-zero per token)."""

    architecture = "abstopk"
    absolute = True
