"""GPU benchmark: a Wan2.1-T2V-1.3B-size causal student with random weights, streaming
832x480 (latent 60x104, 3 latent frames = 12 video frames per chunk, 4 steps + the t=0
refresh, a window of 9 latent frames + 3 sink frames), bf16, on one GPU.

Single stream: frames/s in the steady state (window full) and time to first frame, for
eager torch, torch.compile and TensorRT; then 2, 4 and 8 sessions batched by the
engine's BatchScheduler; peak GPU memory per session. Prints one table with the anchors
(single H100: Self-Forcing 17 FPS, LongLive 20.7, Reward Forcing 23.1, Hybrid Forcing
29.5) and the fraction of the compute bound reached; writes the table as JSON.

    bench/gpu.sh                          # on the GPU machine (JSON to $OUT/gpu_bench.json)
    python bench/gpu.py --tiny            # the whole script on a CPU, tiny config, seconds

It caps its own work to fit one 10-minute call (--budget-s): a phase that would not fit
in the time left is skipped and says so in the table. Needs only this repository and
torch/diffusers (+ tensorrt for its row) on the machine; no network.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import (AttentionConfig, LatentConfig, ModelConfig, SamplerConfig,  # noqa: E402
                           TextEncoderConfig, TransformerConfig)
from engine.errors import EngineError  # noqa: E402
from engine.model import StreamModel, build_text_encoder, build_transformer  # noqa: E402
from engine.cache import policy_class  # noqa: E402
from engine.runtime import RuntimeOptions, TorchStepRunner, attach_runtime, build_engines  # noqa: E402
from engine.step import Stepper  # noqa: E402
from engine.sampler import steps_for_chunk  # noqa: E402
from engine.scheduler import BatchScheduler  # noqa: E402

ANCHORS_FPS = {"Self-Forcing": 17.0, "LongLive": 20.7, "Reward Forcing": 23.1, "Hybrid Forcing": 29.5}
STATED_COMPUTE_BOUND_FPS = (60.0, 70.0)
PROMPT = "a red ball bouncing on a blue background"


def student_config(tiny: bool) -> ModelConfig:
    attention = AttentionConfig(policy="sink_window", chunk_frames=3, sink_frames=3, window_frames=9)
    if tiny:
        return ModelConfig(
            name="bench-tiny", attention=attention, sampler=SamplerConfig(), dtype="float32",
            transformer=TransformerConfig(num_attention_heads=2, attention_head_dim=24, ffn_dim=96, num_layers=2,
                                          text_dim=32),
            latent=LatentConfig(height=64, width=96, fps=16.0),
            text_encoder=TextEncoderConfig(kind="hash", dim=32, max_tokens=16))
    return ModelConfig(
        name="wan2.1-1.3b-causal-random", attention=attention, sampler=SamplerConfig(), dtype="bfloat16",
        transformer=TransformerConfig(num_attention_heads=12, attention_head_dim=128, ffn_dim=8960, num_layers=30,
                                      text_dim=4096, in_channels=16, out_channels=16),
        latent=LatentConfig(height=480, width=832, fps=16.0),
        text_encoder=TextEncoderConfig(kind="hash", dim=4096, max_tokens=512))  # umT5's 512 tokens


class HostFrames(nn.Module):
    """The decoder, without gradients, handing frames to host memory as a server must
    (StreamSession turns them into numpy)."""

    def __init__(self, decoder: nn.Module):
        super().__init__()
        self.decoder = decoder

    def init_decoder_state(self, batch_size: int):
        return self.decoder.init_decoder_state(batch_size)

    @torch.no_grad()
    def decode_chunk(self, latents, state):
        video, state = self.decoder.decode_chunk(latents, state)
        return video.cpu(), state


def build_decoder(config: ModelConfig, device: str, tiny: bool) -> tuple[nn.Module, str]:
    """The default model's streaming decoder at this size (random weights), else (and for
    the dry run) the stand-in."""
    try:
        if tiny:
            raise ImportError("the dry run keeps to the stand-in")
        from engine.autoencoder import AutoencoderConfig, ShapesAutoencoder

        return HostFrames(ShapesAutoencoder(AutoencoderConfig()).to(device).eval()), "shapes_ae (random)"
    except ImportError:
        from engine.components import StandInDecoder

        lat = config.latent
        return HostFrames(StandInDecoder(lat.channels, lat.temporal_compression, lat.spatial_compression).to(device)), \
            "standin"


# --- figures ---------------------------------------------------------------------------------

def flops_per_frame(config: ModelConfig) -> float:
    """Model FLOPs per video frame in the steady state (window full): per forward, the
    linear layers over the chunk's tokens (self-attention q/k/v/o, cross-attention q/o, FFN)
    and cross-attention k/v over the text, plus attention scores and values over the
    cache and the text; times (steps + refresh) per chunk, over the chunk's frames."""
    t, att, cfg = config.transformer, config.attention, config
    d, layers = t.inner_dim, t.num_layers
    n_q = att.chunk_frames * cfg.tokens_per_frame
    n_k = (att.chunk_frames + att.sink_frames + att.window_frames) * cfg.tokens_per_frame
    n_text = cfg.text_encoder.max_tokens
    linear = 2 * n_q * (6 * d * d + 2 * d * t.ffn_dim) + 2 * n_text * 2 * d * d
    attention = 4 * n_q * (n_k + n_text) * d
    return layers * (linear + attention) * forwards_per_chunk(config) / cfg.frames_per_chunk


