"""Choosing a runtime for a loaded model, and building its engines ahead of serving.

    attach_runtime(model, "onnxruntime", cache_dir)   # what load_model(..., backend=) does
    build_engines(model, "tensorrt", cache_dir)       # what `framecast build-engines` does

eager        the reference (engine/step.py, writing the cache in place). Nothing to build.
compile      torch.compile of the static step, compiled at load for single streams
             (`compile_batches`; other batch sizes compile on first use). Nothing to
             build ahead: inductor's own cache (~/.cache or /tmp) makes restarts faster.
onnxruntime  the exported step (and decoder) graphs, optimised by ONNX Runtime, from the
             engine cache; built at load time if missing (a start-up cost, never a
             request's): on a CPU this is seconds to a minute.
tensorrt     TensorRT plans from the engine cache. A missing plan is an error at load:
             builds take minutes on a GPU and belong in `framecast build-engines`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..cache import KVCache, policy_class
from ..config import RUNTIMES, Runtime
from ..errors import InvalidConfig
from ..step import Stepper
from . import onnxrt
from .backends import GraphStepRunner, RuntimeDecoder, TorchStepRunner
from .engine_cache import EngineCache, EngineKey, device_name, weights_hash
from .errors import EngineNotBuilt, RuntimeUnavailable

if TYPE_CHECKING:
    from ..model import StreamModel

log = logging.getLogger(__name__)

BACKENDS = RUNTIMES
GRAPH_BACKENDS = ("onnxruntime", "tensorrt")
DEFAULT_MAX_BATCH = 8  # TensorRT profile's largest batch; larger batches run in slices
DTYPE_NAMES = {torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16"}


@dataclass(frozen=True)
class RuntimeOptions:
    backend: Runtime
    cache_dir: Path | None = None  # None: ~/.cache/framecast/engines
    max_batch: int = DEFAULT_MAX_BATCH
    precision: str | None = None  # None: the model's dtype; "fp8": TensorRT with ModelOpt Q/DQ
    compile_batches: tuple[int, ...] = (1,)  # torch.compile: batch sizes compiled at load


def check_backend(name: str) -> Runtime:
    if name not in BACKENDS:
        raise InvalidConfig(f"unknown runtime backend {name!r}; choose one of {', '.join(BACKENDS)}")
    return name  # type: ignore[return-value]


def check_attention_backend(name: str) -> None:
    """Fail at load, not on the first forward, when the attention backend cannot run here
    (xformers comes with the `gpu` extra only)."""
    if name == "native":
        return
    from diffusers.models import attention_dispatch as dispatch

    try:
        backend = dispatch.AttentionBackendName(name)
    except ValueError:
        known = ", ".join(b.value for b in dispatch.AttentionBackendName if not b.value.startswith("_"))
        raise InvalidConfig(f"unknown attention backend {name!r}; diffusers knows: {known}") from None
    try:
        # diffusers' own availability check (private, but it is what set_attention_backend runs)
        dispatch._check_attention_backend_requirements(backend)
    except RuntimeError as exc:
        raise RuntimeUnavailable(f"attention backend {name!r} cannot run here: {exc}") from None


# --- keys ----------------------------------------------------------------------------------

def _config_hash(model: "StreamModel") -> str:
    # The runtime choice is not part of what the graph computes; everything else is.
    config = model.config.model_dump(mode="json", exclude={"runtime"})
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _versions(backend: str) -> dict[str, str]:
    versions = {"torch": torch.__version__}
    if backend == "onnxruntime":
        versions["onnxruntime"] = onnxrt.version()
    else:
        from . import tensorrt

        versions["tensorrt"] = tensorrt.version()
    return versions


def _precision(model: "StreamModel", options: RuntimeOptions) -> str:
    if options.precision in (None, DTYPE_NAMES[model.dtype]):
        return DTYPE_NAMES[model.dtype]
    if options.precision == "fp8" and options.backend == "tensorrt":
        return "fp8"
    raise InvalidConfig(f"precision {options.precision!r} is not available for {options.backend} with a "
                        f"{DTYPE_NAMES[model.dtype]} model (fp8 is a TensorRT option; other precisions follow "
                        "the model's dtype)")


def _batch_shape(options: RuntimeOptions) -> str | int:
    # ONNX Runtime runs any batch; a TensorRT plan is built for 1..max_batch.
    return "dynamic" if options.backend == "onnxruntime" else options.max_batch


def step_key(model: "StreamModel", options: RuntimeOptions, transformer_hash: str | None = None) -> EngineKey:
    cfg, t, att = model.config, model.config.transformer, model.config.attention
    shapes = {
        "batch": _batch_shape(options),
        "latent": [cfg.latent.channels, att.chunk_frames, cfg.latent.latent_height, cfg.latent.latent_width],
        "context_tokens": cfg.text_encoder.max_tokens,
        "slots": KVCache.slot_frames(att) * cfg.tokens_per_frame,
        "layers_heads_head_dim": [t.num_layers, t.num_attention_heads, t.attention_head_dim],
        "state_inputs": list(policy_class(att).state_names),
    }
    weights = transformer_hash or weights_hash(model.transformer)
    model_hash = hashlib.sha256(f"{weights}|{_config_hash(model)}".encode()).hexdigest()
    return EngineKey("step", options.backend, model.name, model_hash, shapes, _precision(model, options),
                     device_name(model.device), _versions(options.backend))


EXPORTED_DECODERS = ("shapes_ae",)  # decoder kinds (DecoderConfig.kind) that export; the rest stay eager


def exportable_decoder(model: "StreamModel"):
    """The model's decoder if it is one the runtime exports (the default model's
    ShapesAutoencoder), else None: other decoders stay eager."""
    try:
        from ..autoencoder import ShapesAutoencoder
    except ImportError:
        return None
    decoder = model.decoder.eager if isinstance(model.decoder, RuntimeDecoder) else model.decoder
    return decoder if isinstance(decoder, ShapesAutoencoder) else None


def _latent_shape(model: "StreamModel", batch: int = 1) -> tuple[int, ...]:
    lat, att = model.config.latent, model.config.attention
    return (batch, lat.channels, att.chunk_frames, lat.latent_height, lat.latent_width)


def decoder_key(model: "StreamModel", decoder, options: RuntimeOptions) -> EngineKey:
    weights = weights_hash(decoder)
    config_text = decoder.config.model_dump_json()
    model_hash = hashlib.sha256(f"{weights}|{config_text}".encode()).hexdigest()
    shapes = {"batch": _batch_shape(options), "latent": list(_latent_shape(model)[1:])}
    return EngineKey("decoder", options.backend, model.name, model_hash, shapes, "float32",
                     device_name(model.device), _versions(options.backend))


# --- building ------------------------------------------------------------------------------

def _build_graph(directory: Path, export, options: RuntimeOptions, device: torch.device, batch_axes,
                 calibration=None, precision: str = "") -> None:
    """Export to ONNX in `directory`, then optimise (ONNX Runtime) or build a plan (TensorRT)."""
    onnx_path = export(directory / "graph.onnx")
    if options.backend == "onnxruntime":
        onnxrt.optimise(onnx_path, directory / "graph.ort.onnx", device)
        return
    from . import tensorrt

    if precision == "fp8":
        onnx_path = tensorrt.quantize_fp8(onnx_path, directory / "graph.fp8.onnx", calibration)
    tensorrt.build_engine(onnx_path, directory / "graph.plan", batch_axes, options.max_batch)


def _require_backend(options: RuntimeOptions, device: torch.device) -> None:
    if options.backend == "tensorrt":
        from . import tensorrt

        tensorrt.import_tensorrt()
        tensorrt.require_gpu(device)
    else:
        onnxrt.providers_for(device)


def build_step(model: "StreamModel", options: RuntimeOptions, key: EngineKey) -> Path:
    from ..step import example_inputs
    from .export import export_step

    cache = EngineCache(options.cache_dir)
    found = cache.find(key)
    if found is not None:
        return found
    log.info("building the %s step engine for %s (%s)", options.backend, model.name, key.digest())
    started = time.perf_counter()
    batch_axes = {name: 1 for name in ("cache_k", "cache_v", "state_kv", "state_k")}
    calibration = example_inputs(model.config, 1, model.device, model.dtype) if key.precision == "fp8" else None
    with cache.building(key) as directory:
        _build_graph(directory, lambda path: export_step(model.transformer, model.config, path), options,
                     model.device, batch_axes, calibration, key.precision)
    log.info("built the step engine in %.1f s", time.perf_counter() - started)
    return key.directory(cache.dir)


def build_decoder(model: "StreamModel", options: RuntimeOptions, key: EngineKey) -> Path:
    from .export import export_decoder

    cache = EngineCache(options.cache_dir)
    found = cache.find(key)
    if found is not None:
        return found
    decoder = exportable_decoder(model)
    with cache.building(key) as directory:
        _build_graph(directory, lambda path: export_decoder(decoder, _latent_shape(model), path), options,
                     model.device, {})
    return key.directory(cache.dir)


def build_engines(model: "StreamModel", options: RuntimeOptions) -> list[Path]:
    """Build (or find) every engine `options.backend` needs for `model`; [] for eager and
    compile, which need none."""
    if options.backend not in GRAPH_BACKENDS:
        return []
    _require_backend(options, model.device)
    built = [build_step(model, options, step_key(model, options))]
    decoder = exportable_decoder(model)
    if decoder is not None:
        built.append(build_decoder(model, options, decoder_key(model, decoder, options)))
    return built


# --- attaching -----------------------------------------------------------------------------

def _graph_runner(options: RuntimeOptions, directory: Path, device: torch.device):
    if options.backend == "onnxruntime":
        return onnxrt.OnnxRuntimeRunner(directory / "graph.ort.onnx", device)
    from .tensorrt import TensorRTRunner

    return TensorRTRunner(directory / "graph.plan", device)


def _find_or_build(model: "StreamModel", options: RuntimeOptions, key: EngineKey, build) -> Path:
    found = EngineCache(options.cache_dir).find(key)
    if found is not None:
        return found
    if options.backend == "tensorrt":
        raise EngineNotBuilt(
            f"no TensorRT {key.part} engine for model {model.name!r} on {key.device} in "
            f"{EngineCache(options.cache_dir).dir} (key {key.digest()}); build it before serving: "
            f"framecast build-engines --model <model> --cache-dir {EngineCache(options.cache_dir).dir} "
            "--backend tensorrt")
    return build(model, options, key)


def attach_runtime(model: "StreamModel", options: RuntimeOptions) -> "StreamModel":
    """Route the model's forwards (and, where it exports, its decoder) through the chosen
    backend. Everything that can fail (a missing package, GPU or engine) fails here, at
    load time."""
    backend = check_backend(options.backend)
    check_attention_backend(model.config.attention.backend)
    if backend == "eager":
        return model
    att = model.config.attention
    if not att.streaming:
        raise InvalidConfig("runtime backends run streaming students; a 'full' attention model runs eager")
    policy = policy_class(att)
    chunk_tokens = att.chunk_frames * model.config.tokens_per_frame
    if backend == "compile":
        runner = TorchStepRunner(model.transformer, policy, att.backend, compile=True)
        runner.warm_up(model.config, options.compile_batches)  # at load, not on a stream's chunk
    else:
        _require_backend(options, model.device)
        directory = _find_or_build(model, options, step_key(model, options), build_step)
        runner = GraphStepRunner(backend, _graph_runner(options, directory, model.device), chunk_tokens)
    model.step_fn = Stepper(model.transformer, policy, att.backend, runner, options.max_batch)
    if backend == "compile":
        return model
    decoder = exportable_decoder(model)
    if decoder is not None:
        from .export import decoder_past_shapes

        directory = _find_or_build(model, options, decoder_key(model, decoder, options), build_decoder)
        model.decoder = RuntimeDecoder(decoder, _graph_runner(options, directory, model.device),
                                       model.config.attention.chunk_frames,
                                       decoder_past_shapes(decoder, _latent_shape(model)))
    return model
