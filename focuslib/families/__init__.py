"""Model families: translate a checkpoint's `config.json` and key names into focuslib's one model.

A family knows nothing about tensors beyond names: it turns the published
`config.json` (and `generation_config.json`) into a `ModelConfig` and back, and
declares how its checkpoint keys correspond to `Transformer` parameter names as
a table of `Rule`s. One generic function (`checkpoint_plan`) applies any table,
including fused tensors (LLaDA2.0's `query_key_value` = q, k, v rows stacked along
dim 0), so loading and saving have no per-family code.

focuslib extensions, present only in checkpoints focuslib writes (real ones lack
them and get the defaults): the config key `answer_offset_embeddings` (0) with the
weight `model.offset_embed.weight`, and `block_size` for families whose real config
has no block size (LLaDA2.0).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, fields
from typing import Any, Iterable

from focuslib.model import ModelConfig

OFFSET_EMBED_KEY = "model.offset_embed.weight"  # focuslib extension, same name in every family


@dataclass(frozen=True)
class Rule:
    """Our parameter pattern(s) <-> one checkpoint key pattern; `{i}` is a layer, `{e}` an expert.

    Several of ours means one fused checkpoint tensor: ours concatenated along dim 0
    in the order given.
    """

    ours: str | tuple[str, ...]
    theirs: str

    def __post_init__(self) -> None:
        if isinstance(self.ours, str):
            object.__setattr__(self, "ours", (self.ours,))


def swiglu_rules(ours: str, theirs: str, names: tuple[str, str, str]) -> tuple[Rule, ...]:
    """Rules for one SwiGLU MLP: our w_gate, w_up, w_down <-> their (gate, up, down) names."""
    ours_names = ("w_gate", "w_up", "w_down")
    return tuple(Rule(f"{ours}.{w}.weight", f"{theirs}.{n}.weight") for w, n in zip(ours_names, names))


def _compile(pattern: str) -> re.Pattern[str]:
    parts = re.split(r"(\{[a-z]\})", pattern)
    return re.compile("".join(f"(?P<{p[1]}>\\d+)" if p.startswith("{") else re.escape(p) for p in parts) + r"\Z")


def checkpoint_plan(rules: Iterable[Rule], our_names: Iterable[str]) -> dict[str, tuple[str, ...]]:
    """Checkpoint key -> our parameter names it holds (several = fused along dim 0, in order).

    Raises ValueError for a parameter no rule maps, or a fused group with a member missing.
    """
    compiled = [(rule, [_compile(o) for o in rule.ours]) for rule in rules]
    slots: dict[str, list[str | None]] = {}
    for name in our_names:
        for rule, regexes in compiled:
            hit = next(((j, m) for j, rx in enumerate(regexes) if (m := rx.match(name))), None)
            if hit is not None:
                j, m = hit
                key = rule.theirs.format(**m.groupdict())
                slots.setdefault(key, [None] * len(rule.ours))[j] = name
                break
        else:
            raise ValueError(f"no checkpoint key rule for parameter {name!r}")
    incomplete = [k for k, v in slots.items() if None in v]
    if incomplete:
        raise ValueError(f"fused checkpoint keys with missing parts: {incomplete}")
    return {k: tuple(v) for k, v in slots.items()}  # type: ignore[arg-type]


class Family:
    """Base of the family objects.

    A subclass sets the class attributes (names, key table, the real checkpoint's
    special-id defaults) and translates the architecture part of the config in
    `arch_from_hf` / `arch_to_hf`; special ids, focuslib extensions and the check
    that a saved config reads back to the same ModelConfig live here, once.
    """

    name: str = ""
    model_types: tuple[str, ...] = ()
    architectures: tuple[str, ...] = ()
    rules: tuple[Rule, ...] = ()
    default_mask_id: int = 0
    default_eos_id: int = 0
    turn_end_ids: tuple[int, ...] = ()  # chat end-of-turn ids of the real tokenizer, also EOS

    def arch_from_hf(self, hf: dict[str, Any]) -> dict[str, Any]:
        """ModelConfig fields other than special ids and extensions."""
        raise NotImplementedError

    def arch_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """config.json fields (real format) other than special ids and extensions."""
        raise NotImplementedError

    def config_from_hf(self, hf: dict[str, Any], generation: dict[str, Any] | None = None) -> ModelConfig:
        """ModelConfig from config.json (and generation_config.json, which may add EOS ids)."""
        mask = hf.get("mask_token_id")
        pad = hf.get("pad_token_id", (generation or {}).get("pad_token_id"))
        cfg = ModelConfig(
            family=self.name,
            mask_id=int(self.default_mask_id if mask is None else mask),
            eos_ids=eos_ids(hf, generation, self.default_eos_id, self.turn_end_ids),
            pad_id=None if pad is None else int(pad),
            answer_offset_embeddings=int(hf.get("answer_offset_embeddings", 0)),
            extra={"model_type": hf.get("model_type", self.model_types[0])},
            **self.arch_from_hf(hf),
        )
        check_special_ids(cfg, mask_given=mask is not None)
        return cfg

    def config_to_hf(self, cfg: ModelConfig) -> dict[str, Any]:
        """config.json dict in the family's real format; refuses configs the format cannot express."""
        if cfg.family != self.name:
            raise ValueError(f"config of family {cfg.family!r} given to family {self.name!r}")
        model_type = cfg.extra.get("model_type")
        out: dict[str, Any] = {
            "architectures": list(self.architectures),
            "model_type": model_type if model_type in self.model_types else self.model_types[0],
            **self.arch_to_hf(cfg),
            "mask_token_id": cfg.mask_id,
            "eos_token_id": eos_field(cfg),
            "pad_token_id": cfg.pad_id,
        }
        if cfg.answer_offset_embeddings:
            out["answer_offset_embeddings"] = cfg.answer_offset_embeddings
        back = self.config_from_hf(out)
        lost = [f.name for f in fields(ModelConfig) if f.compare and getattr(back, f.name) != getattr(cfg, f.name)]
        if lost:
            raise ValueError(f"the {self.name} checkpoint format cannot express {lost} of this config")
        return out

    def plan(self, our_names: Iterable[str]) -> dict[str, tuple[str, ...]]:
        """`checkpoint_plan` with this family's rules plus the shared focuslib extension."""
        return checkpoint_plan(self.rules + (Rule("offset_embed.weight", OFFSET_EMBED_KEY),), our_names)

    def __repr__(self) -> str:
        return f"<family {self.name} ({', '.join(self.model_types)})>"