def matmul_tflops(device: str, dtype: torch.dtype, size: int) -> float:
    """Measured dense matmul rate: the ceiling the compute bound is taken against."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    sync(device)
    reps, started = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * size**3 * reps / (time.perf_counter() - started) / 1e12


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def memory_now(device: str) -> int:
    return torch.cuda.memory_allocated() if device.startswith("cuda") else 0


def reset_peak(device: str) -> None:
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def peak(device: str) -> int:
    return torch.cuda.max_memory_allocated() if device.startswith("cuda") else 0


# --- measurements ------------------------------------------------------------------------------

def single_stream(model: StreamModel, device: str, warm_chunks: int, timed_chunks: int) -> dict:
    started = time.perf_counter()
    model.open_session("warm-up prompt", seed=0).next_chunk()  # first call: compile / kernel selection
    first_call = time.perf_counter() - started
    reset_peak(device)
    base = memory_now(device)
    started = time.perf_counter()
    session = model.open_session(PROMPT, seed=0)
    session.next_chunk()
    ttff = time.perf_counter() - started
    for _ in range(warm_chunks):  # fill the window: the steady state
        session.next_chunk()
    started = time.perf_counter()
    for _ in range(timed_chunks):
        session.next_chunk()
    elapsed = time.perf_counter() - started
    fps = timed_chunks * model.frames_per_chunk / elapsed
    return {"sessions": 1, "fps": fps, "total_fps": fps, "ttff_s": ttff, "first_call_s": first_call,
            "chunk_s": elapsed / timed_chunks, "peak_gb_per_session": (peak(device) - base) / 1e9}


def batched_sessions(model: StreamModel, device: str, n: int, warm_chunks: int, timed_chunks: int) -> dict:
    reset_peak(device)
    base = memory_now(device)
    scheduler = BatchScheduler(model, max_sessions=n, queue_chunks=1).start()
    try:
        started = time.perf_counter()
        handles = [scheduler.open(f"{PROMPT}, take {i}", seed=i) for i in range(n)]
        for h in handles:
            h.next_chunk(timeout=600)
        ttff = time.perf_counter() - started  # the last of n streams opened together
        for _ in range(warm_chunks):
            for h in handles:
                h.next_chunk(timeout=600)
        # Counted where the frames are made: the scheduler runs up to a chunk ahead of its
        # consumers, so counting consumed chunks over a short window would flatter it.
        rows_before, started = scheduler.rows_forwarded, time.perf_counter()
        for _ in range(timed_chunks):
            for h in handles:
                h.next_chunk(timeout=600)
        elapsed = time.perf_counter() - started
        chunks_made = (scheduler.rows_forwarded - rows_before) / forwards_per_chunk(model.config)
        batch = scheduler.rows_forwarded / max(scheduler.forwards, 1)
    finally:
        scheduler.shutdown()
    total = chunks_made * model.frames_per_chunk / elapsed
    return {"sessions": n, "fps": total / n, "total_fps": total, "ttff_s": ttff, "mean_batch": batch,
            "peak_gb_per_session": (peak(device) - base) / n / 1e9}


def forwards_per_chunk(config: ModelConfig) -> int:
    """Transformer forwards of one session's chunk in the steady state: steps + refresh."""
    return steps_for_chunk(config.sampler, 1 << 30) + (1 if config.sampler.refresh_context else 0)


