"""Wan's text encoder: umT5-xxl's encoder through `transformers`, from a local folder only.

    enc = UMT5TextEncoder("Wan2.1-T2V-1.3B-Diffusers", max_tokens=512, device="cuda")
    context = enc.encode(["a corgi surfing a wave at sunset"])   # float32 [1, 512, 4096]

As Wan (and diffusers' WanPipeline) encode a prompt: clean its whitespace, tokenize to
`max_tokens` with the end-of-sequence token, run the encoder with the attention mask, and
set every position past the prompt's own tokens to exactly zero (the transformer's
cross-attention sees those zeros; the students were trained on them).
"""

from __future__ import annotations

import html
import re
from pathlib import Path

import torch

from .errors import CheckpointError


def clean_prompt(text: str) -> str:
    """Wan's prompt_clean without ftfy: unescape HTML entities, collapse whitespace."""
    return re.sub(r"\s+", " ", html.unescape(html.unescape(text))).strip()


def umt5_folders(path: Path) -> tuple[Path, Path]:
    """(encoder folder, tokenizer folder) from a diffusers Wan root (text_encoder/ and
    tokenizer/ inside) or from an encoder folder holding its tokenizer files too."""
    path = Path(path)
    if (path / "text_encoder").is_dir():
        return path / "text_encoder", path / "tokenizer"
    if (path / "config.json").is_file():
        sibling = path.parent / "tokenizer"
        return path, sibling if sibling.is_dir() and not (path / "tokenizer_config.json").is_file() else path
    raise CheckpointError(f"{path}: no umT5 text encoder here (expected text_encoder/ and tokenizer/, "
                          "or a folder with config.json and tokenizer files)")


class UMT5TextEncoder:
    """Prompts -> umT5 token states [B, max_tokens, d_model], zero past each prompt."""

    def __init__(self, path: str | Path, max_tokens: int = 512, device: str = "cpu",
                 dtype: torch.dtype = torch.float32):
        encoder_dir, tokenizer_dir = umt5_folders(Path(path))
        for folder in (encoder_dir, tokenizer_dir):
            if not folder.is_dir():
                raise CheckpointError(f"{folder}: missing (the umT5 encoder needs its weights and its tokenizer)")
        from transformers import AutoTokenizer, UMT5EncoderModel  # heavy: import on use

        from .components import from_local

        try:
            self.tokenizer = from_local(AutoTokenizer, tokenizer_dir)
            self.model = from_local(UMT5EncoderModel, encoder_dir, dtype=dtype)
        except (OSError, ValueError) as exc:
            raise CheckpointError(f"{encoder_dir}: cannot load the umT5 encoder or its tokenizer ({exc})") from exc
        self.model.to(device).eval().requires_grad_(False)
        self.device = torch.device(device)
        self.dim: int = int(self.model.config.d_model)
        self.max_tokens = max_tokens

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """-> float32 [B, max_tokens, dim]; exactly zero past each prompt's tokens (its
        end-of-sequence token included in the prompt); longer prompts are truncated."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a string")
        batch = self.tokenizer([clean_prompt(p) for p in prompts], padding="max_length", truncation=True,
                               max_length=self.max_tokens, add_special_tokens=True, return_attention_mask=True,
                               return_tensors="pt").to(self.device)
        hidden = self.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, max_tokens, 1]
        return (hidden * mask).float()
