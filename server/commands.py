"""`framecast serve`: run the server; `framecast build-engines`: build the engines it will
load, ahead of serving (the Helm chart's init container and the GPU image's entrypoint run
it). Both read the same FRAMECAST_* settings (server/settings.py), so build-engines builds
exactly what serve loads. Registration imports nothing heavy; serve loads the model before
binding, so a bad model path fails fast with a clean message."""

from __future__ import annotations

import argparse
import signal
from typing import Any

from engine.config import RUNTIMES
from framecast import CommandError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("serve", help="serve live streams and video jobs over HTTP/WebSocket",
                              description="Serve a model: WebSocket /v1/realtime/video, HTTP /v1/videos, "
                                          "/v1/models, /healthz, /readyz, /metrics. Every flag overrides the "
                                          "matching FRAMECAST_* environment variable.")
    p.add_argument("--model", help="model name or directory (default: the embedded default model)")
    p.add_argument("--device", help="torch device, e.g. cpu or cuda (default: cuda when a GPU is visible, else cpu)")
    p.add_argument("--backend", choices=RUNTIMES,
                   help="runtime for the denoising steps (default: the model's `runtime`)")
    p.add_argument("--engine-cache-dir", help="where `framecast build-engines` put the engines")
    p.add_argument("--host", help="address to listen on (default: 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default: 8000)")
    p.add_argument("--api-key", dest="api_keys", action="append",
                   help="accept this bearer key (repeat for several); none = no authentication")
    p.add_argument("--max-sessions", type=int,
                   help="concurrent streams and running clip jobs (default: as many as this machine generates "
                        "in real time, measured at warm-up, within the memory budget)")
    p.add_argument("--memory-budget", dest="memory_budget_bytes", type=int,
                   help="bytes for weights + per-session memory (default: the weights + 80%% of the device "
                        "memory free once they are loaded); sessions beyond it get server_full")
    p.add_argument("--sessions-per-key", type=int, help="concurrent streams per API key (default: 4)")
    p.add_argument("--sessions-per-address", type=int,
                   help="concurrent streams per client address when no API keys are set (default: 4; 0 = no limit)")
    p.add_argument("--stall-timeout", dest="stall_timeout_s", type=float,
                   help="end a stream whose client reads nothing for this many seconds (default: 30)")
    p.add_argument("--max-body-bytes", type=int, help="largest HTTP request body (default: 1 MiB)")
    p.add_argument("--max-pending-jobs", type=int, help="queued + running clip jobs in all (default: 32)")
    p.add_argument("--pending-jobs-per-key", type=int,
                   help="queued + running clip jobs per API key, or per address without keys (default: 8)")
    p.add_argument("--forwarded-allow-ips",
                   help="proxies whose X-Forwarded-For is trusted, comma-separated or * (default: 127.0.0.1)")
    p.add_argument("--max-stream-seconds", type=float, help="longest stream (default: 3600)")
    p.add_argument("--max-job-seconds", type=float, help="longest clip a job may ask for (default: 60)")
    p.add_argument("--data-dir", help="where job records and clips are kept (default: ~/.local/share/framecast)")
    p.add_argument("--job-store", dest="job_store_url",
                   help="sqlite:///PATH or redis://HOST:PORT/DB (default: SQLite under --data-dir)")
    p.add_argument("--job-workers", type=int, help="clip jobs generated at once (default: 1)")
    p.add_argument("--no-batching", dest="batching", action="store_const", const=False,
                   help="run each stream's forwards separately instead of batching them")
    p.add_argument("--no-warmup", dest="warmup", action="store_const", const=False,
                   help="skip generating one chunk before /readyz says ready")
    p.add_argument("--ice-server", dest="webrtc_ice_servers", action="append",
                   help="STUN/TURN server URL for WebRTC, e.g. stun:stun.example.org:3478 (repeatable; TURN "
                        "credentials go in FRAMECAST_WEBRTC_ICE_SERVERS as JSON; default: host candidates only)")
    p.add_argument("--webrtc-codec", choices=["h264", "vp8"],
                   help="video codec preferred when the WebRTC peer offers both (default: h264)")
    p.add_argument("--log-level", choices=["critical", "error", "warning", "info", "debug"],
                   help="log level (default: info)")
    p.set_defaults(func=serve)
    register_build_engines(subparsers)


