"""Runtime backends: how a loaded model's denoising steps (and decoder) execute.

    model = load_model("tiny-random", backend="onnxruntime")   # or the config's `runtime`
    build_engines(model, RuntimeOptions("tensorrt", cache_dir))  # ahead of serving

eager (reference), compile (torch.compile), onnxruntime (CPU/CUDA providers) and
tensorrt; see build.py for what each needs, step.py for the static-shape step they run,
and docs/backends.md for figures.
"""

from .backends import GraphStepRunner, RuntimeDecoder, RuntimeStep, TorchStepRunner
from .build import (BACKENDS, DEFAULT_MAX_BATCH, RuntimeOptions, attach_runtime, build_engines,
                    check_attention_backend, decoder_key, step_key)
from .engine_cache import EngineCache, EngineKey, default_cache_dir, weights_hash
from .errors import EngineBuildFailed, EngineNotBuilt, RuntimeUnavailable
from .step import CachedStep, example_inputs, step_inputs, store_new_kv

__all__ = ["BACKENDS", "DEFAULT_MAX_BATCH", "RuntimeOptions", "attach_runtime", "build_engines",
           "check_attention_backend", "step_key", "decoder_key", "EngineCache", "EngineKey", "default_cache_dir",
           "weights_hash", "RuntimeUnavailable", "EngineNotBuilt", "EngineBuildFailed", "CachedStep",
           "example_inputs", "step_inputs", "store_new_kv", "RuntimeStep", "RuntimeDecoder", "TorchStepRunner",
           "GraphStepRunner"]
