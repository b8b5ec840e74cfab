"""The tensor-only block scheduler (focuslib.schedule) on hand-checkable cases."""
from __future__ import annotations

import torch

from focuslib.schedule import NOT_COMMITTED, DecodeState

M = 99  # mask id


def test_block_grid_blocks_and_commits():
    """Block diffusion, blocks of 4 on the absolute grid: prompts of 3 and 5 tokens, 5 generated each."""
    s = DecodeState.start([[1, 2, 3], [1, 2, 3, 4, 5]], 5, mask_id=M, pad_id=0, block_size=4,
                          block_diffusion=True)
    assert s.x.tolist() == [[1, 2, 3, M, M, M, M, M, 0, 0], [1, 2, 3, 4, 5, M, M, M, M, M]]
    assert s.current_block.tolist() == [0, 1]  # the first block holding a mask
    assert s.masked_at_block_start.tolist() == [1, 3]
    assert s.block_start().tolist() == [0, 4]
    slots = s.block_start()[:, None] + torch.arange(4)  # [B, S]
    chosen = torch.tensor([[False, False, False, True], [False, True, False, False]])
    s.commit(slots, chosen, torch.full((2, 4), 7), step=0)
    assert s.x[0, 3] == 7 and s.x[1, 5] == 7 and s.committed_step[0, 3] == 0 and s.committed_step[1, 6] == NOT_COMMITTED
    assert s.current_block.tolist() == [1, 1] and s.block_changed.tolist() == [True, False]
    assert s.step_in_block.tolist() == [0, 1]
    assert s.masked_at_block_start.tolist() == [4, 3]  # sequence 0 entered block 1 with 4 masks
    assert not s.done.any()


def test_semi_autoregressive_blocks_start_at_each_prompt_end_and_eos_finishes():
    s = DecodeState.start([[1], [1, 2, 3]], 4, mask_id=M, pad_id=0, block_size=2, block_diffusion=False)
    assert s.block_id[0].tolist()[:5] == [-1, 0, 0, 1, 1] and s.block_start().tolist() == [1, 3]
    slots = s.block_start()[:, None] + torch.arange(2)
    eos = 5
    s.commit(slots, torch.tensor([[True, False], [True, True]]), torch.tensor([[eos, 8], [6, 6]]), step=0,
             eos_ids=(eos,))
    # sequence 0: EOS with nothing masked before it -> done; sequence 1: masks left, no EOS -> not done
    assert s.done.tolist() == [True, False]
    assert s.current_block.tolist() == [0, 1]


def test_padding_may_not_be_the_mask_id():
    """The scheduler reads "masked" as x == mask_id, so padding after a short prompt must be another id."""
    import pytest
    with pytest.raises(ValueError, match="pad_id must differ from mask_id"):
        DecodeState.start([[1], [1, 2]], 3, mask_id=M, pad_id=M, block_size=2, block_diffusion=True)


def test_a_model_whose_pad_id_is_its_mask_id_pads_with_another_id():
    from focuslib import DiffusionDecoder
    from focuslib.policies.unmasking import LowConfidence
    from focuslib.testing import tiny_model

    model = tiny_model("sdar")
    clash = tiny_model("sdar", pad_id=model.cfg.mask_id)
    clash.load_state_dict(model.state_dict())
    ref, out = (DiffusionDecoder(m, LowConfidence()).generate([[3, 4, 5], [6]], gen_length=8, steps=8)
                for m in (model, clash))
    assert out.sequences == ref.sequences and ref.stats.steps == out.stats.steps


def test_committed_step_records_each_commit_at_its_step_whatever_the_slot_width():
    """committed_step is rebuilt from the commits' slots: two steps, the second through fewer slots than a block."""
    s = DecodeState.start([[1, 2, 3, 4]], 4, mask_id=M, pad_id=0, block_size=4, block_diffusion=True)
    s.commit(torch.tensor([[4, 5, 6, 7]]), torch.tensor([[False, True, False, False]]), torch.full((1, 4), 7), step=0)
    s.commit(torch.tensor([[6, 7]]), torch.tensor([[False, True]]), torch.full((1, 2), 8), step=1)
    assert s.committed_step.tolist() == [[NOT_COMMITTED] * 5 + [0, NOT_COMMITTED, 1]]
    assert s.x.tolist() == [[1, 2, 3, 4, M, 7, M, 8]]
    assert s.step_in_block.tolist() == [2] and s.masked_at_block_start.tolist() == [4]


def test_hold_keeps_the_blocks_and_moves_the_step_counters_by_one():
    """A write that finishes no block, then hold: the same blocks, no block started, every step counter
    one on, as advance gives on the same write."""
    def written():
        s = DecodeState.start([[1, 2, 3], [1, 2, 3, 4, 5]], 5, mask_id=M, pad_id=0, block_size=4,
                              block_diffusion=True)
        # current blocks: 0 (one mask, position 3) and 1 (positions 5-7); sequence 1 commits position 5
        s.write(torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7]]), torch.tensor([[False] * 4, [False, True, False, False]]),
                torch.full((2, 4), 7), step=0)
        return s

    held, advanced = written(), written()
    held.hold()
    advanced.advance()
    assert held.x.tolist() == advanced.x.tolist() and held.x[1, 5] == 7
    assert held.current_block.tolist() == [0, 1] == advanced.current_block.tolist()
    assert held.block_changed.tolist() == [False, False] == advanced.block_changed.tolist()
    assert held.step_in_block.tolist() == [1, 1] == advanced.step_in_block.tolist()
    assert held.masked_at_block_start.tolist() == [1, 3] == advanced.masked_at_block_start.tolist()
    assert held.masked[1].tolist() == [False] * 6 + [True] * 4
