"""Load and save checkpoints in their family's real on-disk format.

A checkpoint is a directory with `config.json`, weights in `model.safetensors` or
shards listed by `model.safetensors.index.json`, optionally `generation_config.json`
(extra EOS ids) and tokenizer files. focuslib's own small checkpoints use exactly the
same format, so the code path that loads them is the one that loads LLaDA-8B.

Loading builds the model on the meta device (no init, no memory), checks every
checkpoint key and shape against the model before reading any tensor data, then reads
shard by shard and assigns the tensors. dtype defaults to float32 on CPU (exact, and
what the tests use) and to the checkpoint's `torch_dtype` on accelerators.

Nothing is loaded silently wrong: a config.json that is not JSON, a truncated or corrupt
safetensors file, a missing shard, a tensor holding NaN or Inf (`check_finite`), an
unavailable device or special ids outside the vocabulary raise an error naming the file,
tensor, device or id.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from focuslib.families import config_from_hf, get_family
from focuslib.model import ModelConfig, Transformer

BUNDLED_DIR = Path(__file__).parent / "checkpoints"  # focuslib/checkpoints/<name>/
SINGLE_FILE, INDEX_FILE = "model.safetensors", "model.safetensors.index.json"


class CheckpointError(ValueError):
    """A checkpoint's files are unreadable, corrupt or do not fit its config; the message names the file."""


# --------------------------------------------------------------------------- finding checkpoints


def bundled_checkpoints() -> list[str]:
    """Names of the checkpoints shipped under focuslib/checkpoints/ (loadable by bare name)."""
    if not BUNDLED_DIR.is_dir():
        return []
    return sorted(p.name for p in BUNDLED_DIR.iterdir() if (p / "config.json").is_file())


def resolve_checkpoint(path_or_name: str | os.PathLike[str]) -> Path:
    """Directory of a checkpoint: a path, or a bare name of a bundled checkpoint (e.g. "tiny-sdar")."""
    text = os.fspath(path_or_name)
    path = Path(text).expanduser()
    is_name = not isinstance(path_or_name, os.PathLike) and os.sep not in text and "/" not in text
    if is_name and not path.is_dir():
        bundled = bundled_checkpoints()
        if text not in bundled:
            listed = ", ".join(bundled) or "(none)"
            raise ValueError(f"{text!r} is neither a directory nor a bundled checkpoint; bundled: {listed}")
        path = BUNDLED_DIR / text
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in checkpoint directory {path}")
    return path


def _read_json(file: Path) -> dict[str, Any]:
    """A JSON object from `file`; CheckpointError naming the file if it is not valid JSON or not an object."""
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{file} is not valid JSON ({err}); the file is corrupt or truncated") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{file} must hold a JSON object, got {type(data).__name__}")
    return data


def _read_hf(path: Path, overrides: Mapping[str, Any] | None) -> tuple[dict[str, Any], dict[str, Any] | None]:
    hf = {**_read_json(path / "config.json"), **(overrides or {})}
    gen_file = path / "generation_config.json"
    return hf, _read_json(gen_file) if gen_file.is_file() else None


def _open(file: Path, device: str = "cpu") -> Any:
    """safe_open(file), with CheckpointError naming the file when it is missing, truncated or corrupt."""
    try:
        return safe_open(file, framework="pt", device=device)
    except FileNotFoundError:
        raise CheckpointError(f"{file} does not exist (listed by the checkpoint's {INDEX_FILE})") from None
    except Exception as err:  # safetensors' SafetensorError: header too small, incomplete metadata, ...
        size = file.stat().st_size if file.is_file() else 0
        raise CheckpointError(f"{file} is truncated or corrupt ({size} bytes; safetensors: {err})") from None


def read_config(path: str | os.PathLike[str], overrides: Mapping[str, Any] | None = None) -> ModelConfig:
    """ModelConfig of a checkpoint directory; `overrides` replace config.json keys (e.g. block_size)."""
    return config_from_hf(*_read_hf(Path(path), overrides))


def _checkpoint_keys(path: Path) -> dict[str, Path]:
    """Checkpoint key -> the safetensors file holding it."""
    if (path / INDEX_FILE).is_file():
        weight_map = _read_json(path / INDEX_FILE).get("weight_map")
        if not isinstance(weight_map, dict):
            raise CheckpointError(f"{path / INDEX_FILE} has no weight_map object")
        return {k: path / f for k, f in weight_map.items()}
    if (path / SINGLE_FILE).is_file():
        with _open(path / SINGLE_FILE) as f:
            return {k: path / SINGLE_FILE for k in f.keys()}
    raise FileNotFoundError(f"no {SINGLE_FILE} or {INDEX_FILE} in {path}")


# --------------------------------------------------------------------------- loading


def _some(names: set[str], n: int = 5) -> str:
    shown = sorted(names)[:n]
    return ", ".join(shown) + (f" ... ({len(names)} in all)" if len(names) > n else f" ({len(names)})")


