"""focuslib.kernels.selection.focus_select_reference against an independent port of the FOCUS rule.

The port below (`port_select`) is written from the rule as the FOCUS authors implement
it (github.com/sands-lab/FOCUS): ``_focus_select_enforce_ragged_kernel`` in
``lmdeploy/pytorch/kernels/cuda/focus.py`` for one step, and the per-block mark
(``FocusState.rightmost_processed`` in ``lmdeploy/pytorch/strategies/dllm/sequence.py``:
-1 at each block start, ``mark_processed`` keeps the max; advanced by
``_focus_processing_view_kernel`` / ``update_focus_progress_only``) for a whole block.
Like the authors' kernel it works on one sequence's list of still-masked rows in
position order, with their block positions, and picks the top-K by repeated argmax
(all rows tied at the maximum, lowest positions first, until K are taken). It shares
no code with kernels/selection.py, which is vectorised over slots and ranks pairwise.
The port decides the gate in exact rational arithmetic, so the comparison also pins down
deltas that lie exactly on mean + std (equal-count two-value sets, constant rows, ...),
which float32 mean + sqrt(var) would round either way.

Checked here:
* single steps: >= 1,000 random inputs (S in 1..64, random masked sets, float / bf16 /
  tied deltas, random budgets and marks) -> identical keep masks;
* whole blocks: a block decoded over several steps (the masked set shrinks by random
  commits, each side carries its own mark with mark = max(mark, rightmost kept slot)),
  keep masks compared at every step;
* hand-checkable cases where each option changes the kept set.
The Triton kernel vs the reference for every option combination runs in the
interpreter subprocess of tests/test_kernels.py (cases ``select``, ``select_options``).
"""

import random
from fractions import Fraction

import pytest
import torch

from focuslib.kernels import selection

T, F = True, False


# ---------------------------------------------------------------------------------------
# the port: plain Python, one sequence at a time
# ---------------------------------------------------------------------------------------


def port_select_rows(positions, deltas, target, mark):
    """Keep flags for one sequence's still-masked rows (positions ascending).

    positions: block positions of the masked rows; deltas: their importance deltas
    (layer 1 minus layer 0); target: budget K; mark: furthest block position processed
    in earlier steps of this block (-1 at the block start).
    """
    n = len(positions)
    if n <= target:  # sdar._prepare_focus_eviction: should_evict = mask_lengths > targets
        return [True] * n

    # top-K by repeated argmax over the rows not taken yet; ties -> lowest position first
    taken = [False] * n
    remaining = target
    while remaining > 0:
        free = [i for i in range(n) if not taken[i]]
        if not free:
            break
        best = max(deltas[i] for i in free)
        for i in free:  # free is in position order
            if remaining > 0 and deltas[i] == best:
                taken[i] = True
                remaining -= 1

    # gate: d >= mean + population std (divide by n), in exact rational arithmetic:
    # d >= mean + sqrt(var)  <=>  d - mean >= 0 and (d - mean)^2 >= var
    exact = [Fraction(d) for d in deltas]
    mean = sum(exact) / n
    var = sum((d - mean) ** 2 for d in exact) / n
    candidates = [d - mean >= 0 and (d - mean) ** 2 >= var for d in exact]
    base = candidates if sum(candidates) >= target else taken

    # adjacency, on the base selection: keep i if the next masked row sits at position + 1
    retain = list(base)
    for i in range(n - 1):
        if positions[i + 1] - positions[i] == 1 and base[i + 1] and not base[i]:
            retain[i] = True

    if not any(retain):
        retain = [True] * n

    # progress: evicted rows left of the rightmost kept row come back unless processed
    rightmost = max(p for p, r in zip(positions, retain) if r)
    for i in range(n):
        if not retain[i] and positions[i] < rightmost and positions[i] > mark:
            retain[i] = True
    return retain


def port_select(delta_row, masked_row, target, mark):
    """Keep flags for every slot of one sequence (slots not masked are always kept)."""
    pos = [j for j, m in enumerate(masked_row) if m]
    kept = dict(zip(pos, port_select_rows(pos, [delta_row[j] for j in pos], target, mark)))
    return [kept.get(j, True) for j in range(len(masked_row))]


def port_update_mark(mark, keep_row):
    """The caller's step update: mark = max(mark, rightmost kept slot of any kind)."""
    kept = [j for j, k in enumerate(keep_row) if k]
    return max([mark] + kept[-1:])


