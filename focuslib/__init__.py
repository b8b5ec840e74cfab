"""focuslib: composable decoding for diffusion LLMs."""
from focuslib.model import ModelConfig, MoEConfig, Transformer

__all__ = ["ModelConfig", "MoEConfig", "Transformer"]
