"""Eviction policies (FOCUS, DyLLM) in the decoder: equivalences with dense decoding,
real row savings, no commit of evicted rows, and construction-time errors.

The FOCUS keep rule itself (gate, top-K fallback and its tie rule, adjacency,
nothing-kept, progress fill, unmasked rows, |M| <= K shortcut) is tested on hand-built
delta vectors in tests/test_kernels.py (HAND_CASES, test_select_*); here we test the
mapping between decoder rows and block slots around it.
"""
from __future__ import annotations

import pytest
import torch

from focuslib.decoder import DiffusionDecoder
from focuslib.contract import EvictionPolicy, LayerView, StepView
from focuslib.rows import Rows
from focuslib.testing import TINY_MASK, tiny_model
from focuslib.policies.budget import FixedBudget, FocusBudget
from focuslib.policies.eviction import DyLLM, Focus, RankingEviction, RowScore, Stack
from focuslib.policies.unmasking import LowConfidence, Threshold

PROMPTS = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12, 13, 14, 15, 16, 17]]
CASES = [("llada", "none", 8), ("llada", "dual", 8), ("dream", "prefix", 8), ("sdar", "block", None),
         ("sdar", "delayed", None)]



def _generate(family: str, cache: str, block: int | None, eviction=None, budget=None, n_layers: int = 4,
              trace: bool = False, unmasking=None, steps: int | None = None):
    model = tiny_model(family, n_layers=n_layers)
    decoder = DiffusionDecoder(model, unmasking or Threshold(0.9), eviction, budget, cache=cache, block_size=block)
    return decoder.generate(PROMPTS, gen_length=16, steps=steps, stop_at_eos=False, trace=trace)


@pytest.mark.parametrize("family,cache,block", CASES)
def test_focus_with_large_budget_equals_dense(family, cache, block):
    dense = _generate(family, cache, block)
    focus = _generate(family, cache, block, Focus(), FixedBudget(count=1000))
    assert torch.equal(focus.tokens, dense.tokens)
    assert focus.stats.row_layers == dense.stats.row_layers


@pytest.mark.parametrize("family,cache,block", CASES)
def test_dyllm_everything_salient_equals_dense(family, cache, block):
    dense = _generate(family, cache, block)
    dyllm = _generate(family, cache, block, DyLLM(tau=2.0))
    assert torch.equal(dyllm.tokens, dense.tokens)
    assert dyllm.stats.row_layers <= dense.stats.row_layers


def test_dyllm_saves_row_layers_and_decodes_everything():
    dense = _generate("llada", "none", 8)
    dyllm = _generate("llada", "none", 8, DyLLM())
    assert dyllm.stats.row_layers < 0.9 * dense.stats.row_layers
    assert not (dyllm.tokens == TINY_MASK).any()


@pytest.mark.parametrize("family,cache,block", [("sdar", "block", None), ("llada", "dual", 8)])
def test_focus_evicts_inside_layer_1_by_default(family, cache, block):
    """The published eviction point: after layer 1's Q/K/V, so evicted rows skip layer 1's attention and FFN too."""
    out = _generate(family, cache, block, Focus(layer=1), FixedBudget(count=1), trace=True)
    per_layer = out.stats.row_layers_per_layer
    assert per_layer[1] == per_layer[2] == per_layer[3] < per_layer[0]
    assert sum(per_layer) == out.stats.row_layers
    trace = out.trace
    assert (~trace["kept"]).any()
    assert not (trace["committed"] & ~trace["kept"]).any()  # evicted rows are never committed that step
    assert not (out.tokens == TINY_MASK).any()


def test_focus_eviction_point_output_runs_layer_1_on_every_row():
    out = _generate("sdar", "block", None, Focus(layer=1, eviction_point="output"), FixedBudget(count=1))
    per_layer = out.stats.row_layers_per_layer
    assert per_layer[0] == per_layer[1] > per_layer[2] == per_layer[3]


def test_focus_eviction_layer_is_a_parameter():
    out = _generate("sdar", "block", None, Focus(layer=2), FixedBudget(count=1))
    per_layer = out.stats.row_layers_per_layer
    assert per_layer[0] == per_layer[1] > per_layer[2] == per_layer[3]


def test_focus_never_stalls_with_schedule_and_tiny_budget():
    """Nothing-kept and adjacency rules keep a committable row at every step (no 'stuck' error)."""
    out = _generate("dream", "none", 8, Focus(), FixedBudget(count=1), unmasking=LowConfidence(), steps=8)
    assert not (out.tokens == TINY_MASK).any()


def test_focus_and_dyllm_stack():
    for eviction in ([Focus(), DyLLM()], Stack([Focus(), DyLLM()])):
        out = _generate("sdar", "delayed", None, eviction, FocusBudget(1.5))
        assert not (out.tokens == TINY_MASK).any()
    dense = _generate("sdar", "delayed", None)
    exact = _generate("sdar", "delayed", None, [Focus(), DyLLM(tau=2.0)], FixedBudget(count=1000))
    assert torch.equal(exact.tokens, dense.tokens)


class _GivenScore(RowScore):
    """A score handed in by the test: value per absolute position."""

    def __init__(self, by_position: torch.Tensor) -> None:
        self.by_position = by_position

    def score(self, view, state):
        return self.by_position.gather(1, view.rows.pos)


