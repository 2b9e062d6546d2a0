"""`framecast build-engines`: build a model's runtime engines into the engine cache ahead
of serving (the Helm chart's init container and the GPU image's entrypoint run it).

Its defaults follow the server's environment (FRAMECAST_BACKEND, FRAMECAST_DEVICE,
FRAMECAST_ENGINE_CACHE_DIR), because the init container gets the server's env but only
`--model` and `--cache-dir` as flags: it must build exactly what the server will load.
"""

from __future__ import annotations

import argparse
import os
import time

BACKEND_NAMES = ("eager", "compile", "onnxruntime", "tensorrt")  # engine.runtime.BACKENDS, without torch


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build-engines", help="build a model's ONNX Runtime graphs or TensorRT engines ahead of serving",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="model name or directory (default: the embedded model)")
    p.add_argument("--cache-dir", default=None,
                   help="engine cache directory (default: $FRAMECAST_ENGINE_CACHE_DIR, else ~/.cache/framecast/engines)")
    p.add_argument("--backend", choices=BACKEND_NAMES, default=None,
                   help="runtime to build for (default: $FRAMECAST_BACKEND, else the model config's `runtime`); "
                        "eager and compile need no engines, so building for them does nothing")
    p.add_argument("--device", default=None,
                   help="device the server will run on, e.g. cpu or cuda (default: $FRAMECAST_DEVICE, else cuda "
                        "when a GPU is visible, else cpu: what the server picks)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="TensorRT: largest batch of sessions one engine call takes (default 8; larger batches "
                        "run in slices)")
    p.add_argument("--precision", choices=("fp8",), default=None,
                   help="TensorRT only: fp8 GEMMs through NVIDIA ModelOpt Q/DQ nodes (default: the model's dtype)")
    p.set_defaults(func=run_build_engines)


def run_build_engines(args: argparse.Namespace) -> int:
    from framecast import CommandError

    import torch

    from engine import EngineError, load_model
    from engine.model import default_device, model_dtype, resolve_model
    from engine.runtime import DEFAULT_MAX_BATCH, RuntimeOptions, RuntimeUnavailable, build_engines
    from engine.runtime.build import DTYPE_NAMES, EXPORTED_DECODERS

    device = args.device or os.environ.get("FRAMECAST_DEVICE") or default_device()
    cache_dir = args.cache_dir or os.environ.get("FRAMECAST_ENGINE_CACHE_DIR") or None
    backend = args.backend or os.environ.get("FRAMECAST_BACKEND") or None
    if backend is not None and backend not in BACKEND_NAMES:
        raise CommandError(f"FRAMECAST_BACKEND={backend!r} is not one of {', '.join(BACKEND_NAMES)}")
    if args.max_batch is not None and args.max_batch < 1:
        raise CommandError("--max-batch must be at least 1")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"device {device!r} was asked for but no CUDA GPU is visible here", 1)
    try:
        config, _ = resolve_model(args.model)
        backend = backend or config.runtime
        if backend in ("eager", "compile"):
            print(f"{config.name}: the {backend} backend needs no engines; nothing to build")
            return 0
        # The engines are built from the eager model, in the dtype the server will run the
        # backend in, and only the parts they export are loaded: never umT5 or a Wan VAE
        # (a 1.3B student's build needs its transformer alone).
        dtype = DTYPE_NAMES[model_dtype(config, device, backend=backend)]
        model = load_model(args.model, device, backend="eager", dtype=dtype, text_encoder=False,
                           decoder=config.decoder.kind in EXPORTED_DECODERS)
        options = RuntimeOptions(backend, cache_dir, args.max_batch or DEFAULT_MAX_BATCH, args.precision)
        started = time.perf_counter()
        built = build_engines(model, options)
    except RuntimeUnavailable as exc:
        raise CommandError(str(exc), 1) from None
    except EngineError as exc:
        raise CommandError(str(exc)) from None
    elapsed = time.perf_counter() - started
    for path in built:
        print(path)
    print(f"{model.name}: {len(built)} {backend} engine(s) ready in {elapsed:.1f} s")
    return 0
