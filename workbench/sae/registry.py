"""Architecture name -> class, and `create_sae(cfg)` to build a fresh dictionary."""

from __future__ import annotations

import torch

from workbench.errors import UnknownNameError
from workbench.sae.abstopk import AbsTopKSAE
from workbench.sae.base import SparseAutoencoder
from workbench.sae.batchtopk import BatchTopKSAE
from workbench.sae.config import ARCHITECTURE_NAMES, SaeConfig
from workbench.sae.hierarchical_topk import HierarchicalTopKSAE
from workbench.sae.jumprelu import JumpReluSAE
from workbench.sae.matryoshka import MatryoshkaSAE
from workbench.sae.mp import MatchingPursuitSAE
from workbench.sae.relu import ReluSAE
from workbench.sae.topk import TopKSAE

ARCHITECTURES: dict[str, type[SparseAutoencoder]] = {
    cls.architecture: cls
    for cls in (
        ReluSAE,
        TopKSAE,
        BatchTopKSAE,
        JumpReluSAE,
        MatryoshkaSAE,
        AbsTopKSAE,
        HierarchicalTopKSAE,
        MatchingPursuitSAE,
    )
}
assert tuple(ARCHITECTURES) == ARCHITECTURE_NAMES, "registry and config disagree on the architectures"


def sae_class(architecture: str) -> type[SparseAutoencoder]:
    """The class implementing `architecture` (UnknownNameError lists the known ones)."""
    try:
        return ARCHITECTURES[architecture]
    except KeyError:
        raise UnknownNameError("SAE architecture", architecture, list(ARCHITECTURES)) from None


def create_sae(cfg: SaeConfig, *, device: torch.device | str | None = None, seed: int | None = 0) -> SparseAutoencoder:
    """A freshly initialised dictionary for `cfg` (seeded: same seed, same weights)."""
    return sae_class(cfg.architecture)(cfg, device=device, seed=seed)