def _block_view(score_by_position: torch.Tensor) -> tuple[RankingEviction, LayerView]:
    """One sequence, block 1 = positions 4..7 with position 5 decoded, every position 0..11 a row."""
    tokens = torch.full((1, 12), TINY_MASK)
    tokens[0, :4] = torch.tensor([3, 4, 5, 6])
    tokens[0, 5] = 7
    pos = torch.arange(12)
    masked = (tokens == TINY_MASK) & (pos >= 4) & (pos < 8)
    step = StepView(step=0, tokens=tokens, mask_id=TINY_MASK, prompt_len=torch.tensor([4]),
                    block_start=torch.tensor([4]), span=4, step_in_block=torch.tensor([0]),
                    masked_at_block_start=torch.tensor([3]), n_masked=torch.tensor([3]), active=torch.tensor([True]))
    rows = Rows.from_mask(torch.ones(1, 12, dtype=torch.bool))
    view = LayerView(layer=1, rows=rows, q=None, k=None, masked=masked, step=step)
    return RankingEviction(_GivenScore(score_by_position)), view


def test_ranking_keep_maps_block_slots_to_rows():
    """Rows outside the block and unmasked rows are kept; the rule runs in block-position order."""
    score = torch.zeros(1, 12)
    score[0, 7] = 1.0  # masked block rows 4, 6, 7: only 7 stands out
    policy, view = _block_view(score)
    keep = policy._select(view, policy.begin(1, 12, torch.device("cpu")), FixedBudget(count=1))
    # keep 7 (top), 6 (left neighbour), 4 (progress: never computed in this block), 5 (unmasked)
    assert keep.tolist() == [[True] * 12]
    score = torch.zeros(1, 12)
    score[0, 4] = 1.0  # top row is the first masked one: 6 and 7 are evicted
    policy, view = _block_view(score)
    keep = policy._select(view, policy.begin(1, 12, torch.device("cpu")), FixedBudget(count=1))
    assert keep[0].tolist() == [True] * 6 + [False, False] + [True] * 4


def test_progress_mark_carries_over_steps_of_a_block():
    """Under the mark rule a row computed at an earlier step of the block is not forced back in; under fill it is."""
    score = torch.zeros(1, 12)
    score[0, 7] = 1.0
    for rule, kept_4 in (("mark", False), ("fill", True)):
        policy, view = _block_view(score)
        policy.progress_rule = rule
        state = policy.begin(1, 12, torch.device("cpu"))
        state.mark[:] = 3  # slots 0..3 (positions 4..7) were computed at an earlier step
        view = LayerView(layer=1, rows=view.rows, q=None, k=None, masked=view.masked,
                         step=StepView(**{**view.step.__dict__, "step_in_block": torch.tensor([1])}))
        keep = policy._select(view, state, FixedBudget(count=1))
        assert keep[0, 4].item() is kept_4 and keep[0, 6].item() and keep[0, 7].item()


def test_focus_rejects_bad_arguments():
    with pytest.raises(ValueError, match="layer"):
        Focus(layer=0)
    with pytest.raises(ValueError, match="window"):
        Focus(window=2)


def test_focus_layer_beyond_model_is_rejected_at_construction():
    with pytest.raises(ValueError, match="layers"):
        DiffusionDecoder(tiny_model("sdar"), Threshold(0.9), Focus(layer=2), FocusBudget())  # 2 layers


def test_focus_without_budget_is_rejected_at_construction():
    with pytest.raises(ValueError, match="budget"):
        DiffusionDecoder(tiny_model("sdar"), Threshold(0.9), Focus())
    with pytest.raises(ValueError, match="budget"):
        DiffusionDecoder(tiny_model("sdar"), Threshold(0.9), Stack([Focus(), DyLLM()]))


def test_two_layer_runners_are_rejected():
    with pytest.raises(ValueError, match="one"):
        DiffusionDecoder(tiny_model("sdar"), Threshold(0.9), [DyLLM(), DyLLM()])


@pytest.mark.parametrize("kwargs", [dict(tau=0), dict(dense_steps=-1), dict(prompt_refresh=1.5)])
def test_dyllm_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        DyLLM(**kwargs)


def test_dyllm_prompt_refresh_recomputes_prompt_rows():
    plain = _generate("llada", "none", 8, DyLLM())
    refresh = _generate("llada", "none", 8, DyLLM(prompt_refresh=1))
    assert refresh.stats.row_layers > plain.stats.row_layers


def test_eviction_configs_instantiate_to_policies():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    built = {name: instantiate(OmegaConf.load(f"conf/eviction/{name}.yaml"))
             for name in ("focus", "dyllm", "focus_dyllm")}
    assert isinstance(built["focus"], Focus) and built["focus"].layer == 1
    assert isinstance(built["dyllm"], DyLLM) and built["dyllm"].tau == 0.99
    stack = built["focus_dyllm"]
    assert [type(p) for p in stack] == [Focus, DyLLM] and stack.uses_budget
    assert not OmegaConf.load("conf/eviction/none.yaml")  # empty: no eviction
    DiffusionDecoder(tiny_model("sdar", n_layers=3), Threshold(0.9), stack, FocusBudget())