def reference(delta, masked, budget, mark, **opts):
    return selection.focus_select_reference(delta, masked, budget, mark, **opts)


# ---------------------------------------------------------------------------------------
# random inputs
# ---------------------------------------------------------------------------------------

DELTA_MODES = ("normal", "bf16", "int_ties", "few_values", "constant", "two_values")


def random_deltas(rng: random.Random, g: torch.Generator, B: int, S: int, mode: str) -> torch.Tensor:
    if mode == "normal":
        return torch.randn(B, S, generator=g) * rng.choice([1e-3, 1.0, 50.0])
    if mode == "bf16":  # what a bf16 model produces: few mantissa bits, many near-ties
        return (torch.randn(B, S, generator=g) * rng.choice([1e-2, 1.0])).bfloat16().float()
    if mode == "int_ties":
        return torch.randint(-2, 3, (B, S), generator=g).float()
    if mode == "few_values":  # three bf16 values drawn per case
        vals = torch.randn(3, generator=g).bfloat16().float()
        return vals[torch.randint(0, 3, (B, S), generator=g)]
    if mode == "constant":
        return torch.full((B, S), float(torch.randn(1, generator=g).bfloat16()))
    # two values: with equal counts the top value sits exactly on mean + population std
    lo, hi = sorted(torch.randint(-4, 5, (2,), generator=g).tolist())
    return torch.where(torch.rand(B, S, generator=g) < 0.5, float(lo), float(hi))


def random_masked(rng: random.Random, g: torch.Generator, B: int, S: int) -> torch.Tensor:
    kind = rng.choice(["iid", "iid", "suffix", "all"])
    if kind == "all":
        return torch.ones(B, S, dtype=torch.bool)
    if kind == "suffix":  # decoded prefix, masked tail (the usual left-to-right shape)
        start = torch.randint(0, S, (B, 1), generator=g)
        return torch.arange(S)[None, :] >= start
    return torch.rand(B, S, generator=g) < rng.random()