def register_build_engines(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("build-engines", help="build a model's ONNX Runtime graphs or TensorRT engines ahead "
                                                    "of serving", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="model name or directory (default: $FRAMECAST_MODEL, else the embedded model)")
    p.add_argument("--cache-dir", dest="engine_cache_dir",
                   help="engine cache directory (default: $FRAMECAST_ENGINE_CACHE_DIR, else ~/.cache/framecast/engines)")
    p.add_argument("--backend", choices=RUNTIMES,
                   help="runtime to build for (default: $FRAMECAST_BACKEND, else the model config's `runtime`); "
                        "eager and compile need no engines, so building for them does nothing")
    p.add_argument("--device", help="device the server will run on (default: $FRAMECAST_DEVICE, else cuda when a "
                                    "GPU is visible, else cpu: what the server picks)")
    p.add_argument("--max-batch", type=int, default=None,
                   help="TensorRT: largest batch of sessions one engine call takes (default 8; larger batches "
                        "run in slices)")
    p.add_argument("--precision", choices=("fp8",), default=None,
                   help="TensorRT only: fp8 GEMMs through NVIDIA ModelOpt Q/DQ nodes (default: the model's dtype)")
    p.set_defaults(func=build_engines)


def _settings(args: argparse.Namespace):
    from pydantic import ValidationError

    from .settings import Settings

    fields = set(Settings.model_fields)
    overrides: dict[str, Any] = {k: v for k, v in vars(args).items() if k in fields and v is not None}
    try:
        return Settings(**overrides)  # init arguments win over FRAMECAST_* variables
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise CommandError(f"invalid settings: {problems}") from None


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    from .app import bind_socket, create_app, uvicorn_config

    try:  # bound before the model loads: a taken port fails in a second, not after loading
        sock = bind_socket(settings)
    except OSError as exc:
        raise CommandError(f"cannot listen on {settings.host}:{settings.port}: {exc.strerror or exc}"
                           " (port in use? pick another with --port)") from None

    import logging

    import uvicorn

    from engine import EngineError, load_model

    from .capacity import memory_plan

    logging.basicConfig(level=settings.log_level.upper(), format="%(levelname)-9s %(name)s: %(message)s")
    try:
        model = load_model(settings.model, settings.device, settings.backend, settings.engine_cache_dir)
    except EngineError as exc:
        raise CommandError(str(exc)) from None
    # Before any cache is allocated, and before serving: a model none of whose sessions
    # fits is a setting to change, not a server that never gets ready.
    plan = memory_plan(model, settings.memory_budget_bytes)
    if plan.sessions < 1:
        raise CommandError(f"cannot serve {model.name}: {plan.refusal()}")
    server = uvicorn.Server(uvicorn_config(create_app(settings, model=model), settings))
    # uvicorn shuts down gracefully on SIGINT/SIGTERM, then re-raises the signal; both end
    # up here as KeyboardInterrupt once the shutdown is done, which is a clean exit.
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:
        if not server.started:
            raise
    if not server.started:
        raise CommandError(f"the server did not start on {settings.host}:{settings.port} (see the log above)", 1)
    return 0


def build_engines(args: argparse.Namespace) -> int:
    settings = _settings(args)
    import time

    import torch

    from engine import EngineError, load_model
    from engine.model import default_device, model_dtype, resolve_model
    from engine.runtime import DEFAULT_MAX_BATCH, RuntimeOptions, RuntimeUnavailable
    from engine.runtime import build_engines as build
    from engine.runtime.build import DTYPE_NAMES, EXPORTED_DECODERS

    device = settings.device or default_device()
    if args.max_batch is not None and args.max_batch < 1:
        raise CommandError("--max-batch must be at least 1")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise CommandError(f"device {device!r} was asked for but no CUDA GPU is visible here", 1)
    try:
        config, _ = resolve_model(settings.model)
        backend = settings.backend or config.runtime
        if backend in ("eager", "compile"):
            print(f"{config.name}: the {backend} backend needs no engines; nothing to build")
            return 0
        # The engines are built from the eager model, in the dtype the server will run the
        # backend in, and only the parts they export are loaded: never umT5 or a Wan VAE
        # (a 1.3B student's build needs its transformer alone).
        dtype = DTYPE_NAMES[model_dtype(config, device, backend=backend)]
        model = load_model(settings.model, device, backend="eager", dtype=dtype, text_encoder=False,
                           decoder=config.decoder.kind in EXPORTED_DECODERS)
        options = RuntimeOptions(backend, settings.engine_cache_dir, args.max_batch or DEFAULT_MAX_BATCH,
                                 args.precision)
        started = time.perf_counter()
        built = build(model, options)
    except RuntimeUnavailable as exc:
        raise CommandError(str(exc), 1) from None
    except EngineError as exc:
        raise CommandError(str(exc)) from None
    elapsed = time.perf_counter() - started
    for path in built:
        print(path)
    print(f"{model.name}: {len(built)} {backend} engine(s) ready in {elapsed:.1f} s")
    return 0
