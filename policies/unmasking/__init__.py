"""Unmasking policies: which masked rows of the current block get their token at a step.

Config names (conf/unmasking/<name>.yaml) map to classes through `POLICIES`; Hydra finds
them by `_target_: focuslib.policies.unmasking.<Class>`.
"""

from .adaptive import EBSampler, Factor, Threshold
from .base import Commit, Proposal, StepContext, UnmaskingPolicy, propose
from .scheduled import Entropy, LowConfidence, MaskGITPlus, Origin, RandomRemask, TopKMargin

POLICIES: dict[str, type[UnmaskingPolicy]] = {
    "low_confidence": LowConfidence,
    "random": RandomRemask,
    "maskgit_plus": MaskGITPlus,
    "topk_margin": TopKMargin,
    "entropy": Entropy,
    "origin": Origin,
    "threshold": Threshold,
    "factor": Factor,
    "eb": EBSampler,
}

__all__ = [
    "POLICIES",
    "Commit",
    "EBSampler",
    "Entropy",
    "Factor",
    "LowConfidence",
    "MaskGITPlus",
    "Origin",
    "Proposal",
    "RandomRemask",
    "StepContext",
    "Threshold",
    "TopKMargin",
    "UnmaskingPolicy",
    "propose",
]
