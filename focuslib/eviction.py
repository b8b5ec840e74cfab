"""How a stack of eviction policies is applied to the rows of a step (the policy contract is `focuslib.contract`).

All policies of a stack see the same rows at each eviction point and their keep masks
are ANDed; rows dropped at one point are gone for every policy afterwards. The decoder
enforces three invariants whatever a policy returns: rows outside the current block and
padding rows are kept, nothing is evicted at a block's last scheduled step (so a schedule
finishes its blocks on time), and a keep mask has the rows' shape [B, L] and dtype bool.

Shapes: B batch, L rows, T positions.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Sequence

import torch
from torch import Tensor

from focuslib.contract import BudgetPolicy, CommitView, EvictionPolicy, LayerRunner, LayerView
from focuslib.layer import DenseRunner

if TYPE_CHECKING:
    from focuslib.model import Transformer


def as_policy_list(eviction: Any) -> list[Any]:
    """The policies `eviction` names, in order: None -> []; one policy -> [policy]; lists, tuples,
    stacks and mappings (their values, as Hydra builds a dict of policies) -> their policies, flattened.

    The one normaliser for the decoder and the config checks, so a config that validates also decodes.
    """
    if eviction is None:
        return []
    if isinstance(eviction, (EvictionPolicy, str, bytes)):
        return [eviction]
    if isinstance(eviction, Mapping):
        eviction = list(eviction.values())
    if isinstance(eviction, Iterable):
        return [p for item in eviction for p in as_policy_list(item)]
    return [eviction]


def _overrides(policy: EvictionPolicy, name: str) -> bool:
    return getattr(type(policy), name) is not getattr(EvictionPolicy, name)


@dataclass
class StackState:
    """Per-call state of a stack: each policy's own state, and the layer runner of this call."""

    states: list[Any]
    runner: LayerRunner


class EvictionStack:
    """The eviction policies of one decoder, applied in order, with their budget."""

    def __init__(self, policies: Sequence[EvictionPolicy], budget: BudgetPolicy | None) -> None:
        self.policies = list(policies)
        self.budget = budget
        self.evicted_keys = "stale" if any(p.evicted_keys == "stale" for p in self.policies) else "hidden"
        self.needs_dense_commits = any(p.needs_dense_commits for p in self.policies)
        self._runner_owner = next((p for p in self.policies if _overrides(p, "runner")), None)

    @classmethod
    def build(cls, eviction: Any, budget: Any, model: "Transformer") -> "EvictionStack":
        """Check the policies against the model and each other; errors here fail before any decoding."""
        policies = as_policy_list(eviction)
        for p in policies:
            if not isinstance(p, EvictionPolicy):
                raise TypeError(f"{p!r} is not an eviction policy: subclass focuslib.contract.EvictionPolicy "
                                "(see docs/policies.md)")
            p.check(model.cfg)
        runners = [type(p).__name__ for p in policies if _overrides(p, "runner")]
        if len(runners) > 1:
            raise ValueError(f"eviction policies {runners} each run the layers themselves; a stack may hold one")
        ranking = [type(p).__name__ for p in policies if p.uses_budget]
        if ranking and budget is None:
            raise ValueError(f"eviction policy {ranking} ranks rows and needs a budget policy (e.g. FocusBudget)")
        if budget is not None and not callable(budget):
            raise TypeError(f"budget {budget!r} is not a budget policy (a callable StepView -> K [B])")
        return cls(policies, budget)

    def begin(self, batch: int, positions: int, device: torch.device) -> StackState:
        """Fresh per-call state of every policy (so concurrent generate calls never share any)."""
        states = [p.begin(batch, positions, device) for p in self.policies]
        runner = None
        if self._runner_owner is not None:
            runner = self._runner_owner.runner(states[self.policies.index(self._runner_owner)])
        return StackState(states=states, runner=runner or DenseRunner())

    def at_qkv(self, view: LayerView, st: StackState) -> Tensor | None:
        return self._keep(view, st, "at_qkv")

    def after_layer(self, view: LayerView, st: StackState) -> Tensor | None:
        return self._keep(view, st, "after_layer")

    def _keep(self, view: LayerView, st: StackState, hook: str) -> Tensor | None:
        """AND of the policies' keep masks [B, L] at one eviction point (None: nobody drops a row)."""
        keep = None
        for p, state in zip(self.policies, st.states):
            mask = getattr(p, hook)(view, state, self.budget if p.uses_budget else None)
            if mask is None:
                continue
            if mask.shape != view.rows.pos.shape or mask.dtype != torch.bool:
                raise ValueError(f"{type(p).__name__}.{hook} returned a keep mask of shape {tuple(mask.shape)} and "
                                 f"dtype {mask.dtype}; expected shape {tuple(view.rows.pos.shape)} [B, L] and torch.bool")
            keep = mask if keep is None else keep & mask
        if keep is None:
            return None
        keep = keep | ~view.step.in_block(view.rows.pos) | ~view.rows.valid
        if view.step.last_budgeted is not None:  # a schedule's last step commits the whole block
            keep = keep | view.step.last_budgeted[:, None]
        return keep

    def after_step(self, commit: CommitView, st: StackState) -> None:
        for p, state in zip(self.policies, st.states):
            p.after_step(commit, state)

    def see_dense_commits(self, committed: Tensor, st: StackState) -> None:
        for p, state in zip(self.policies, st.states):
            if p.needs_dense_commits:
                p.see_dense_commits(state, committed)

    def trace_columns(self, st: StackState) -> dict[str, Tensor]:
        out: dict[str, Tensor] = {}
        for p, state in zip(self.policies, st.states):
            out.update(p.trace_columns(state))
        return out

    def __bool__(self) -> bool:
        return bool(self.policies)


__all__ = ["EvictionStack", "StackState", "as_policy_list"]