def runtime_model(base: StreamModel, backend: str, args, device: str) -> tuple[StreamModel, dict]:
    """A StreamModel over the same weights running `backend`; what it cost to get there."""
    model = StreamModel(base.config, base.transformer, base.text_encoder, base.decoder)
    info: dict = {}
    if backend == "compile" and args.tiny:
        # inductor's C++ build of even a tiny graph takes a minute on a small CPU: the dry
        # run checks the path through dynamo only
        policy = policy_class(model.config.attention)
        runner = TorchStepRunner(model.transformer, policy, compile=True, backend="eager")
        info["build_s"] = runner.warm_up(model.config)
        model.step_fn = Stepper(model.transformer, policy, model.config.attention.backend, runner, args.max_batch)
        info["note"] = "dynamo only (--tiny)"
    elif backend in ("compile", "tensorrt", "onnxruntime"):
        options = RuntimeOptions(backend, args.engine_cache, args.max_batch)
        started = time.perf_counter()
        build_engines(model, options)  # TensorRT / ONNX Runtime; nothing for compile
        attach_runtime(model, options)  # compile: compiles here
        info["build_s"] = time.perf_counter() - started
    return model, info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="dry run: tiny config on the CPU, seconds")
    ap.add_argument("--device", default=None, help="torch device (default: cuda, or cpu with --tiny)")
    ap.add_argument("--backends", default="eager,compile,tensorrt", help="single-stream backends, in order")
    ap.add_argument("--sessions", default=None, help="batched session counts (default 2,4,8; 2,4 with --tiny)")
    ap.add_argument("--batched-backend", default="best",
                    help="backend for the batched rows: a name, or 'best' (fastest single stream)")
    ap.add_argument("--warm-chunks", type=int, default=None, help="chunks streamed before timing (default: fill the window)")
    ap.add_argument("--timed-chunks", type=int, default=None, help="chunks timed per measurement (default 4; 2 with --tiny)")
    ap.add_argument("--max-batch", type=int, default=8, help="largest batch one engine call takes")
    ap.add_argument("--budget-s", type=float, default=540.0, help="stop starting phases after this many seconds")
    ap.add_argument("--engine-cache", default=None,
                    help="engine cache dir (default: a temporary dir; engines are GBs, keep them out of $OUT)")
    ap.add_argument("--json", default=None, help="write the results here (default: $OUT/gpu_bench.json or runs/)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    deadline = t_start + args.budget_s
    if args.tiny:
        # One intra-op thread: with two, each tiny op waits on a thread barrier, and on a
        # shared CPU that made the dry run ten times slower, not faster.
        torch.set_num_threads(1)
    device = args.device or ("cpu" if args.tiny else "cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA GPU here; run with --tiny for the CPU dry run", file=sys.stderr)
        return 2
    config = student_config(args.tiny)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[config.dtype]
    window_chunks = (config.attention.sink_frames + config.attention.window_frames) // config.attention.chunk_frames
    warm = args.warm_chunks if args.warm_chunks is not None else (1 if args.tiny else window_chunks)
    timed = args.timed_chunks or (2 if args.tiny else 4)
    if args.engine_cache is None:
        import tempfile

        args.engine_cache = Path(tempfile.gettempdir()) / "framecast-bench-engines"

    started = time.perf_counter()
    with torch.device(device):  # initialise the 1.3B weights on the GPU, not on the host
        transformer = build_transformer(config, device, dtype, seed=0)
    decoder, decoder_name = build_decoder(config, device, args.tiny)
    base = StreamModel(config, transformer, build_text_encoder(config, None, device), decoder)
    build_s = time.perf_counter() - started
    weights_gb = sum(p.numel() * p.element_size() for p in transformer.parameters()) / 1e9
    print(f"{config.name}: {sum(p.numel() for p in transformer.parameters()) / 1e9:.2f} B parameters "
          f"({weights_gb:.1f} GB {config.dtype}), {config.latent.width}x{config.latent.height}, "
          f"{config.tokens_per_frame} tokens/latent frame, decoder {decoder_name}; built in {build_s:.1f} s",
          flush=True)

    rows: list[dict] = []
    out = Path(args.json) if args.json else Path(os.environ.get("OUT") or "runs") / "gpu_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    result = {"config": config.model_dump(mode="json"), "device": device_label(device), "versions": versions(),
              "decoder": decoder_name, "warm_chunks": warm, "timed_chunks": timed, "rows": rows,
              "anchors_fps": ANCHORS_FPS, "stated_compute_bound_fps": STATED_COMPUTE_BOUND_FPS,
              "model_build_s": build_s, "complete": False}

    def save() -> None:  # after every row: a call cut short still leaves what it measured
        result["elapsed_s"] = time.perf_counter() - t_start
        out.write_text(json.dumps(result, indent=2) + "\n")

    def skipped(backend: str, sessions: int, note: str) -> None:
        rows.append({"backend": backend, "sessions": sessions, "fps": None, "total_fps": None, "ttff_s": None,
                     "peak_gb_per_session": None, "note": note})
        print(f"  {backend} x{sessions}: {note}", flush=True)
        save()

    # --- single stream, per backend ----------------------------------------------------
    models: dict[str, StreamModel] = {}
    single: dict[str, dict] = {}
    for backend in [b.strip() for b in args.backends.split(",") if b.strip()]:
        needs = {"eager": 60, "compile": 240, "tensorrt": 420, "onnxruntime": 240}.get(backend, 120)
        if not args.tiny and time.perf_counter() + needs > deadline:
            skipped(backend, 1, f"skipped: under {needs} s of the budget left")
            continue
        try:
            model, info = runtime_model(base, backend, args, device)
            measured = single_stream(model, device, warm, timed)
        except (EngineError, ImportError, RuntimeError) as exc:
            skipped(backend, 1, f"{type(exc).__name__}: {exc}")
            continue
        measured.update(backend=backend, note=info.get("note", ""), **{k: v for k, v in info.items() if k != "note"})
        rows.append(measured)
        save()
        models[backend], single[backend] = model, measured
        print(f"  {backend} x1: {measured['fps']:.1f} fps, first frame {measured['ttff_s']:.2f} s, "
              f"first call {measured['first_call_s']:.1f} s", flush=True)
        reset_peak(device)

    # --- batched sessions ------------------------------------------------------------------
    batched_backend = args.batched_backend
    if batched_backend == "best":
        batched_backend = max(single, key=lambda b: single[b]["fps"]) if single else "eager"
    for n in [int(s) for s in (args.sessions or ("2,4" if args.tiny else "2,4,8")).split(",") if s.strip()]:
        model = models.get(batched_backend)
        if model is None:
            skipped(batched_backend, n, "skipped: this backend did not run single-stream")
            continue
        recompile = 120 if batched_backend == "compile" else 0  # torch.compile: a dynamic-batch graph
        estimate = (1 + warm + timed) * n * single[batched_backend]["chunk_s"] * 1.2 + 20 + recompile
        if not args.tiny and time.perf_counter() + estimate > deadline:
            skipped(batched_backend, n, f"skipped: needs ~{estimate:.0f} s, budget spent")
            continue
        try:
            setup = {}
            runner = getattr(model.step_fn, "runner", None)
            if isinstance(runner, TorchStepRunner):  # compile this batch size before the clock starts
                setup = {"build_s": runner.warm_up(config, (n,)), "first_call_s": 0.0}
            measured = batched_sessions(model, device, n, warm, timed)
        except (EngineError, RuntimeError) as exc:  # out of memory, most likely
            skipped(batched_backend, n, f"{type(exc).__name__}: {exc}")
            continue
        measured.update(backend=batched_backend, note="", **setup)
        rows.append(measured)
        save()
        print(f"  {batched_backend} x{n}: {measured['fps']:.1f} fps per session, {measured['total_fps']:.1f} total",
              flush=True)

    # --- the bound and the table -----------------------------------------------------------
    rate = matmul_tflops(device, dtype, 256 if args.tiny else 8192)
    per_frame = flops_per_frame(config)
    result.update(measured_matmul_tflops=rate, gflop_per_frame=per_frame / 1e9,
                  computed_bound_fps=rate * 1e12 / per_frame, complete=True)
    print_table(result)
    save()
    print(f"wrote {out}")
    return 0