def _resolve_dtype(dtype: torch.dtype | str | None, hf_dtype: str | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype is None and device.type == "cpu":
        return torch.float32
    name = hf_dtype if dtype in (None, "auto") else dtype
    resolved = getattr(torch, name or "float32", None)
    if not isinstance(resolved, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return resolved


def _layout(model: Transformer) -> tuple[dict[str, list[tuple[str, int]]], dict[str, tuple[int, ...]], set[str]]:
    """Checkpoint key -> [(our name, rows)], expected checkpoint shapes, keys allowed but not needed (tied LM head)."""
    params = dict(model.named_parameters())  # tied weights appear once
    family = get_family(model.cfg.family)
    parts, shapes = {}, {}
    for key, ours in family.plan(params).items():
        first = tuple(params[ours[0]].shape)
        parts[key] = [(o, params[o].shape[0]) for o in ours]
        shapes[key] = (sum(rows for _, rows in parts[key]),) + first[1:]
    optional = set(family.plan(["lm_head.weight"])) if model.cfg.tie_embeddings else set()
    return parts, shapes, optional


def _check_checkpoint(
    path: Path, keys: dict[str, Path], shapes: dict[str, tuple[int, ...]], optional: set[str]
) -> None:
    """Raise ValueError naming missing keys, unexpected keys, or the first shape mismatches."""
    missing, unexpected = set(shapes) - set(keys), set(keys) - set(shapes) - optional
    problems = []
    if missing:
        problems.append(f"missing keys: {_some(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_some(unexpected)}")
    if not problems:
        for file in sorted(set(keys.values())):
            with _open(file) as f:
                for key in sorted(k for k in f.keys() if k in shapes and keys[k] == file):
                    got, want = list(f.get_slice(key).get_shape()), list(shapes[key])
                    if got != want:
                        problems.append(f"shape mismatch for {key}: checkpoint {got}, model expects {want}")
    if problems:
        raise CheckpointError(f"checkpoint {path} does not fit its config: " + "; ".join(problems[:5]))


def load_model(
    path_or_name: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    device: str | torch.device = "cpu",
    config_overrides: Mapping[str, Any] | None = None,
    check_finite: bool = True,
) -> tuple[Transformer, Any]:
    """(model in eval mode, tokenizer or None) from a checkpoint directory or bundled name.

    dtype: a torch dtype or its name; "auto" = the checkpoint's torch_dtype; None = float32
    on CPU, the checkpoint's torch_dtype elsewhere. config_overrides replace config.json keys
    (e.g. {"block_size": 32}) before parsing.
    check_finite: refuse (CheckpointError naming the tensor) a tensor with NaN or Inf,
    including values that overflow `dtype`. It reads every weight once more on the device
    (seconds for an 8B model); pass False to skip it for very large checkpoints you trust.
    """
    path, device = resolve_checkpoint(path_or_name), _check_device(device)
    hf, generation = _read_hf(path, config_overrides)
    try:
        cfg = config_from_hf(hf, generation)
    except ValueError as err:
        raise CheckpointError(f"{path / 'config.json'}: {err}") from None
    dtype = _resolve_dtype(dtype, hf.get("torch_dtype") or hf.get("dtype"), device)
    with torch.device("meta"):
        model = Transformer(cfg)
    parts, shapes, optional = _layout(model)
    keys = _checkpoint_keys(path)
    _check_checkpoint(path, keys, shapes, optional)
    state: dict[str, Tensor] = {}
    for file in sorted(set(keys[k] for k in parts)):
        with _open(file, device=str(device)) as f:
            for key in (k for k in parts if keys[k] == file):
                names, rows = zip(*parts[key])
                stored = f.get_tensor(key)
                tensor = stored.to(dtype)
                if check_finite:
                    _check_finite(stored, tensor, key, file)
                pieces = tensor.split(list(rows), dim=0)
                state.update((n, _aligned(p)) for n, p in zip(names, pieces))
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed.weight"]
    model.load_state_dict(state, strict=True, assign=True)
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed.weight
    return model.eval(), load_tokenizer(path)


def _check_device(device: str | torch.device) -> torch.device:
    """torch.device(device), or a ValueError saying clearly that the requested accelerator is not there."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"load_model(device={device!r}): not a torch device ({err})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"load_model(device={str(dev)!r}): no CUDA device is visible "
                             "(torch.cuda.is_available() is False); load on device='cpu'")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"load_model(device={str(dev)!r}): only {torch.cuda.device_count()} CUDA device(s) "
                             "are visible")
    return dev


def _check_finite(stored: Tensor, cast: Tensor, key: str, file: Path) -> None:
    """CheckpointError naming `key` if the tensor as loaded (`cast` to the load dtype) holds NaN or Inf.

    One host sync per tensor; counted in chunks so no full-size temporary is made. Only on
    failure is the stored tensor checked too, to tell corrupt values from a dtype overflow.
    """
    if not cast.is_floating_point():
        return

    def n_bad(t: Tensor) -> int:
        return int(sum((~c.isfinite()).sum() for c in t.reshape(-1).split(1 << 24)))

    bad = n_bad(cast)
    if not bad:
        return
    if cast.dtype != stored.dtype and not n_bad(stored):
        raise CheckpointError(f"checkpoint tensor {key!r} in {file} overflows {cast.dtype}: {bad} value(s) become "
                              f"Inf; load it in {stored.dtype} (load_model(..., dtype=...))")
    raise CheckpointError(f"checkpoint tensor {key!r} in {file} holds {bad} non-finite value(s) (NaN or Inf) of "
                          f"{cast.numel()}: the checkpoint is corrupt "
                          "(load_model(..., check_finite=False) skips this check)")


def _aligned(t: Tensor) -> Tensor:
    """t itself if 64-byte aligned, else an aligned copy.

    safetensors hands out tensors at arbitrary 8-byte offsets of its buffer; matmul
    kernels on misaligned weights are slower and sum in a different order, so the same
    weights would give slightly different logits depending on the file layout.
    """
    return t if t.data_ptr() % 64 == 0 else t.clone()


# --------------------------------------------------------------------------- saving


def checkpoint_state_dict(model: Transformer, dtype: torch.dtype | None = None) -> dict[str, Tensor]:
    """The model's weights under its family's real checkpoint key names (fused tensors concatenated)."""
    params = dict(model.named_parameters())
    plan = get_family(model.cfg.family).plan(params)
    out = {}
    for key, ours in plan.items():
        tensor = torch.cat([params[o].detach() for o in ours]) if len(ours) > 1 else params[ours[0]].detach()
        out[key] = tensor.to("cpu", dtype or tensor.dtype).contiguous()
    return out


def save_checkpoint(
    model: Transformer,
    path: str | os.PathLike[str],
    tokenizer: Any = None,
    dtype: torch.dtype = torch.bfloat16,
    extra_config: Mapping[str, Any] | None = None,
) -> Path:
    """Write config.json (family's real format + torch_dtype), model.safetensors and the tokenizer.

    extra_config adds or replaces config.json keys; the result must still parse. A raw
    `tokenizers.Tokenizer` is wrapped so that AutoTokenizer loads it back with the model's
    mask / EOS / pad tokens.
    """
    path = Path(path)
    hf = {**get_family(model.cfg.family).config_to_hf(model.cfg), "torch_dtype": str(dtype).removeprefix("torch.")}
    hf.update(extra_config or {})
    config_from_hf(hf)  # fail before writing anything
    path.mkdir(parents=True, exist_ok=True)
    save_file(checkpoint_state_dict(model, dtype), path / SINGLE_FILE, metadata={"format": "pt"})
    (path / "config.json").write_text(json.dumps(hf, indent=2) + "\n")
    if tokenizer is not None:
        _as_transformers_tokenizer(tokenizer, model.cfg).save_pretrained(path)
    return path


# --------------------------------------------------------------------------- tokenizers


def has_tokenizer_files(path: Path) -> bool:
    return (path / "tokenizer.json").is_file() or ((path / "vocab.json").is_file() and (path / "merges.txt").is_file())


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """transformers tokenizer of a checkpoint directory, or None if it has no tokenizer files.

    Never runs a checkpoint's remote code (trust_remote_code=False); works offline.
    """
    path = Path(path)
    if not has_tokenizer_files(path):
        return None
    from transformers import AutoTokenizer, PretrainedConfig

    try:  # a blank config: the class comes from tokenizer_config.json, config.json's model_type is ours
        return AutoTokenizer.from_pretrained(
            str(path), config=PretrainedConfig(), trust_remote_code=False, local_files_only=True
        )
    except Exception as err:  # transformers raises many types; say which directory failed
        raise RuntimeError(f"could not load the tokenizer in {path}: {err}") from err


def _as_transformers_tokenizer(tokenizer: Any, cfg: ModelConfig) -> Any:
    """A raw tokenizers.Tokenizer wrapped with the model's special tokens; anything else as is."""
    from tokenizers import Tokenizer

    if not isinstance(tokenizer, Tokenizer):
        return tokenizer
    from transformers import PreTrainedTokenizerFast

    def token(i: int | None, role: str) -> str | None:
        if i is None:
            return None
        text = tokenizer.id_to_token(i)
        if text is None:
            raise ValueError(f"tokenizer has no token for the {role} id {i}")
        return text

    pad = cfg.pad_id if cfg.pad_id is not None else (cfg.eos_ids[0] if cfg.eos_ids else None)
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        mask_token=token(cfg.mask_id, "mask"),
        eos_token=token(cfg.eos_ids[0] if cfg.eos_ids else None, "eos"),
        pad_token=token(pad, "pad"),
    )


__all__ = [
    "BUNDLED_DIR",
    "CheckpointError",
    "bundled_checkpoints",
    "checkpoint_state_dict",
    "load_model",
    "load_tokenizer",
    "read_config",
    "resolve_checkpoint",
    "save_checkpoint",
]