def with_nan_off_mask(delta: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Deltas of unmasked slots are garbage; both sides must ignore them."""
    return torch.where(masked, delta, torch.full_like(delta, float("nan")))


def compare_batch(delta, masked, budget, mark):
    """Reference vs port on every row of a batch; returns the keep mask (the reference's)."""
    got = reference(delta, masked, budget, mark)
    for b in range(delta.shape[0]):
        want = port_select(delta[b].tolist(), masked[b].tolist(), int(budget[b]), int(mark[b]))
        assert got[b].tolist() == want, (
            f"row {b}: delta={delta[b].tolist()} masked={masked[b].tolist()} "
            f"K={int(budget[b])} mark={int(mark[b])}\nreference={got[b].tolist()}\nport     ={want}")
    return got


# ---------------------------------------------------------------------------------------
# 1. random single steps and whole blocks
# ---------------------------------------------------------------------------------------

CASES_PER_S = 24  # x 64 block sizes = 1,536 single-step cases


def run_random_steps(seed: int) -> int:
    """Compare CASES_PER_S cases for every S in 1..64; returns the number compared."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    compared = 0
    for S in range(1, 65):
        for mode in (rng.choice(DELTA_MODES), rng.choice(DELTA_MODES)):
            B = CASES_PER_S // 2
            masked = random_masked(rng, g, B, S)
            delta = with_nan_off_mask(random_deltas(rng, g, B, S, mode), masked)
            n = masked.sum(1)
            budget = torch.stack([torch.randint(1, int(m) + 3, (), generator=g) for m in n])
            mark = torch.randint(-1, S, (B,), generator=g)
            compare_batch(delta, masked, budget, mark)
            compared += B
    return compared


def test_reference_matches_port_random_steps():
    compared = run_random_steps(20260)
    assert compared >= 1000
    print(f"single-step cases compared: {compared}")


def test_reference_matches_port_padded_batch():
    """Rows of different lengths in one [B, 64] batch: slots past a row's end have no row
    (masked False) and must not change its result."""
    rng = random.Random(7)
    g = torch.Generator().manual_seed(7)
    B, W = 64, 64
    delta = torch.randn(B, W, generator=g).bfloat16().float()
    masked = torch.rand(B, W, generator=g) < 0.7
    lengths = torch.randint(1, W + 1, (B,), generator=g)
    masked &= torch.arange(W)[None, :] < lengths[:, None]
    delta[::3] = torch.randint(-1, 2, (len(range(0, B, 3)), W), generator=g).float()
    delta = with_nan_off_mask(delta, masked)
    budget = torch.tensor([rng.randint(1, max(1, int(m))) for m in masked.sum(1)])
    mark = torch.tensor([rng.randint(-1, int(L) - 1) for L in lengths])
    got = compare_batch(delta, masked, budget, mark)
    for b in range(B):  # the same row alone, at its own length
        L = int(lengths[b])
        alone = reference(delta[b:b + 1, :L], masked[b:b + 1, :L], budget[b:b + 1], mark[b:b + 1])
        assert torch.equal(alone[0], got[b, :L])


BLOCKS = 150  # x 4 sequences, each decoded to the end


def run_blocks(seed: int, blocks: int = BLOCKS) -> tuple[int, int]:
    """Decode `blocks` blocks of 4 sequences step by step, each side carrying its own mark.

    Returns (sequence-steps compared, sequence-steps where "fill" would keep more)."""
    rng = random.Random(seed)
    g = torch.Generator().manual_seed(seed)
    steps_compared = 0
    forced_by_mark = 0  # steps where the mark rule evicted a row the fill rule would keep
    for _ in range(blocks):
        S, B = rng.randint(1, 64), 4
        masked = torch.ones(B, S, dtype=torch.bool)
        if rng.random() < 0.2:  # some blocks start partly decoded
            masked = torch.rand(B, S, generator=g) < 0.8
        mark_ref = torch.full((B,), -1, dtype=torch.long)
        mark_port = [-1] * B
        while masked.any():
            mode = rng.choice(DELTA_MODES)
            delta = with_nan_off_mask(random_deltas(rng, g, B, S, mode), masked)
            n = masked.sum(1)
            budget = torch.stack([torch.randint(1, max(2, int(m) // 2 + 2), (), generator=g) for m in n])
            keep = reference(delta, masked, budget, mark_ref)
            for b in range(B):
                want = port_select(delta[b].tolist(), masked[b].tolist(), int(budget[b]), mark_port[b])
                assert keep[b].tolist() == want, (S, b, mark_port[b], delta[b].tolist(), masked[b].tolist())
                mark_port[b] = port_update_mark(mark_port[b], want)
            first_masked = torch.where(masked.any(1), masked.float().argmax(1), S)
            fill = reference(delta, masked, budget, first_masked, progress_rule="fill")
            forced_by_mark += int((fill & ~keep).any(1).sum())
            steps_compared += B
            # caller: advance the mark, then commit some kept masked rows (decoders can only
            # commit rows they computed); at least one row per sequence so the block ends
            idx = torch.arange(S)
            mark_ref = torch.maximum(mark_ref, torch.where(keep, idx, -1).amax(1))
            assert mark_ref.tolist() == mark_port
            commit = keep & masked & (torch.rand(B, S, generator=g) < rng.choice([0.1, 0.3, 0.8]))
            for b in range(B):
                if masked[b].any() and not commit[b].any():
                    cands = (keep[b] & masked[b]).nonzero().flatten().tolist()
                    commit[b, rng.choice(cands)] = True
            masked = masked & ~commit
    return steps_compared, forced_by_mark


def test_reference_matches_port_over_whole_blocks():
    """Decode blocks step by step; keep masks and marks compared at every step."""
    steps_compared, forced_by_mark = run_blocks(99)
    assert steps_compared >= 1000
    assert forced_by_mark > 0  # the simulation does exercise the mark rule
    print(f"block-step cases compared: {steps_compared} ({forced_by_mark} where mark != fill)")


def test_port_sanity_on_authors_examples():
    """The port itself on cases small enough to follow by hand."""
    # |M| = 2 <= K: all kept
    assert port_select_rows([3, 5], [1.0, 0.0], 2, -1) == [T, T]
    # gate {0, 1} (2 >= mean 1 + std 1), K = 1 -> both kept
    assert port_select_rows([0, 1, 2, 3], [2.0, 2.0, 0.0, 0.0], 1, -1) == [T, T, F, F]
    # constant deltas: std 0, every row is on the threshold -> all in G
    assert port_select_rows([0, 2, 3], [5.0, 5.0, 5.0], 1, 5) == [T, T, T]
    # threshold 4.67 + 0.47: G empty -> top-1, the 5 vs 5 tie goes to position 0
    assert port_select_rows([0, 2, 3], [5.0, 5.0, 4.0], 1, 5) == [T, F, F]
    # G = {3}; adjacency adds position 2 (3 - 1 is masked) but not position 0; mark 5 -> no
    # progress; with mark -1 position 0 (< 3, not processed) comes back
    assert port_select_rows([0, 2, 3], [4.0, 4.0, 5.0], 1, 5) == [F, T, T]
    assert port_select_rows([0, 2, 3], [4.0, 4.0, 5.0], 1, -1) == [T, T, T]


# ---------------------------------------------------------------------------------------
# 2. hand-checkable cases for each option
# ---------------------------------------------------------------------------------------


def one(delta, masked, budget, mark):
    return (torch.tensor([delta], dtype=torch.float32), torch.tensor([masked]),
            torch.tensor([budget]), torch.tensor([mark]))


def test_gate_std_population_vs_sample():
    # masked deltas 2, 2, 0, 0, K = 1, mark -1.
    # population: mean 1, var (1+1+1+1)/4 = 1, threshold 2 -> G = {0, 1}, |G| = 2 >= 1: keep
    #   both; rows 2, 3 lie right of the rightmost kept row 1 -> evicted.
    # sample: var 4/3, threshold 1 + 1.155 = 2.155 -> G empty -> top-1 = row 0 (tie with row
    #   1 goes to the lower position); no masked row at -1, nothing left of 0 -> keep {0}.
    args = one([2, 2, 0, 0], [T, T, T, T], 1, -1)
    assert reference(*args).tolist() == [[T, T, F, F]]
    assert reference(*args, gate_std="population").tolist() == [[T, T, F, F]]
    assert reference(*args, gate_std="sample").tolist() == [[T, F, F, F]]
    # the option does not interact with the progress rule here (fill from slot 0: same)
    assert reference(*args, gate_std="sample", progress_rule="fill").tolist() == [[T, F, F, F]]
    assert port_select([2, 2, 0, 0], [T] * 4, 1, -1) == [T, T, F, F]
    assert selection.focus_select(*args, gate_std="sample").tolist() == [[T, F, F, F]]


def test_progress_mark_vs_fill():
    # masked deltas 0, 0, 0, 10, 0, 0 (S = 6), K = 1.
    # gate: mean 10/6 = 1.67, population std sqrt(83.3/6) = 3.73 -> threshold 5.39 -> G = {3};
    # adjacency adds 2; rightmost kept row = 3; rows 0, 1 are evicted, left of it.
    # "mark" with mark 1 (rows 0, 1 processed in an earlier step of this block): they are
    #   not forced back -> keep {2, 3}.
    # "fill" with progress 0 (the first still-masked slot): keep [0, 3] -> {0, 1, 2, 3}.
    delta, masked = [0, 0, 0, 10, 0, 0], [T] * 6
    assert reference(*one(delta, masked, 1, 1)).tolist() == [[F, F, T, T, F, F]]
    assert reference(*one(delta, masked, 1, 0), progress_rule="fill").tolist() == [[T, T, T, T, F, F]]
    # mark 0: only row 0 was processed -> row 1 comes back
    assert reference(*one(delta, masked, 1, 0)).tolist() == [[F, T, T, T, F, F]]
    # block start (mark -1): nothing processed yet -> same as fill
    assert reference(*one(delta, masked, 1, -1)).tolist() == [[T, T, T, T, F, F]]
    for mark, want in [(1, [F, F, T, T, F, F]), (0, [F, T, T, T, F, F]), (-1, [T, T, T, T, F, F])]:
        assert port_select(delta, masked, 1, mark) == want
    # an unmasked row at the end is kept but does not move "rightmost" (row 4 stays out)
    assert reference(*one(delta, [T, T, T, T, T, F], 1, 1)).tolist() == [[F, F, T, T, F, T]]


def test_mark_is_not_updated_by_the_kernel():
    args = one([0, 0, 0, 10, 0, 0], [T] * 6, 1, 1)
    before = args[3].clone()
    selection.focus_select(*args)
    assert torch.equal(args[3], before)


@pytest.mark.parametrize("bad", [dict(gate_std="unbiased"), dict(progress_rule="first")])
def test_unknown_option_raises(bad):
    with pytest.raises(ValueError, match="one of"):
        reference(*one([0, 1], [T, T], 1, -1), **bad)
