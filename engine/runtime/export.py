"""ONNX export of the step function (engine/step.py) and the streaming decoder.

torch's dynamo exporter (torch.export, then ONNX opset 20, pinned: torch's default in 2.11
to 2.13, which ONNX Runtime >= 1.17 and TensorRT 10 parse; onnxscript's optimiser):
the TorchScript exporter cannot translate `aten::rms_norm`, which diffusers' Wan
attention uses for its q/k norms. The batch axis is dynamic (one graph serves 1..N
sessions); every other size is fixed by the model config. Attention is exported as
torch SDPA whatever `attention.backend` says: xformers and flash kernels are eager-only
and TensorRT fuses the exported SDPA pattern itself.
"""

from __future__ import annotations

import logging
import warnings
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn as nn

from ..cache import policy_class
from ..config import ModelConfig
from ..step import STEP_OUTPUTS, CachedStep, example_inputs
from ..transformer import CausalWanTransformer

log = logging.getLogger(__name__)

MAX_EXPORT_BATCH = 64  # upper bound the exporter may assume for the dynamic batch axis
OPSET = 20


def _batch_axis(name: str) -> int:
    return 1 if name in ("cache_k", "cache_v", "state_kv", "state_k", "new_k", "new_v") else 0


@contextmanager
def _quiet_exporter():
    """The exporter's optimiser logs every pass at INFO, and torch's exporter warns about
    torchvision ops and axis names that do not concern this graph; a server log should
    show that an engine is being built, not hundreds of lines of how."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript", "torch.onnx")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning)
            warnings.filterwarnings("ignore", message=".*axis name.*will not be used")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(module: nn.Module, kwargs: dict, input_names: list[str], output_names: list[str], path: Path) -> None:
    """kwargs: the forward's arguments, tensors or lists of tensors (flattened in order
    into `input_names`)."""
    batch = torch.export.Dim("batch", min=1, max=MAX_EXPORT_BATCH)
    dynamic = {name: [{0: batch} for _ in value] if isinstance(value, list) else {_batch_axis(name): batch}
               for name, value in kwargs.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad(), _quiet_exporter():
        program = torch.onnx.export(module, (), kwargs=kwargs, input_names=input_names, output_names=output_names,
                                    dynamic_shapes=dynamic, dynamo=True, optimize=True, verbose=False,
                                    opset_version=OPSET)
    # Weights beside the graph (external data): a 1.3B model is past protobuf's 2 GB.
    program.save(str(path), external_data=True)


def export_step(transformer: CausalWanTransformer, config: ModelConfig, path: Path, batch: int = 2) -> Path:
    """Write the step graph for `transformer` (on its device and in its dtype) to `path`."""
    step = CachedStep(transformer, policy_class(config.attention), attention_backend="native").eval()
    inputs = example_inputs(config, batch, transformer.device, transformer.dtype)
    _export(step, inputs, list(inputs), list(STEP_OUTPUTS), path)
    return path


# --- the decoder -------------------------------------------------------------------------

class DecoderStep(nn.Module):
    """ShapesAutoencoder.decode_chunk with its state as flat tensors:
    (latents [B, C, F, h, w], past: list of [B, c_i, h_i, w_i]) ->
    (frames [B, 3, 4F, 8h, 8w], new past_0 .. past_n). Zeros stand for the first chunk's
    missing past, which is what the eager decoder uses too."""

    def __init__(self, autoencoder: nn.Module):
        super().__init__()
        self.autoencoder = autoencoder

    def forward(self, latents, past):
        from ..autoencoder import DecoderState

        frames, state = self.autoencoder.decode_chunk(latents, DecoderState(list(past)))
        return (frames, *state.past)


def decoder_past_shapes(autoencoder: nn.Module, latent_shape: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Shapes of the decoder state for one chunk of `latent_shape` [B, C, F, h, w]."""
    probe = torch.zeros(latent_shape, device=next(autoencoder.parameters()).device)
    with torch.no_grad():
        _, state = autoencoder.decode_chunk(probe, None)
    return [tuple(p.shape) for p in state.past]


def export_decoder(autoencoder: nn.Module, latent_shape: tuple[int, ...], path: Path) -> Path:
    device = next(autoencoder.parameters()).device
    g = torch.Generator().manual_seed(0)
    shapes = decoder_past_shapes(autoencoder, latent_shape)
    kwargs = {"latents": torch.randn(latent_shape, generator=g).to(device),
              "past": [torch.randn(shape, generator=g).to(device) for shape in shapes]}
    n = len(shapes)
    _export(DecoderStep(autoencoder).eval(), kwargs, ["latents"] + [f"past_{i}" for i in range(n)],
            ["frames"] + [f"new_past_{i}" for i in range(n)], path)
    return path