# --------------------------------------------------------------------------- config helpers


def id_list(value: Any) -> list[int]:
    """`eos_token_id`-style field (None, int or list) as a list."""
    if value is None:
        return []
    return [int(v) for v in value] if isinstance(value, (list, tuple)) else [int(value)]


def eos_ids(
    hf: dict[str, Any], generation: dict[str, Any] | None, default: int, turn_end: tuple[int, ...] = ()
) -> tuple[int, ...]:
    """End-of-sequence ids: config's, then generation_config's, deduplicated in order.

    `turn_end` (the chat end-of-turn token of the family's real tokenizer) joins only
    when the checkpoint uses that tokenizer's end-of-text id, so tiny checkpoints with
    their own vocabularies do not inherit ids outside their vocab.
    """
    ids = id_list(hf.get("eos_token_id")) + id_list((generation or {}).get("eos_token_id"))
    ids = ids or [default]
    if default in ids:
        ids += list(turn_end)
    return tuple(dict.fromkeys(ids))


def check_special_ids(cfg: ModelConfig, mask_given: bool = True) -> None:
    """Refuse a mask or pad id outside [0, vocab_size): the decoder embeds them, so they must be real tokens."""
    where = "mask_token_id" if mask_given else f"the {cfg.family} default mask_token_id"
    for name, value in ((where, cfg.mask_id), ("pad_token_id", cfg.pad_id)):
        if value is not None and not 0 <= value < cfg.vocab_size:
            raise ValueError(f"{name} {value} is outside the vocabulary: ids must lie in [0, {cfg.vocab_size}) "
                             f"(vocab_size {cfg.vocab_size})")


