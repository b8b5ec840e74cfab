"""Load and save checkpoints in their family's real on-disk format.

A checkpoint is a directory with `config.json`, weights in `model.safetensors` or
shards listed by `model.safetensors.index.json`, optionally `generation_config.json`
(extra EOS ids) and tokenizer files. focuslib's own small checkpoints use exactly the
same format, so the code path that loads them is the one that loads LLaDA-8B.

Loading builds the model on the meta device (no init, no memory), checks every
checkpoint key and shape against the model before reading any tensor data, then reads
shard by shard, one tensor at a time, and assigns the tensors. dtype defaults to float32
on CPU (exact, and what the tests use) and to the checkpoint's `torch_dtype` on
accelerators.

Host memory: each tensor is read from its file straight into its own buffer (no memory
map, whose touched pages would stay resident until the shard is closed) and converted to
the target dtype and device right away, so peak host memory is the model in the target
dtype (CPU) plus the largest single tensor in the checkpoint's dtype -- never the whole
model in float32, and never a shard on top of the model. On an accelerator the host
holds one tensor at a time. Measured numbers: docs/design.md, "Loading big models".

Nothing is loaded silently wrong: a config.json that is not JSON, a truncated or corrupt
safetensors file, a missing shard, a tensor holding NaN or Inf (`check_finite`), an
unavailable device or special ids outside the vocabulary raise an error naming the file,
tensor, device or id.
"""
from __future__ import annotations

import json
import os
import struct
import sys
from collections.abc import Iterator
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
    (one min/max per tensor: about 2 s per billion parameters on a CPU core); pass False to
    skip it for very large checkpoints you trust.
    Memory: tensors are read one at a time and converted at once, so host memory peaks at
    the model in `dtype` (when loading onto the CPU) plus the largest tensor as stored
    (docs/design.md, "Loading big models"). The tokenizer keeps the checkpoint's chat
    template (`focuslib.tasks.apply_chat_template`).
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
        for key, stored in read_tensors(file, [k for k in parts if keys[k] == file]):
            names, rows = zip(*parts[key])
            tensor = _to_target(stored, dtype, device)
            if check_finite:
                _check_finite(stored, tensor, key, file)
            del stored  # a converted tensor's source is freed before the next one is read
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

    if cast.numel() == 0 or all(bool(v.isfinite()) for v in torch.aminmax(cast.reshape(-1))):
        return  # NaN propagates through min/max and +-Inf is an extreme: 30x faster than counting on CPU
    bad = n_bad(cast)
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


# --------------------------------------------------------------------------- reading tensors

# safetensors dtype names -> torch dtypes (the float8 types only where this torch has them)
_ST_DTYPES: dict[str, torch.dtype] = {
    name: getattr(torch, attr) for name, attr in (
        ("F64", "float64"), ("F32", "float32"), ("F16", "float16"), ("BF16", "bfloat16"), ("I64", "int64"),
        ("I32", "int32"), ("I16", "int16"), ("I8", "int8"), ("U8", "uint8"), ("BOOL", "bool"),
        ("U16", "uint16"), ("U32", "uint32"), ("U64", "uint64"), ("F8_E4M3", "float8_e4m3fn"),
        ("F8_E5M2", "float8_e5m2"),
    ) if hasattr(torch, attr)
}


def _to_target(stored: Tensor, dtype: torch.dtype, device: torch.device) -> Tensor:
    """`stored` (as read, on the CPU, the checkpoint's dtype) in the load dtype on the load device.

    No copy when both already match. Non-float tensors keep their dtype. On an accelerator
    the tensor moves first and is converted there, so the host never holds a converted copy.
    """
    target = dtype if stored.is_floating_point() else stored.dtype
    if stored.device != device:
        stored = stored.to(device)
    return stored.to(target)


