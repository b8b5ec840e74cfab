"""An independent, plain-PyTorch replay of FOCUS decoding for block-diffusion (SDAR-style) models.

Written from the published rules (FOCUS authors' LMDeploy backend, sands-lab/FOCUS), one
sequence at a time, with its own K/V cache, cache-mode bookkeeping, importance, keep rule,
progress mark, visibility rule and Threshold unmasking. From focuslib it uses only the
model's pieces: `embed_rows`, `layers[i].qkv / attn_out / ffn` and `logits`. Attention,
importance, budget, keep rule and every piece of state are computed here, in plain loops
where the rule is combinatorial (keep rule, max-pooling, cache freezing).

Per step (positions are absolute; a block's "slot" is position - block start):

* rows: block cache -- every position up to the current block's end whose K/V is not final
  (K/V becomes final once a position of an already finished block has been computed with
  its final token); delayed cache -- the same, but a position also freezes once it and its
  right neighbour are decoded (or it is decoded and ends its block), and cached positions
  right of the step's last computed row are not attended.
* layer 0 on all rows; importance I0 over the block's masked rows M.
* layer 1: Q/K/V of all rows (written to the cache), I1, delta = I1 - I0, budget K, keep rule,
  mark update; evicted rows skip attention/FFN of layer 1 and every later layer.
* from layer 1's attention on: keys = everything visible at the step's start except positions
  of the current block right of the right-most kept row of the block (evicted rows' K/V at
  layers >= 2 is whatever an earlier step left in the cache).
* Threshold unmasking on the surviving masked rows.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from fractions import Fraction

import torch

from focuslib.model import rope_tables


# ----------------------------------------------------------------------------- budget


@dataclass(frozen=True)
class BudgetSpec:
    """("focus", alpha): K = ceil(alpha * max(a, 1)); ("fixed", count): K = count."""

    kind: str
    value: float

    def k(self, masked_at_block_start: int, masked_now: int, step_in_block: int) -> int:
        if self.kind == "fixed":
            return int(self.value)
        if step_in_block == 0:
            a = Fraction(1)
        else:
            a = Fraction(masked_at_block_start - masked_now, step_in_block)
        return max(1, math.ceil(Fraction(self.value) * max(a, Fraction(1))))


# ----------------------------------------------------------------------------- importance


def importance(q: torch.Tensor, k: torch.Tensor, window: int = 3) -> list[float]:
    """I_j for the m rows of the masked set (in position order).

    q [m, H, D], k [m, G, D]. Per head h (kv head h // (H/G)): s_ij = <q_i, k_j> / sqrt(D),
    max-pooled along j over the window (neighbours in set order, out of range ignored = -inf
    padding), softmax over j, I_j = sum over heads and queries.
    """
    m, n_heads, d = q.shape
    group = n_heads // k.shape[1]
    half = window // 2
    total = torch.zeros(m, dtype=torch.float32)
    for head in range(n_heads):
        s = (q[:, head].float() @ k[:, head // group].float().T) / math.sqrt(d)  # [m, m]
        pooled = torch.stack([s[:, max(0, j - half):j + half + 1].amax(1) for j in range(m)], dim=1)  # [m, m]
        total += torch.softmax(pooled, dim=1).sum(0)
    return total.tolist()


# ----------------------------------------------------------------------------- keep rule


@dataclass
class Selection:
    kept: list[int]  # block slots of the kept masked rows
    budget: int
    base: list[int]  # slots kept by gate / top-K
    gate: list[int]
    forced: list[int]  # slots added by the progress rule
    margin: float  # smallest distance of a delta to a decision boundary (gate threshold, K-th / K+1-th)


def keep_rule(slots: list[int], delta: list[float], budget: int, mark: int) -> Selection:
    """FOCUS keep rule over the masked rows (slots ascending), with deltas, budget K and the mark."""
    n = len(slots)
    if n <= budget:
        return Selection(kept=list(slots), budget=budget, base=list(slots), gate=[], forced=[], margin=math.inf)
    exact = [Fraction(d) for d in delta]  # the float32 deltas, exactly
    mean = sum(exact) / n
    var = sum((d - mean) ** 2 for d in exact) / n  # population variance
    gate = [i for i in range(n) if exact[i] - mean >= 0 and (exact[i] - mean) ** 2 >= var]
    order = sorted(range(n), key=lambda i: (-delta[i], slots[i]))  # top-K, ties: lower position
    topk = order[:budget]
    base = gate if len(gate) >= budget else topk
    base_slots = {slots[i] for i in base}
    sel = set(base_slots)
    for s in slots:  # adjacency: one pass over the base selection
        if s + 1 in base_slots:
            sel.add(s)
    if not sel:
        sel = set(slots)
    rightmost = max(sel)
    forced = [s for s in slots if s not in sel and mark < s < rightmost]
    sel |= set(forced)
    thr = float(mean) + math.sqrt(float(var))
    margin = min(abs(d - thr) for d in delta)
    if len(gate) < budget:
        margin = min(margin, delta[order[budget - 1]] - delta[order[budget]])
    return Selection(kept=sorted(sel), budget=budget, base=sorted(slots[i] for i in base),
                     gate=sorted(slots[i] for i in gate), forced=forced, margin=margin)


# ----------------------------------------------------------------------------- attention


def attention(q: torch.Tensor, keys_k: torch.Tensor, keys_v: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """q [L, H, D], keys_k/keys_v [T, G, D], allowed [L, T] bool -> context [L, H, D] (GQA: head h uses h // (H/G))."""
    n_heads, d = q.shape[1], q.shape[2]
    group = n_heads // keys_k.shape[1]
    out = torch.empty_like(q)
    for head in range(n_heads):
        kh, vh = keys_k[:, head // group], keys_v[:, head // group]  # [T, D]
        s = (q[:, head] @ kh.T) / math.sqrt(d)  # [L, T]
        s = s.masked_fill(~allowed, float("-inf"))
        out[:, head] = torch.softmax(s, dim=-1) @ vh
    return out


# ----------------------------------------------------------------------------- one sequence


@dataclass
class StepRecord:
    """What the replay did at one step of one sequence."""

    block: int
    step_in_block: int
    tokens: list[int]  # the sequence's tokens at the step's start (mask id where still masked)
    rows: list[int]  # positions computed at layer 0 (the cache mode's rows)
    layers: list[list[int]]  # positions whose attention + FFN ran, per layer
    masked: list[int]  # positions of the block's still-masked rows
    delta: dict[int, float] = field(default_factory=dict)
    selection: Selection | None = None
    mark_before: int = -1
    mark_after: int = -1
    hidden: list[int] = field(default_factory=list)  # block positions hidden as keys from layer 1 on
    committed: list[int] = field(default_factory=list)
    confidence: dict[int, float] = field(default_factory=dict)

    @property
    def evicted(self) -> list[int]:
        return sorted(set(self.masked) - set(self.layers[-1]))

    @property
    def stale_keys(self) -> list[int]:
        """Evicted rows that stay visible to the kept rows as keys (stale K/V at layers >= 2)."""
        return sorted(set(self.evicted) - set(self.hidden))


@torch.no_grad()
def replay(model, prompt: list[int], gen_length: int, cache: str, budget: BudgetSpec, *,
           threshold: float = 0.9, eviction_layer: int = 1, window: int = 3,
           stop_at_eos: bool = True) -> tuple[list[int], list[StepRecord]]:
    """Decode one prompt with FOCUS; returns (the gen_length generated tokens, raw, mask id where
    never decoded) and one StepRecord per step."""
    assert cache in ("block", "delayed")
    cfg = model.cfg
    assert cfg.attention == "block_causal"
    bs, mask_id, n_layers = cfg.block_size, cfg.mask_id, cfg.n_layers
    dtype = model.embed.weight.dtype
    p_len = len(prompt)
    t = p_len + gen_length
    x = list(prompt) + [mask_id] * gen_length
    kc = torch.zeros(n_layers, t, cfg.n_kv_heads, cfg.head_dim, dtype=dtype)
    vc = torch.zeros_like(kc)
    final = [False] * t
    cur_block, step_in_block, masked_at_start, mark = None, 0, 0, -1
    records: list[StepRecord] = []

    while True:
        masked_all = [p for p in range(t) if x[p] == mask_id]
        if not masked_all:
            break
        if stop_at_eos:
            eos = [p for p in range(p_len, t) if x[p] in cfg.eos_ids]
            if eos and masked_all[0] > eos[0]:
                break
        block = masked_all[0] // bs
        if block != cur_block:
            cur_block, step_in_block, mark = block, 0, -1
            masked_at_start = sum(1 for p in masked_all if p // bs == block)
        b_start, b_end = block * bs, min(t, (block + 1) * bs)
        decoded = [x[p] != mask_id for p in range(t)]

        rows = [p for p in range(b_end) if not final[p]]
        if cache == "block":
            reusable = [p for p in range(t) if final[p]]
        else:
            reusable = [p for p in range(t) if final[p] and p <= rows[-1]]
        at_start = sorted(set(rows) | set(reusable))
        masked = [p for p in rows if b_start <= p < b_end and not decoded[p]]
        rec = StepRecord(block=block, step_in_block=step_in_block, tokens=list(x), rows=list(rows), layers=[],
                         masked=masked, mark_before=mark)

        live = list(rows)  # rows still being computed
        pos = torch.tensor(live)
        h = model.embed_rows(torch.tensor([x[p] for p in live])[None], pos[None], torch.tensor([p_len]))[0]
        visible = list(at_start)
        imp0: dict[int, float] = {}
        for i, layer in enumerate(model.layers):
            q, k, v = (a[0] for a in layer.qkv(h[None], rope_tables(model.cfg, pos[None])))
            kc[i, pos] = k.to(dtype)
            vc[i, pos] = v.to(dtype)
            if i in (0, eviction_layer):
                idx = [live.index(p) for p in masked]
                imp = importance(q[idx], k[idx], window)
                imp = torch.tensor(imp, dtype=torch.float32).to(dtype).float().tolist()  # stored in model dtype
                if i == 0:
                    imp0 = dict(zip(masked, imp))
            if i == eviction_layer:
                rec.delta = {p: float(torch.tensor(a - imp0[p], dtype=torch.float32)) for p, a in zip(masked, imp)}
                k_budget = budget.k(masked_at_start, len(masked), step_in_block)
                slots = [p - b_start for p in masked]
                sel = keep_rule(slots, [rec.delta[p] for p in masked], k_budget, mark)
                rec.selection = sel
                kept_masked = {s + b_start for s in sel.kept}
                keep = [p for p in live if not (b_start <= p < b_end) or decoded[p] or p in kept_masked]
                rightmost = max(p for p in keep if b_start <= p < b_end)
                mark = max(mark, rightmost - b_start)
                rec.hidden = [p for p in visible if b_start <= p < b_end and p > rightmost]
                visible = [p for p in visible if p not in rec.hidden]
                sub = [live.index(p) for p in keep]
                live, h, q = keep, h[sub], q[sub]
                pos = torch.tensor(live)
            # attention of the live rows over the visible keys, block-causal
            key_ok = torch.zeros(t, dtype=torch.bool)
            key_ok[visible] = True
            key_block = torch.arange(t) // bs
            allowed = key_ok[None, :] & (key_block[None, :] <= (pos // bs)[:, None])  # [rows, T]
            ctx = attention(q, kc[i], vc[i], allowed)
            h = h + layer.attn_out(ctx[None])[0]
            h = h + layer.ffn(h[None])[0]
            rec.layers.append(list(live))
        rec.mark_after = mark

        # Threshold unmasking over the surviving masked rows of the block
        cand = [p for p in live if p in masked]
        logits = model.logits(h[[live.index(p) for p in cand]][None])[0].float()
        logits[:, mask_id] = float("-inf")
        probs = torch.softmax(logits, dim=-1)
        tokens = logits.argmax(-1).tolist()
        conf = [float(probs[r, tok]) for r, tok in enumerate(tokens)]
        rec.confidence = dict(zip(cand, conf))
        chosen = [r for r in range(len(cand)) if conf[r] >= threshold]
        if not chosen:
            best = max(conf)
            chosen = [next(r for r in range(len(cand)) if conf[r] == best)]
        for r in chosen:
            x[cand[r]] = tokens[r]
        rec.committed = [cand[r] for r in chosen]

        # K/V bookkeeping: which computed positions now hold final K/V (decided on the step-start state)
        for p in live:
            if cache == "block":
                freeze = p // bs < block
            else:
                right_decoded = p + 1 >= t or decoded[p + 1]
                block_last = p + 1 >= t or (p + 1) // bs != p // bs
                freeze = decoded[p] and (right_decoded or block_last)
            final[p] = final[p] or freeze
        records.append(rec)
        step_in_block += 1
    return x[p_len:], records


__all__ = ["BudgetSpec", "Selection", "StepRecord", "importance", "keep_rule", "replay"]
