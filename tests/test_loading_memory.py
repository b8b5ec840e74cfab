"""Host memory of load_model: the model in the target dtype plus one tensor, never a float32 copy or a shard.

Peak memory is measured as the max RSS of a fresh subprocess (tracemalloc does not see torch's
allocations). The subprocess first loads a tiny checkpoint, so one-time costs (library code pages,
allocator arenas: about 160 MB) are in the baseline, then loads a medium LLaDA-shaped checkpoint
(67M parameters: 134 MB in bfloat16, 268 MB in float32). Reading through a memory map would keep a
shard's pages resident next to the model (2x the model for a single-file checkpoint); converting
after loading in float32 would hold the float32 model.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from focuslib import loading
from focuslib.loading import load_model, read_tensors, save_checkpoint
from focuslib.model import Transformer
from focuslib.testing import tiny_config, write_tiny_checkpoint

MB = 1 << 20
MARGIN = 40 * MB  # allocator and interpreter noise; measured 0-11 MB


def _medium_config():
    """LLaDA's layout at width 512, 8 layers, vocabulary 32768: the embedding and LM head are the largest tensors."""
    return tiny_config("llada", vocab_size=32768, dim=512, n_layers=8, n_heads=8, n_kv_heads=8, head_dim=64,
                       intermediate_size=2048)


def _write_medium(path: Path, dtype: torch.dtype) -> Path:
    """_medium_config saved in `dtype` (constant weights: memory is what is measured), no float32 model built."""
    with torch.device("meta"):
        model = Transformer(_medium_config())
    for name, p in list(model.named_parameters()):
        owner, _, attr = name.rpartition(".")
        value = torch.full(p.shape, 0.01 if p.ndim >= 2 else 1.0, dtype=dtype)
        setattr(model.get_submodule(owner), attr, torch.nn.Parameter(value, requires_grad=False))
    return save_checkpoint(model, path, dtype=dtype)


@pytest.fixture(scope="module")
def medium(tmp_path_factory):
    """dtype -> a medium checkpoint stored in it; deleted afterwards (134-268 MB each)."""
    root = tmp_path_factory.mktemp("medium")
    paths = {dtype: _write_medium(root / str(dtype).removeprefix("torch."), dtype)
             for dtype in (torch.bfloat16, torch.float32)}
    yield paths
    for path in paths.values():
        (path / "model.safetensors").unlink()


PROBE = """
import json, resource, sys, tempfile, torch
from focuslib.loading import load_model
from focuslib.testing import write_tiny_checkpoint
dtype = getattr(torch, sys.argv[2])
with tempfile.TemporaryDirectory() as tmp:  # warm up: one-time costs go into the baseline
    write_tiny_checkpoint(tmp, "llada")
    load_model(tmp, dtype=dtype)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
model, _ = load_model(sys.argv[1], dtype=dtype)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
size = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps({"grew": peak - base, "model": size, "dtype": str(model.embed.weight.dtype)}))
"""


def _load_in_subprocess(path: Path, dtype: str) -> dict:
    proc = subprocess.run([sys.executable, "-c", PROBE, str(path), dtype], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("stored,load", [(torch.bfloat16, "bfloat16"), (torch.float32, "bfloat16"),
                                         (torch.bfloat16, "float32")])
def test_peak_host_memory_is_the_model_plus_one_tensor(medium, stored, load):
    ckpt = medium[stored]
    largest = max(t.numel() * t.element_size() for _, t in read_tensors(ckpt / "model.safetensors"))
    got = _load_in_subprocess(ckpt, load)
    model_bytes = got["model"]
    assert got["dtype"] == f"torch.{load}"
    if stored == getattr(torch, load):  # nothing to convert: no second copy of any tensor
        bound = model_bytes + MARGIN
    else:  # one tensor at a time in the stored dtype next to the converted model
        bound = model_bytes + largest + MARGIN
    assert got["grew"] <= bound, f"loading grew RSS by {got['grew'] / MB:.0f} MB, bound {bound / MB:.0f} MB"
    if load == "bfloat16":  # in particular the float32 model never exists
        fp32_model = 2 * model_bytes
        assert got["grew"] < fp32_model


def test_same_dtype_tensors_are_assigned_without_a_copy(tmp_path, monkeypatch):
    """Spy on the conversion: a bfloat16 checkpoint loaded in bfloat16 hands every tensor over as read."""
    save_checkpoint(Transformer(tiny_config("sdar")).init_weights(seed=0), tmp_path, dtype=torch.bfloat16)
    seen, convert = [], loading._to_target

    def spy(stored, dtype, device):
        out = convert(stored, dtype, device)
        seen.append((stored.dtype, out.dtype, out.data_ptr() == stored.data_ptr()))
        return out

    monkeypatch.setattr(loading, "_to_target", spy)
    model, _ = load_model(tmp_path, dtype=torch.bfloat16)
    assert seen and all(s == (torch.bfloat16, torch.bfloat16, True) for s in seen)
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    seen.clear()
    load_model(tmp_path)  # float32 on CPU by default: converted one tensor at a time
    assert all(s[:2] == (torch.bfloat16, torch.float32) for s in seen)


def test_read_tensors_matches_safetensors(tmp_path):
    from safetensors import safe_open

    path = write_tiny_checkpoint(tmp_path, "llada2") / "model.safetensors"
    with safe_open(path, framework="pt") as f:
        want = {k: f.get_tensor(k) for k in f.keys()}
    got = dict(read_tensors(path))
    assert got.keys() == want.keys()
    assert all(torch.equal(got[k], want[k]) and got[k].dtype == want[k].dtype for k in want)
    assert all(t.data_ptr() % 64 == 0 for t in got.values())  # own aligned buffers: no clone needed


def test_file_cut_after_the_header_check_is_named(tmp_path, monkeypatch):
    path = write_tiny_checkpoint(tmp_path, "sdar") / "model.safetensors"
    data, opened = path.read_bytes(), loading._open

    def cut_after_open(file, device="cpu"):  # the file shrinks between the header check and the read
        handle = opened(file, device)
        path.write_bytes(data[:-100])
        return handle

    monkeypatch.setattr(loading, "_open", cut_after_open)
    with pytest.raises(loading.CheckpointError, match="model.safetensors is truncated: tensor"):
        list(read_tensors(path))
