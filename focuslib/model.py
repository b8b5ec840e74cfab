"""One transformer for every DLLM family focuslib loads.

LLaDA, Dream, SDAR and LLaDA2.0 are all pre-norm RoPE transformers with SwiGLU
MLPs; they differ only in the switches of `ModelConfig` (QKV bias, QK-norm,
partial rotary, dense vs MoE MLP, attention rule, logit shift, special ids).
Family modules (`focuslib.families`) translate a checkpoint's `config.json` and
key names into this one model.

Two ways to run it:

* `model(input_ids)` -- the reference path: all positions, the family's own
  attention rule, raw logits, no cache.
* layer by layer over an arbitrary set of rows -- what the decoder does so that
  policies can drop rows (FOCUS) or reuse them (DyLLM) between layers. Every row
  carries its absolute position, so rows can be gathered and scattered freely:

      h = model.embed(ids, pos)                       # [B, L, C]
      rope = rope_tables(model.cfg, pos)              # cos, sin [B, L, R]: once, for every layer
      for layer in model.layers:
          q, k, v = layer.qkv(h, rope)                # [B, L, H|G, D]
          ctx = attend(q, K, V, mask)                 # K, V: [B, T, G, D] (cache)
          h = layer.finish(h, ctx)                    # + attn_out(ctx), then + ffn
      logits = model.logits(h)                        # [B, L, V]

Shapes: B batch, L rows (query tokens), T key positions, C model width,
H query heads, G key/value heads, D head dim, V vocab, E experts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from collections.abc import Callable
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass(frozen=True)
class MoEConfig:
    """Sparse MLP of LLaDA2.0 (Ling 2.0 router): sigmoid scores, group-limited top-k."""

    n_experts: int
    top_k: int
    intermediate_size: int  # per expert
    n_shared_experts: int = 1
    n_group: int = 1
    topk_group: int = 1
    routed_scaling: float = 1.0
    norm_topk_prob: bool = True
    first_k_dense: int = 1  # layers [0, first_k_dense) use the dense MLP


@dataclass(frozen=True)
class ModelConfig:
    """Everything the model and the decoder need to know about a checkpoint."""

    family: str  # "llada" | "dream" | "sdar" | "llada2"
    vocab_size: int
    dim: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    mask_id: int
    eos_ids: tuple[int, ...] = ()
    pad_id: int | None = None
    max_positions: int = 4096
    rope_theta: float = 10000.0
    rotary_dim: int | None = None  # None: rotate the whole head dim
    norm_eps: float = 1e-6
    qkv_bias: bool = False
    qk_norm: bool = False
    tie_embeddings: bool = False
    moe: MoEConfig | None = None
    attention: Literal["full", "block_causal"] = "full"
    block_size: int = 0  # block of the block-causal rule (0 for full attention)
    logit_shift: bool = False  # Dream: logits at i predict token i + 1
    # Optional, only in focuslib's own small checkpoints (real ones lack it): a
    # learned embedding of each token's offset from the start of the answer,
    # which lets a tiny model learn digit-by-digit tasks quickly (docs/design.md, "Model families").
    answer_offset_embeddings: int = 0
    extra: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads={self.n_heads} is not a multiple of n_kv_heads={self.n_kv_heads}")
        if self.attention not in ("full", "block_causal"):
            raise ValueError(f"attention must be 'full' or 'block_causal', got {self.attention!r}")
        if self.attention == "block_causal" and self.block_size <= 0:
            raise ValueError("block_causal attention needs block_size > 0")
        if self.rotary_dim is not None and (self.rotary_dim % 2 or self.rotary_dim > self.head_dim):
            raise ValueError(f"rotary_dim={self.rotary_dim} must be even and <= head_dim={self.head_dim}")

    @property
    def block_diffusion(self) -> bool:
        return self.attention == "block_causal"


# ----------------------------------------------------------------------------- pieces


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * xf.to(x.dtype)


def rope_cos_sin(pos: Tensor, rotary_dim: int, theta: float) -> tuple[Tensor, Tensor]:
    """cos/sin tables [B, L, rotary_dim] for explicit positions pos [B, L], in float32."""
    inv_freq = 1.0 / theta ** (torch.arange(0, rotary_dim, 2, device=pos.device, dtype=torch.float32) / rotary_dim)
    freqs = pos.float()[..., None] * inv_freq  # [B, L, rotary_dim/2]
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rope_tables(cfg: ModelConfig, pos: Tensor) -> tuple[Tensor, Tensor]:
    """cos/sin [B, L, R] of rows at positions pos [B, L] for cfg's rotary dims and base (R = rotary dim).

    Computed once per set of rows and handed to every layer (`Layer.qkv`), as gpt-fast's freqs_cis.
    """
    return rope_cos_sin(pos, cfg.rotary_dim or cfg.head_dim, cfg.rope_theta)


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate-half RoPE (the Llama/Qwen layout) on the first cos.shape[-1] dims of x [B, L, H, D]."""
    r = cos.shape[-1]
    x_rot, x_pass = x[..., :r].float(), x[..., r:]
    x1, x2 = x_rot.chunk(2, dim=-1)
    rotated = torch.cat((-x2, x1), dim=-1)
    out = x_rot * cos[:, :, None, :] + rotated * sin[:, :, None, :]
    return torch.cat((out.to(x.dtype), x_pass), dim=-1)