def device_label(device: str) -> str:
    if device.startswith("cuda"):
        return torch.cuda.get_device_name()
    return f"cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)"


def versions() -> dict[str, str]:
    import diffusers

    found = {"python": platform.python_version(), "torch": torch.__version__, "diffusers": diffusers.__version__}
    if torch.cuda.is_available():
        found["cuda"] = torch.version.cuda or ""
    try:
        import tensorrt

        found["tensorrt"] = tensorrt.__version__
    except ImportError:
        pass
    return found


def fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def print_table(result: dict) -> None:
    print(f"\n{result['config']['name']} on {result['device']} ({result['decoder']} decoder), "
          f"torch {result['versions']['torch']}")
    header = f"{'backend':<12}{'sessions':>9}{'fps/session':>13}{'total fps':>11}{'ttff s':>9}" \
             f"{'GB/session':>12}{'setup s':>10}  note"
    print(header)
    print("-" * len(header))
    for r in result["rows"]:
        first = None if r.get("first_call_s") is None else r["first_call_s"] + r.get("build_s", 0.0)
        print(f"{r['backend']:<12}{r['sessions']:>9}{fmt(r['fps'], '.1f'):>13}{fmt(r['total_fps'], '.1f'):>11}"
              f"{fmt(r['ttff_s'], '.2f'):>9}{fmt(r['peak_gb_per_session'], '.2f'):>12}{fmt(first, '.1f'):>10}  "
              f"{r.get('note', '')}")
    singles = [r for r in result["rows"] if r["sessions"] == 1 and r["fps"] is not None]
    best = max(singles, key=lambda r: r["fps"]) if singles else None
    print("\nanchors, single stream on one H100 (same setting):")
    for name, fps in result["anchors_fps"].items():
        ratio = f"x{best['fps'] / fps:.2f} ({best['backend']})" if best else "-"
        print(f"  {name:<16}{fps:>6.1f} fps   ours {ratio}")
    if result["config"]["name"] == "bench-tiny":
        print("  (--tiny: a toy model on a CPU; these ratios only show that the table is made)")
    lo, hi = result["stated_compute_bound_fps"]
    if best:
        print(f"fraction of the compute bound: {best['fps'] / hi:.0%}-{best['fps'] / lo:.0%} of the stated "
              f"{lo:.0f}-{hi:.0f} fps; {best['fps'] / result['computed_bound_fps']:.0%} of "
              f"{result['computed_bound_fps']:.3g} fps = {result['measured_matmul_tflops']:.3g} TFLOP/s measured "
              f"matmul / {result['gflop_per_frame']:.3g} GFLOP per frame")
    else:
        print("fraction of the compute bound: - (no single-stream row ran)")
    print("(ttff: a new stream's first chunk on a warm model; setup: engine build + the first chunk ever, "
          "compile included; GB/session: peak GPU memory above the weights, per session)")


if __name__ == "__main__":
    sys.exit(main())
