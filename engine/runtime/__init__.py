"""Runtime backends: how a loaded model's denoising steps (and decoder) execute.

    model = load_model("tiny-random", backend="onnxruntime")   # or the config's `runtime`
    build_engines(model, RuntimeOptions("tensorrt", cache_dir))  # ahead of serving

eager (reference), compile (torch.compile), onnxruntime (CPU/CUDA providers) and
tensorrt; see build.py for what each needs, engine/step.py for the step they run,
and docs/backends.md for figures.
"""

from ..lazy import lazy_attributes

# Names resolve on first use, so importing a light submodule of this package does not load torch.
_LAZY = {
    "GraphStepRunner": ".backends",
    "RuntimeDecoder": ".backends",
    "TorchStepRunner": ".backends",
    "BACKENDS": ".build",
    "DEFAULT_MAX_BATCH": ".build",
    "RuntimeOptions": ".build",
    "attach_runtime": ".build",
    "build_engines": ".build",
    "check_attention_backend": ".build",
    "decoder_key": ".build",
    "step_key": ".build",
    "EngineCache": ".engine_cache",
    "EngineKey": ".engine_cache",
    "default_cache_dir": ".engine_cache",
    "weights_hash": ".engine_cache",
    "EngineBuildFailed": ".errors",
    "EngineNotBuilt": ".errors",
    "RuntimeUnavailable": ".errors",
}
__getattr__, __dir__ = lazy_attributes(__name__, _LAZY, globals())


__all__ = ["BACKENDS", "DEFAULT_MAX_BATCH", "RuntimeOptions", "attach_runtime", "build_engines",
           "check_attention_backend", "step_key", "decoder_key", "EngineCache", "EngineKey", "default_cache_dir",
           "weights_hash", "RuntimeUnavailable", "EngineNotBuilt", "EngineBuildFailed", "RuntimeDecoder",
           "TorchStepRunner", "GraphStepRunner"]