def attend(q: Tensor, k: Tensor, v: Tensor, mask: Tensor) -> Tensor:
    """Scaled dot-product attention with GQA.

    q [B, L, H, D], k/v [B, T, G, D], mask [B, L, T] bool (True = query may attend key;
    every query row needs at least one True). Returns the context [B, L, H, D].
    """
    group = q.shape[2] // k.shape[2]
    qh, kh, vh = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
    if group > 1:
        kh, vh = kh.repeat_interleave(group, dim=1), vh.repeat_interleave(group, dim=1)
    ctx = F.scaled_dot_product_attention(qh, kh, vh, attn_mask=mask[:, None])
    return ctx.transpose(1, 2)


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        h, g, d = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wq = nn.Linear(cfg.dim, h * d, bias=cfg.qkv_bias)
        self.wk = nn.Linear(cfg.dim, g * d, bias=cfg.qkv_bias)
        self.wv = nn.Linear(cfg.dim, g * d, bias=cfg.qkv_bias)
        self.wo = nn.Linear(h * d, cfg.dim, bias=False)
        self.q_norm = RMSNorm(d, cfg.norm_eps) if cfg.qk_norm else None
        self.k_norm = RMSNorm(d, cfg.norm_eps) if cfg.qk_norm else None
        self.shape = (h, g, d)


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w_gate = nn.Linear(dim, hidden, bias=False)
        self.w_up = nn.Linear(dim, hidden, bias=False)
        self.w_down = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.w_down(F.silu(self.w_gate(x)) * self.w_up(x))


