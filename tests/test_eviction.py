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
from focuslib.eviction import LayerRows
from focuslib.rows import Rows
from focuslib.testing import TINY_MASK, tiny_model
from policies.budget import FixedBudget, FocusBudget
from policies.eviction import DyLLM, Focus, Stack
from policies.unmasking import LowConfidence, Threshold

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
def test_focus_small_budget_drops_rows_after_eviction_layer(family, cache, block):
    out = _generate(family, cache, block, Focus(layer=1), FixedBudget(count=1), trace=True)
    per_layer = out.stats.row_layers_per_layer
    assert per_layer[0] == per_layer[1]  # layers 0..layer run on every row
    assert per_layer[2] == per_layer[3] < per_layer[1]  # later layers really run fewer rows
    assert sum(per_layer) == out.stats.row_layers
    trace = out.trace
    assert (~trace["kept"]).any()
    assert not (trace["committed"] & ~trace["kept"]).any()  # evicted rows are never committed that step
    assert not (out.tokens == TINY_MASK).any()


def test_focus_eviction_layer_is_a_parameter():
    out = _generate("sdar", "block", None, Focus(layer=2), FixedBudget(count=1))
    per_layer = out.stats.row_layers_per_layer
    assert per_layer[0] == per_layer[1] == per_layer[2] > per_layer[3]


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


def test_focus_keep_maps_block_slots_to_rows():
    """Rows outside the block and unmasked rows are kept; the rule runs in block-position order."""
    model = tiny_model("sdar")
    decoder = DiffusionDecoder(model, Threshold(0.9))
    state = decoder._init_state([[3, 4, 5, 6]], gen_length=8)  # block 1 = positions 4..7, block 2 = 8..11
    state.current_block[:] = 1
    state.x[0, 5] = 7  # position 5 already decoded
    rows = Rows.from_mask(torch.tensor([[True] * 12]))  # every position is a row
    masked = (state.x == TINY_MASK) & (state.block_id == 1)
    info = LayerRows(layer=1, rows=rows, q=None, k=None, masked=masked, block_start=torch.tensor([4]), state=state)
    delta = torch.zeros(1, 12)
    delta[0, 7] = 1.0  # masked block rows 4, 6, 7: only 7 stands out
    keep = Focus._keep_rows(info, delta, torch.tensor([1]))
    # keep 7 (top), 6 (left neighbour), 4..7 (progress fill from 4), 5 (unmasked); rows outside the block kept
    assert keep.tolist() == [[True] * 12]
    delta = torch.zeros(1, 12)
    delta[0, 4] = 1.0  # top row is the first masked one: 6 and 7 are evicted
    keep = Focus._keep_rows(info, delta, torch.tensor([1]))
    assert keep[0].tolist() == [True] * 6 + [False, False] + [True] * 4


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
    assert [type(p) for p in stack] == [Focus, DyLLM] and stack.needs_budget
    assert not OmegaConf.load("conf/eviction/none.yaml")  # empty: no eviction
    DiffusionDecoder(tiny_model("sdar", n_layers=3), Threshold(0.9), stack, FocusBudget())
