"""A loaded streaming model: config, transformer, text encoder, decoder, and the prompt
cache; `load_model` finds one by name or directory; `run_forwards` executes (and
batches) the forwards that sessions ask for."""

from __future__ import annotations

import logging
import math
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from safetensors import safe_open

from .cache import KVCache, policy_class
from .checkpoints.files import describe_mismatch, save_weights
from .components import build_decoder, build_text_encoder
from .config import AttentionConfig, LatentConfig, ModelConfig, TextEncoderConfig, TransformerConfig
from .errors import CheckpointError, InvalidConfig, InvalidInput, ModelNotFound
from .runtime import RuntimeOptions, attach_runtime
from .session import Forward, StreamSession, check_prompt
from .step import Stepper
from .transformer import CausalWanTransformer, build_transformer

log = logging.getLogger(__name__)

MODELS_DIR = Path(__file__).parent / "models"
DEFAULT_MODEL_DIR = MODELS_DIR / "shapes-default"

# Built-in configs that need no files: random weights, stand-in text encoder and decoder.
PRESETS: dict[str, ModelConfig] = {
    "tiny-random": ModelConfig(
        name="tiny-random",
        description="2-layer random-weight model with stand-in text encoder and decoder, for tests.",
        transformer=TransformerConfig(num_attention_heads=2, attention_head_dim=24, ffn_dim=96, num_layers=2,
                                      text_dim=32),
        attention=AttentionConfig(policy="sink_window", chunk_frames=2, sink_frames=2, window_frames=4),
        latent=LatentConfig(channels=16, height=64, width=64, fps=16.0),
        text_encoder=TextEncoderConfig(kind="hash", dim=32, max_tokens=16),
    ),
}
PROMPT_CACHE_SIZE = 64
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class StreamModel:
    def __init__(self, config: ModelConfig, transformer: CausalWanTransformer, text_encoder, decoder,
                 model_dir: Path | None = None):
        self.config = config
        self.transformer = transformer
        self.text_encoder = text_encoder
        self.decoder = decoder
        self.model_dir = model_dir
        self._contexts: OrderedDict[str, torch.Tensor] = OrderedDict()
        self._contexts_lock = threading.Lock()
        # (cache, rows, latents, timestep, context, commit) -> flow: one forward of a chunk
        # (engine/step.py). A runtime backend (engine/runtime) gives it a compiled runner.
        self.step_fn = Stepper(transformer, policy_class(config.attention), config.attention.backend)

    # --- facts ---------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.config.name

    @property
    def device(self) -> torch.device:
        return self.transformer.device

    @property
    def dtype(self) -> torch.dtype:
        return self.transformer.dtype

    @property
    def width(self) -> int:
        return self.config.latent.width

    @property
    def height(self) -> int:
        return self.config.latent.height

    @property
    def fps(self) -> float:
        return self.config.latent.fps

    @property
    def frames_per_chunk(self) -> int:
        return self.config.frames_per_chunk

    def weights_bytes(self) -> int:
        """Memory of every network the model holds: transformer, decoder, text encoder
        (whose network, for the transformers-backed encoders, is its `.model`)."""
        modules = [self.transformer]
        for part in (self.decoder, self.text_encoder, getattr(self.text_encoder, "model", None)):
            if isinstance(part, torch.nn.Module):
                modules.append(part)
        return sum(p.numel() * p.element_size() for m in modules for p in m.parameters())

    def session_memory_bytes(self) -> int:
        """One stream's KV cache, policy state and kept latents, from the config, without allocating."""
        cfg, att = self.config, self.config.attention
        latents = (att.sink_frames + att.window_frames) * cfg.latent.channels * \
            cfg.latent.latent_height * cfg.latent.latent_width * 4
        return KVCache.bytes_per_row(cfg, self.dtype) + latents

    # --- prompts ---------------------------------------------------------------------
    def read_prompt(self, prompt: str) -> str:
        return read_prompt(self.config, prompt)

    @torch.no_grad()
    def context_for(self, prompt: str) -> torch.Tensor:
        """[1, L, D] projected text context, cached per prompt (never re-encoded per chunk)."""
        with self._contexts_lock:
            if prompt in self._contexts:
                self._contexts.move_to_end(prompt)
                return self._contexts[prompt]
        states = self.text_encoder.encode([self.read_prompt(prompt)]).to(self.device, self.dtype)
        context = self.transformer.embed_text(states)
        with self._contexts_lock:
            self._contexts[prompt] = context
            while len(self._contexts) > PROMPT_CACHE_SIZE:
                self._contexts.popitem(last=False)
        return context

    # --- sessions ----------------------------------------------------------------------
    def new_cache(self, rows: int = 1) -> KVCache:
        return KVCache.for_model(self.config, self.transformer.rope_tables, rows, self.device, self.dtype)

    def open_session(self, prompt: str, seed: int | None = None) -> StreamSession:
        if self.config.frame_time:
            raise InvalidInput(f"model {self.name} is a frames-only teacher (frame_time): it draws whole clips "
                               "one frame at a time and cannot stream; serve a student distilled from it")
        return StreamSession(self, prompt, seed)

    @torch.no_grad()
    def run_forwards(self, requests: list[Forward]) -> list[torch.Tensor]:
        """Execute forwards of sessions that share one cache, batched by frame count.
        Returns each request's flow prediction [1, C, F, h, w] in order."""
        outputs: list[torch.Tensor | None] = [None] * len(requests)
        groups: dict[tuple[int, int], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((id(req.session.cache), req.latents.shape[2]), []).append(i)
        for (_, frames), idx in groups.items():
            batch = [requests[i] for i in idx]
            cache = batch[0].session.cache
            rows = [r.session.row for r in batch]
            latents = torch.cat([r.latents for r in batch])  # [B, C, F, h, w]
            timestep = torch.tensor([r.timestep for r in batch], device=latents.device)
            context = torch.cat([r.context for r in batch])
            flow = self.step_fn(cache, rows, latents, timestep, context, [r.commit for r in batch])
            for j, i in enumerate(idx):
                outputs[i] = flow[j : j + 1]
        return outputs  # type: ignore[return-value]

    def generate_clip(self, prompt: str, seconds: float, seed: int | None = None,
                      progress: Callable[[float], None] | None = None) -> np.ndarray:
        """A whole clip by streaming: uint8 [T, H, W, 3] with T = round(seconds * fps)."""
        if not seconds > 0:
            raise InvalidInput(f"seconds must be positive, got {seconds!r}")
        total = max(1, round(seconds * self.fps))
        chunks = math.ceil(total / self.frames_per_chunk)
        session = self.open_session(prompt, seed)
        frames = []
        for i in range(chunks):
            frames.append(session.next_chunk().frames)
            if progress is not None:
                progress((i + 1) / chunks)
        session.close()
        return np.concatenate(frames)[:total]


# --- loading and saving --------------------------------------------------------------

def read_prompt(config: ModelConfig, prompt: str) -> str:
    """What a model's text encoder is given for `prompt`: the prompt, or with `prompt_rewrite:
    shapes` its canonical Shapes caption (a prompt naming nothing of that world: itself)."""
    if config.prompt_rewrite == "shapes":
        from engine.shapes.captions import canonical_prompt

        return canonical_prompt(prompt) or prompt
    return prompt


def save_model(model_dir: str | Path, config: ModelConfig, transformer: torch.nn.Module,
               weights_dtype: str | None = None) -> None:
    """model.json and transformer.safetensors; `weights_dtype` (a DTYPES key) stores the floating
    weights in that dtype (default: as they are), which loading reads back into the model's own."""
    model_dir = Path(model_dir)
    if weights_dtype is not None and weights_dtype not in DTYPES:
        raise ValueError(f"weights_dtype {weights_dtype!r}: one of {', '.join(DTYPES)}")
    model_dir.mkdir(parents=True, exist_ok=True)
    config.save(model_dir / "model.json")
    cast = DTYPES.get(weights_dtype)
    state = {k: (v.to(cast) if cast is not None and v.is_floating_point() else v).detach().contiguous().cpu()
             for k, v in transformer.state_dict().items()}
    save_weights(state, model_dir / "transformer.safetensors", metadata={"format": "diffusers-wan"})


def load_transformer_weights(transformer: torch.nn.Module, path: Path) -> None:
    """Strict load with a clear error naming what is wrong. Tensor by tensor from the
    memory-mapped file into the parameters (each keeps its own dtype: a bfloat16 file fills
    the float32 `scale_shift_table`s exactly), so a 1.3B model never holds a second full
    copy of its weights while loading."""
    if not path.is_file():
        raise CheckpointError(f"{path}: weights file is missing")
    try:
        with safe_open(path, framework="pt") as f:
            found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
            expected = transformer.state_dict()
            problem = describe_mismatch(found, {k: tuple(v.shape) for k, v in expected.items()})
            if problem:
                raise CheckpointError(f"{path}: {problem}")
            with torch.no_grad():
                for name, target in expected.items():
                    target.copy_(f.get_tensor(name))
    except CheckpointError:
        raise
    except Exception as exc:  # safetensors raises its own error types for truncated files
        raise CheckpointError(f"{path}: cannot read safetensors ({exc})") from exc


def resolve_model(name_or_dir: str | None) -> tuple[ModelConfig, Path | None]:
    if name_or_dir in (None, "", "default"):
        if (DEFAULT_MODEL_DIR / "model.json").is_file() and (DEFAULT_MODEL_DIR / "transformer.safetensors").is_file():
            return ModelConfig.load(DEFAULT_MODEL_DIR / "model.json"), DEFAULT_MODEL_DIR
        log.warning("the embedded default model is not built yet; serving tiny-random")
        return PRESETS["tiny-random"], None
    if name_or_dir in PRESETS:
        return PRESETS[name_or_dir], None
    path = Path(name_or_dir)
    if not path.is_dir() and (MODELS_DIR / name_or_dir).is_dir():
        path = MODELS_DIR / name_or_dir
    if not (path / "model.json").is_file():
        known = sorted(PRESETS) + sorted(p.name for p in MODELS_DIR.glob("*/model.json"))
        raise ModelNotFound(f"no model named {name_or_dir!r} (no {path / 'model.json'}); "
                            f"built-in: {', '.join(known) or 'none'}")
    return ModelConfig.load(path / "model.json"), path


def default_device() -> str:
    """Where a model runs when nobody says: the GPU when one is visible."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively (AVX512-BF16 or AMX), as oneDNN sees it."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):  # a torch build without oneDNN
        return False


def model_dtype(config: ModelConfig, device: str | torch.device, override: str | None = None,
                backend: str | None = None) -> torch.dtype:
    """The dtype a model's transformer, umT5 encoder, Wan VAE or TAEHV decoder run in:
    `override` if given, else the config's (bfloat16 for converted checkpoints, float32 for
    the default model), on a GPU as it is. On a CPU, bfloat16 only where it is faster or
    asked for (`override`), and never float16:

    - with bfloat16 instructions (AVX512-BF16, AMX) a Wan2.1-1.3B-width step runs 1.2-2.9x
      faster in bfloat16 than in float32, and TAEHV 1.7-2.2x; the weights take half the
      memory (a 1.3B model + umT5 needs ~14 GB instead of ~28);
    - without them oneDNN emulates bfloat16 (0.6-0.8x for the step, 0.44x for TAEHV):
      float32 there;
    - float16 has no fast CPU kernels: float32;
    - ONNX Runtime's CPU provider has no bfloat16 MatMul: float32 for `backend` onnxruntime.

    The default model is float32 in its config, and stays so: its transformer streams at
    0.93-1.02x in bfloat16 on a CPU. Figures and the commands that printed them:
    docs/backends.md, "Precision on a CPU"."""
    name = override or config.dtype
    if name not in DTYPES:
        raise InvalidConfig(f"unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    if torch.device(device).type != "cpu" or name == "float32":
        return DTYPES[name]
    if name == "float16":
        return torch.float32
    if override is None and (not cpu_has_bf16() or (backend or config.runtime) == "onnxruntime"):
        return torch.float32
    return torch.bfloat16


def load_model(name_or_dir: str | None = None, device: str | None = None, backend: str | None = None,
               engine_cache_dir: str | Path | None = None, dtype: str | None = None,
               text_encoder: bool = True, decoder: bool = True) -> StreamModel:
    """device: None picks the GPU when present (`default_device`); dtype: None picks the
    config's (`model_dtype`); backend: a runtime (eager, compile, onnxruntime, tensorrt)
    overriding the config's `runtime`; engine_cache_dir: where built engines live (default
    ~/.cache/framecast/engines). text_encoder / decoder False leave those parts out (None):
    `framecast build-engines` exports neither umT5 nor a Wan VAE, so it does not load them."""
    config, model_dir = resolve_model(name_or_dir)
    device = device or default_device()
    run_dtype = model_dtype(config, device, dtype, backend)
    transformer = build_transformer(config, device=device, dtype=run_dtype, seed=0)
    if model_dir is not None:
        load_transformer_weights(transformer, model_dir / "transformer.safetensors")
    encoder = build_text_encoder(config, model_dir, device, run_dtype) if text_encoder else None
    latent_decoder = build_decoder(config, model_dir, device, run_dtype) if decoder else None
    model = StreamModel(config, transformer, encoder, latent_decoder, model_dir)
    return attach_runtime(model, RuntimeOptions(backend or config.runtime, engine_cache_dir))