class MoE(nn.Module):
    """Routed experts plus shared experts (LLaDA2.0 / Ling 2.0)."""

    def __init__(self, dim: int, moe: MoEConfig) -> None:
        super().__init__()
        self.cfg = moe
        self.router = nn.Linear(dim, moe.n_experts, bias=False)
        self.expert_bias = nn.Parameter(torch.zeros(moe.n_experts))  # only steers selection
        self.experts = nn.ModuleList(SwiGLU(dim, moe.intermediate_size) for _ in range(moe.n_experts))
        self.shared = SwiGLU(dim, moe.intermediate_size * moe.n_shared_experts) if moe.n_shared_experts else None

    def route(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Expert ids and weights [N, top_k] for tokens x [N, C].

        Scores are sigmoid(router logits) in float32. Selection uses scores + expert_bias:
        each group is rated by the sum of its two best biased scores, the best
        `topk_group` groups stay eligible, and the top_k experts among them are chosen.
        Weights are the unbiased scores of the chosen experts, normalised to sum 1 (if
        norm_topk_prob and top_k > 1: the published gate leaves a single expert's score
        as it is) and multiplied by routed_scaling.
        """
        c = self.cfg
        scores = torch.sigmoid(self.router(x).float())  # [N, E]
        biased = scores + self.expert_bias.float()
        if c.n_group > 1:
            grouped = biased.view(x.shape[0], c.n_group, -1)  # [N, groups, E/groups]
            group_score = grouped.topk(min(2, grouped.shape[-1]), dim=-1).values.sum(-1)
            top_groups = group_score.topk(c.topk_group, dim=-1).indices
            keep = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, top_groups, True)
            biased = biased.masked_fill(~keep.repeat_interleave(grouped.shape[-1], dim=1), float("-inf"))
        ids = biased.topk(c.top_k, dim=-1).indices  # [N, k]
        weights = scores.gather(1, ids)
        if c.norm_topk_prob and c.top_k > 1:
            weights = weights / (weights.sum(-1, keepdim=True) + 1e-20)
        return ids, weights * c.routed_scaling

    def forward(self, x: Tensor) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])  # [N, C]
        ids, weights = self.route(flat)
        out = torch.zeros_like(flat, dtype=torch.float32)
        for e in ids.unique().tolist():  # loop over active experts only
            token, slot = (ids == e).nonzero(as_tuple=True)
            y = self.experts[e](flat[token]).float() * weights[token, slot, None]
            out.index_add_(0, token, y)
        out = out.to(x.dtype)
        if self.shared is not None:
            out = out + self.shared(flat)
        return out.view(shape)


class Layer(nn.Module):
    """Pre-norm transformer layer, exposed in parts so the decoder can run rows selectively."""

    def __init__(self, cfg: ModelConfig, index: int) -> None:
        super().__init__()
        self.cfg = cfg
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        sparse = cfg.moe is not None and index >= cfg.moe.first_k_dense
        self.mlp = MoE(cfg.dim, cfg.moe) if sparse else SwiGLU(cfg.dim, cfg.intermediate_size)

    def qkv(self, h: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """q [B, L, H, D], k, v [B, L, G, D] of rows h [B, L, C] (post-norm, post-RoPE).

        rope: the rows' cos/sin tables [B, L, R] (`rope_tables` of their positions).
        """
        a = self.attn
        (nh, ng, d), (b, l) = a.shape, h.shape[:2]
        x = self.attn_norm(h)
        q = a.wq(x).view(b, l, nh, d)
        k = a.wk(x).view(b, l, ng, d)
        v = a.wv(x).view(b, l, ng, d)
        if a.q_norm is not None:
            q, k = a.q_norm(q), a.k_norm(k)
        cos, sin = rope
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def attn_out(self, ctx: Tensor) -> Tensor:
        """Output projection of the attention context ctx [B, L, H, D] -> [B, L, C] (add to the residual)."""
        return self.attn.wo(ctx.flatten(2))

    def ffn(self, h: Tensor) -> Tensor:
        """MLP branch for rows h [B, L, C] -> [B, L, C] (add to the residual)."""
        return self.mlp(self.ffn_norm(h))

    def finish(self, h: Tensor, ctx: Tensor) -> Tensor:
        """Rows h [B, L, C] after the layer, given their attention context ctx [B, L, H, D]: both residual branches."""
        h = h + self.attn_out(ctx)
        return h + self.ffn(h)


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.offset_embed = (
            nn.Embedding(cfg.answer_offset_embeddings + 1, cfg.dim) if cfg.answer_offset_embeddings else None
        )
        self.layers = nn.ModuleList(Layer(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    def compile_layers(self, backend: str = "inductor") -> "Transformer":
        """Compile every layer's row-wise halves (`Layer.qkv`, `Layer.finish`) with torch.compile, dynamic shapes.

        Those halves run on the packed rows of a step, whose count changes from step to step
        (hence dynamic shapes: one compile, not one per row count); attention stays eager, its
        masks vary in both dimensions. Same tokens as eager decoding; the first call compiles
        (seconds to a minute on CPU). Returns the model.
        """
        for layer in self.layers:
            layer.qkv = torch.compile(layer.qkv, dynamic=True, backend=backend)
            layer.finish = torch.compile(layer.finish, dynamic=True, backend=backend)
        return self

    # -- layer-by-layer API ------------------------------------------------------

    def embed_rows(self, ids: Tensor, pos: Tensor, answer_start: Tensor | None = None) -> Tensor:
        """Input rows [B, L, C] for token ids [B, L] at positions pos [B, L].

        answer_start [B] (first answer position per sequence) is needed only by
        checkpoints with answer-offset embeddings.
        """
        h = self.embed(ids)
        if self.offset_embed is not None:
            if answer_start is None:
                raise ValueError("this checkpoint has answer-offset embeddings: pass answer_start")
            offset = (pos - answer_start[:, None]).clamp(min=-1, max=self.cfg.answer_offset_embeddings - 1) + 1
            h = h + self.offset_embed(offset)
        return h

    def logits(self, h: Tensor) -> Tensor:
        """Raw logits [B, L, V] of final hidden rows h [B, L, C] (no shift)."""
        return self.lm_head(self.norm(h))

    def attention_rule(self, q_pos: Tensor, k_pos: Tensor) -> Tensor:
        """[B, L, T] bool, True = a query at q_pos [B, L] may attend a key at k_pos [B, T] under the family's rule."""
        if self.cfg.attention == "full":
            return torch.ones(q_pos.shape + k_pos.shape[-1:], dtype=torch.bool, device=q_pos.device)
        bs = self.cfg.block_size
        return (k_pos // bs)[:, None, :] <= (q_pos // bs)[:, :, None]

    def key_extent(self, last_pos: int, positions: int) -> int:
        """Key positions [0, extent) that queries at positions <= last_pos may attend under the family's rule."""
        if self.cfg.attention == "full":
            return positions
        bs = self.cfg.block_size
        return min(positions, (last_pos // bs + 1) * bs)

    # -- reference path ----------------------------------------------------------

    def forward(self, input_ids: Tensor, answer_start: Tensor | None = None, key_valid: Tensor | None = None) -> Tensor:
        """Raw logits [B, T, V] for input_ids [B, T]: every position, family attention rule, no cache.

        key_valid [B, T] bool (True = real token) excludes padding keys.
        """
        b, t = input_ids.shape
        pos = torch.arange(t, device=input_ids.device).expand(b, t)
        mask = self.attention_rule(pos, pos)
        if key_valid is not None:
            mask = mask & key_valid[:, None, :]
            mask = mask | torch.eye(t, dtype=torch.bool, device=mask.device)  # padded rows attend themselves
        h = self.embed_rows(input_ids, pos, answer_start)
        return self.logits(self.run_layers(h, rope_tables(self.cfg, pos), lambda q, k, v: attend(q, k, v, mask)))

    def run_layers(self, h: Tensor, rope: tuple[Tensor, Tensor], attention: Callable[[Tensor, Tensor, Tensor], Tensor]
                   ) -> Tensor:
        """Rows h [B, L, C] through every layer, each row attending the others' K/V with
        `attention(q, k, v) -> ctx` (the reference path's SDPA, training's own masked matmuls)."""
        for layer in self.layers:
            q, k, v = layer.qkv(h, rope)
            h = layer.finish(h, attention(q, k, v))
        return h

    def init_weights(self, std: float = 0.02, seed: int | None = None) -> "Transformer":
        """Random init for tests and training (normal(0, std) matrices, unit norms, zero biases)."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        for name, p in self.named_parameters():
            with torch.no_grad():
                if p.ndim >= 2:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
                elif name.endswith("norm.weight"):
                    p.fill_(1.0)
                else:
                    p.zero_()
        return self

    @property
    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())


__all__ = ["ModelConfig", "MoEConfig", "Transformer", "Layer", "attend", "rope_cos_sin", "rope_tables", "apply_rope"]