def eos_field(cfg: ModelConfig) -> int | list[int] | None:
    """The inverse of `id_list` for writing configs: a single id as an int, several as a list."""
    ids = list(cfg.eos_ids)
    return None if not ids else ids[0] if len(ids) == 1 else ids


def rope_theta(hf: dict[str, Any], default: float) -> float:
    """rope_theta from the classic field or transformers 5's `rope_parameters`; only plain RoPE is supported."""
    scaling = hf.get("rope_scaling") or hf.get("rope_parameters") or {}
    kind = scaling.get("rope_type", scaling.get("type", "default"))
    if kind != "default":
        raise ValueError(f"rope scaling {kind!r} is not supported")
    return float(hf.get("rope_theta") or scaling.get("rope_theta") or default)


def require(hf: dict[str, Any], **expected: Any) -> None:
    """Refuse configs whose architecture switches our model does not implement (absent = accepted)."""
    bad = {k: hf[k] for k, v in expected.items() if k in hf and hf[k] is not None and hf[k] != v}
    if bad:
        raise ValueError(f"unsupported {hf.get('model_type')} config values {bad} (focuslib supports {expected})")


def standard_fields(hf: dict[str, Any], default_rope_theta: float) -> dict[str, Any]:
    """ModelConfig fields from the transformers-standard names that Dream, SDAR and LLaDA2.0 share."""
    require(hf, hidden_act="silu", use_sliding_window=False)
    heads = int(hf["num_attention_heads"])
    return dict(
        vocab_size=int(hf["vocab_size"]),
        dim=int(hf["hidden_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=heads,
        n_kv_heads=int(hf.get("num_key_value_heads") or heads),
        head_dim=int(hf.get("head_dim") or hf["hidden_size"] // heads),
        intermediate_size=int(hf["intermediate_size"]),
        max_positions=int(hf.get("max_position_embeddings", 4096)),
        rope_theta=rope_theta(hf, default_rope_theta),
        norm_eps=float(hf.get("rms_norm_eps", 1e-6)),
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
    )


def standard_hf(cfg: ModelConfig) -> dict[str, Any]:
    """The inverse of `standard_fields`."""
    return {
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "intermediate_size": cfg.intermediate_size,
        "max_position_embeddings": cfg.max_positions,
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rms_norm_eps": cfg.norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "hidden_act": "silu",
        "use_sliding_window": False,
    }


# --------------------------------------------------------------------------- registry

from focuslib.families.dream import DREAM  # noqa: E402  (the base above must exist first)
from focuslib.families.llada import LLADA  # noqa: E402
from focuslib.families.llada2 import LLADA2  # noqa: E402
from focuslib.families.sdar import SDAR  # noqa: E402

FAMILY_LIST: tuple[Family, ...] = (LLADA, DREAM, SDAR, LLADA2)
FAMILIES: dict[str, Family] = {t: f for f in FAMILY_LIST for t in f.model_types}


def get_family(model_type_or_name: str) -> Family:
    """Family by config.json `model_type` ("Dream", "llada2_moe", ...) or by focuslib name ("dream", "llada2")."""
    for f in FAMILY_LIST:
        if model_type_or_name == f.name or model_type_or_name in f.model_types:
            return f
    raise ValueError(f"unknown model_type {model_type_or_name!r}; known: {', '.join(sorted(FAMILIES))}")


def config_from_hf(hf: dict[str, Any], generation: dict[str, Any] | None = None) -> ModelConfig:
    """ModelConfig from a config.json dict, dispatched on its `model_type`."""
    if "model_type" not in hf:
        raise ValueError(f"config has no model_type; known: {', '.join(sorted(FAMILIES))}")
    try:
        return get_family(hf["model_type"]).config_from_hf(hf, generation)
    except KeyError as err:
        raise ValueError(f"{hf['model_type']} config lacks the required field {err.args[0]!r}") from None


__all__ = [
    "FAMILIES",
    "FAMILY_LIST",
    "Family",
    "OFFSET_EMBED_KEY",
    "Rule",
    "checkpoint_plan",
    "config_from_hf",
    "get_family",
]