def read_tensors(file: str | os.PathLike[str], keys: list[str] | None = None) -> Iterator[tuple[str, Tensor]]:
    """(key, CPU tensor in its stored dtype) of a safetensors file, one at a time, in file order.

    Each tensor is read with plain file reads into a freshly allocated (64-byte aligned)
    buffer that the caller owns; nothing is memory-mapped, so a tensor the caller drops is
    gone from host memory, and peak memory is what the caller keeps plus one tensor.
    keys: the tensors to read (default: all). A file the header check in `_open` passed
    can still be shorter than its header says (truncated after that check): CheckpointError.
    """
    file = Path(file)
    with _open(file) as f:  # validates the header (CheckpointError naming the file otherwise)
        wanted = list(f.keys()) if keys is None else list(keys)
    with open(file, "rb") as raw:
        (header_len,) = struct.unpack("<Q", raw.read(8))
        header = json.loads(raw.read(header_len))
        base = 8 + header_len
        absent = [k for k in wanted if k not in header or k == "__metadata__"]
        if absent:
            raise CheckpointError(f"{file} has no tensor {absent[0]!r} (listed by the checkpoint's {INDEX_FILE})")
        entries = sorted(wanted, key=lambda k: header[k]["data_offsets"][0])
        for key in entries:
            meta = header[key]
            dtype = _ST_DTYPES.get(meta["dtype"])
            if dtype is None or (sys.byteorder != "little" and dtype.itemsize > 1):
                with _open(file) as f:  # an exotic dtype or a big-endian host: safetensors converts it
                    yield key, f.get_tensor(key).clone()
                continue
            begin, end = meta["data_offsets"]
            buffer = torch.empty(end - begin, dtype=torch.uint8)
            raw.seek(base + begin)
            got = raw.readinto(memoryview(buffer.numpy())) if end > begin else 0
            if got != end - begin:
                raise CheckpointError(f"{file} is truncated: tensor {key!r} needs bytes {begin}..{end} of its data, "
                                      f"the file has {got} of them")
            yield key, buffer.view(dtype).reshape(meta["shape"])
            del buffer  # else it lives on while the next tensor is read: two tensors at once


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


# Custom tokenizer classes of real checkpoints (remote code, never run) -> the transformers class they copy.
# Dream's tokenization_dream.DreamTokenizer is Qwen2's byte-level BPE tokenizer under another name; its
# checkpoint ships Qwen2's vocab.json / merges.txt and its own added tokens (mask <|mask|> = 151666).
COMPATIBLE_TOKENIZERS: dict[str, str] = {"DreamTokenizer": "Qwen2Tokenizer"}
CHAT_TEMPLATE_FILE = "chat_template.jinja"


def load_tokenizer(path: str | os.PathLike[str]) -> Any:
    """transformers tokenizer of a checkpoint directory, or None if it has no tokenizer files.

    Never runs a checkpoint's remote code (trust_remote_code=False); works offline. A
    tokenizer class that exists only as remote code is replaced by the transformers class
    it copies (COMPATIBLE_TOKENIZERS: Dream's). The chat template is kept (`tokenizer.chat_template`):
    the `chat_template` entry of tokenizer_config.json, else chat_template.jinja.
    """
    path = Path(path)
    if not has_tokenizer_files(path):
        return None
    import transformers
    from transformers import AutoTokenizer, PretrainedConfig

    config = _read_json(path / "tokenizer_config.json") if (path / "tokenizer_config.json").is_file() else {}
    substitute = COMPATIBLE_TOKENIZERS.get(str(config.get("tokenizer_class")))
    try:
        if substitute is not None:
            tokenizer = getattr(transformers, substitute).from_pretrained(str(path), local_files_only=True)
        else:  # a blank config: the class comes from tokenizer_config.json, config.json's model_type is ours
            tokenizer = AutoTokenizer.from_pretrained(
                str(path), config=PretrainedConfig(), trust_remote_code=False, local_files_only=True
            )
    except Exception as err:  # transformers raises many types; say which directory failed
        raise RuntimeError(f"could not load the tokenizer in {path}: {err}") from err
    if not getattr(tokenizer, "chat_template", None):  # transformers versions differ in what they read
        template = config.get("chat_template")
        if not template and (path / CHAT_TEMPLATE_FILE).is_file():
            template = (path / CHAT_TEMPLATE_FILE).read_text()
        if template:
            tokenizer.chat_template = template
    return tokenizer


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
    "CHAT_TEMPLATE_FILE",
    "COMPATIBLE_TOKENIZERS",
    "CheckpointError",
    "bundled_checkpoints",
    "checkpoint_state_dict",
    "load_model",
    "load_tokenizer",
    "read_config",
    "read_tensors",
    "resolve_checkpoint",
    "save_checkpoint",
]
