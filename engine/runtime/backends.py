"""Step runners (one per backend), which a model's `Stepper` (engine/step.py) runs its
forwards through, and `RuntimeDecoder`, which stands in for `StreamModel.decoder`. Both
keep the eager code as their exact fallback for the shapes a static graph does not cover.

A step runner takes the named inputs of engine/step.py and returns
(flow [B, C, F, h, w], new_k, new_v [layers, B, N, H, Dh]).
"""

from __future__ import annotations

import logging
import time
from typing import Protocol

import torch
import torch.nn as nn

from ..cache import SinkWindow
from ..step import CachedStep

log = logging.getLogger(__name__)

class StepRunner(Protocol):
    name: str
    takes_no_mask: bool  # key_mask may be None (torch runners), or must be a tensor (graphs)

    def __call__(self, inputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]: ...


class GraphRunner(Protocol):
    """An ONNX Runtime session or a TensorRT engine: named torch tensors in and out."""

    def run(self, inputs: dict[str, torch.Tensor], outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]: ...

    def output_dtype(self, name: str) -> torch.dtype: ...


class TorchStepRunner:
    """The step function in torch: eager (the static-shape reference) or torch.compile'd.

    A compiled step has one graph per batch size and mask variant (a masked cache while
    a stream fills its window; no mask once it is full, which lets SDPA take its flash
    kernel). `warm_up` compiles the given batch sizes in both variants at load time, so
    no stream meets a compile stall halfway; other batch sizes compile on first use."""

    def __init__(self, transformer: nn.Module, policy: type[SinkWindow], attention_backend: str = "native",
                 compile: bool = False, **compile_options):
        self.name = "compile" if compile else "eager-static"
        self.takes_no_mask = True
        self.module = CachedStep(transformer, policy, attention_backend).eval()
        self.fn = torch.compile(self.module, **compile_options) if compile else self.module
        self.compile_seconds = 0.0

    def warm_up(self, config, batches: tuple[int, ...] = (1,)) -> float:
        """Run the step on example inputs of each batch size, masked and unmasked; returns
        the seconds it took (the compile time, for a compiled step)."""
        from ..step import example_inputs

        device, dtype = self.module.transformer.device, self.module.transformer.dtype
        started = time.perf_counter()
        with torch.no_grad():
            for batch in batches:
                inputs = example_inputs(config, batch, device, dtype)
                self.fn(**inputs)
                self.fn(**{**inputs, "key_mask": None})
        self.compile_seconds = time.perf_counter() - started
        log.info("%s step ready for batches %s in %.1f s", self.name, batches, self.compile_seconds)
        return self.compile_seconds

    def __call__(self, inputs):
        return self.fn(**inputs)


class GraphStepRunner:
    """A step graph (ONNX Runtime or TensorRT) with outputs allocated per call.
    chunk_tokens: N, the tokens of one full chunk (chunk_frames * tokens_per_frame)."""

    def __init__(self, name: str, runner: GraphRunner, chunk_tokens: int):
        self.name, self.runner, self.chunk_tokens = name, runner, chunk_tokens
        self.takes_no_mask = False

    def __call__(self, inputs):
        latents, cache_k = inputs["latents"], inputs["cache_k"]
        layers, batch, _, heads, head_dim = cache_k.shape
        kv_shape = (layers, batch, self.chunk_tokens, heads, head_dim)
        device = latents.device
        outputs = {
            "flow": torch.empty(latents.shape, dtype=self.runner.output_dtype("flow"), device=device),
            "new_k": torch.empty(kv_shape, dtype=self.runner.output_dtype("new_k"), device=device),
            "new_v": torch.empty(kv_shape, dtype=self.runner.output_dtype("new_v"), device=device),
        }
        self.runner.run(inputs, outputs)
        return outputs["flow"], outputs["new_k"], outputs["new_v"]


class RuntimeDecoder(nn.Module):
    """The streaming decoder through a graph runner, with the eager decoder's interface
    (init_decoder_state, decode_chunk) and its state type, so StreamSession is unchanged.
    Chunks of another frame count than the graph's run the eager decoder."""

    def __init__(self, eager: nn.Module, runner: GraphRunner, chunk_frames: int,
                 past_shapes: list[tuple[int, ...]]):
        super().__init__()
        self.eager = eager  # a submodule, so weights_bytes() still counts its weights
        self.runner, self.chunk_frames = runner, chunk_frames
        self.past_shapes = [shape[1:] for shape in past_shapes]  # without the batch axis

    def init_decoder_state(self, batch_size: int):
        return self.eager.init_decoder_state(batch_size)

    @torch.no_grad()
    def decode_chunk(self, latents: torch.Tensor, state):
        if latents.shape[2] != self.chunk_frames:
            return self.eager.decode_chunk(latents, state)
        from ..autoencoder import DecoderState

        state = state or self.init_decoder_state(latents.shape[0])
        b, _, f, h, w = latents.shape
        t, s = self.eager.config.temporal_compression, self.eager.config.spatial_compression
        device = latents.device
        inputs = {"latents": latents.float()}
        outputs = {"frames": torch.empty(b, 3, t * f, s * h, s * w, device=device,
                                         dtype=self.runner.output_dtype("frames"))}
        for i, shape in enumerate(self.past_shapes):
            past = state.past[i]
            inputs[f"past_{i}"] = past if past is not None else torch.zeros((b, *shape), device=device)
            outputs[f"new_past_{i}"] = torch.empty((b, *shape), device=device,
                                                   dtype=self.runner.output_dtype(f"new_past_{i}"))
        self.runner.run(inputs, outputs)
        past = [outputs[f"new_past_{i}"] for i in range(len(self.past_shapes))]
        return outputs["frames"], DecoderState(past, state.frames_decoded + t * f)
