"""Chat prompts: a task's question as the user turn of the checkpoint's own chat template.

Instruct and chat checkpoints (LLaDA-8B-Instruct, Dream-v0-Instruct-7B, SDAR-*-Chat,
LLaDA2.0-mini) are evaluated by their authors with the question wrapped in the tokenizer's
chat template, ending in the assistant's generation prompt; the file-backed tasks do the
same with `chat=True` (docs/design.md, "Chat templates").

    model, tok = load_model("/data/SDAR-8B-Chat-b32")
    apply_chat_template(tok, "What is 2 + 2?")
    # '<|im_start|>user\\nWhat is 2 + 2?<|im_end|>\\n<|im_start|>assistant\\n'
"""
from __future__ import annotations

from typing import Any


def apply_chat_template(tokenizer: Any, user_text: str) -> str:
    """`user_text` as the one user turn of `tokenizer`'s chat template, plus the assistant's generation prompt.

    The template comes from the checkpoint (`chat_template` in tokenizer_config.json or a
    `chat_template.jinja` file; `load_model` / `load_tokenizer` keep it). The result holds
    the template's special tokens as text (e.g. LLaDA's `<|startoftext|>`); the decoder
    encodes prompts without adding special tokens, so they appear exactly once.
    Raises ValueError when there is no tokenizer or it has no chat template.
    """
    if not isinstance(user_text, str):
        raise TypeError(f"user_text must be a str, got {type(user_text).__name__}")
    if tokenizer is None:
        raise ValueError("chat=True needs the checkpoint's tokenizer (tokenizer=...; load_model returns it), "
                         "whose chat_template wraps the question")
    if not callable(getattr(tokenizer, "apply_chat_template", None)):
        raise ValueError(f"chat=True needs a transformers tokenizer with a chat_template, got "
                         f"{type(tokenizer).__name__} (a raw tokenizers.Tokenizer has none)")
    if not getattr(tokenizer, "chat_template", None):
        where = getattr(tokenizer, "name_or_path", "") or "this tokenizer"
        raise ValueError(f"{where} has no chat_template: its checkpoint has neither a `chat_template` entry in "
                         "tokenizer_config.json nor a chat_template.jinja file; use chat=False (plain prompts) "
                         "or set tokenizer.chat_template")
    text = tokenizer.apply_chat_template([{"role": "user", "content": user_text}], tokenize=False,
                                         add_generation_prompt=True)
    if not isinstance(text, str):  # some transformers versions return a one-element list for one conversation
        text = text[0]
    return text


__all__ = ["apply_chat_template"]
