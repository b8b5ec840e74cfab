"""focuslib: composable decoding for diffusion LLMs (unmasking x eviction x budget policies)."""
from focuslib.decoder import DecodeStats, DiffusionDecoder, GenerationOutput
from focuslib.evaluate import EvalResult, evaluate
from focuslib.loading import bundled_checkpoints, load_model, save_checkpoint
from focuslib.model import ModelConfig, MoEConfig, Transformer
from focuslib.trace import load_trace, save_trace

__all__ = [
    "DecodeStats", "DiffusionDecoder", "EvalResult", "GenerationOutput", "ModelConfig", "MoEConfig", "Transformer",
    "bundled_checkpoints", "evaluate", "load_model", "load_trace", "save_checkpoint", "save_trace",
]
