"""GPU benchmark: a Wan2.1-T2V-1.3B-size causal student with random weights, streaming
832x480 (latent 60x104, 3 latent frames = 12 video frames per chunk, 4 steps + the t=0
refresh, a window of 9 latent frames + 3 sink frames), bf16, on one GPU, decoding every
chunk with TAEHV (taew2_1's architecture, random weights) and handing the frames to the host.

Single stream: frames/s in the steady state (window full) and time to first frame, for
eager torch, torch.compile (inductor), torch.compile with CUDA graphs (mode
"reduce-overhead") and TensorRT; then 1, 2, 4 and 8 sessions batched by the engine's
BatchScheduler (aggregate and per-session frames/s); peak GPU memory per session. Prints
the table, the anchors (single H100: Self-Forcing 17 FPS, LongLive 20.7, Reward Forcing
23.1, Hybrid Forcing 29.5) and the fraction of the compute bound; then the same table as
one JSON object (also written to $OUT/gpu_bench.json after every row).

    bench/gpu.sh                          # on the GPU machine (installs what the image lacks from .whl/)
    bench/gpu.sh --tiny                   # the whole script on a CPU, tiny config, seconds

It caps its own work to fit one call of at most 8 minutes (--budget-s): a phase that would
not fit in the time left is skipped and says so in the table. Needs only this repository,
torch, diffusers and pydantic (+ tensorrt for its row) on the machine; no network.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.config import (AttentionConfig, LatentConfig, ModelConfig, SamplerConfig,  # noqa: E402
                           TextEncoderConfig, TransformerConfig)
from engine.cache import policy_class  # noqa: E402
from engine.model import StreamModel, build_text_encoder, build_transformer  # noqa: E402
from engine.runtime import RuntimeOptions, TorchStepRunner, attach_runtime, build_engines  # noqa: E402
from engine.sampler import steps_for_chunk  # noqa: E402
from engine.step import Stepper  # noqa: E402
from engine.scheduler import BatchScheduler  # noqa: E402

from gpu_report import device_label, json_table, print_table, versions  # noqa: E402

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


def build_decoder(config: ModelConfig, device: str, dtype: torch.dtype, tiny: bool) -> tuple[nn.Module, str]:
    """TAEHV, the decoder to serve Wan students with on a GPU (the Wan VAE takes minutes a
    chunk on a CPU and is no streaming decoder), at taew2_1's widths with random weights:
    its cost does not depend on the values. --tiny: the same network, narrow."""
    from engine.taehv import TAEHVConfig, TAEHVDecoder

    taehv = TAEHVConfig(latent_channels=config.latent.channels, widths=(8, 8, 8, 8) if tiny else (256, 128, 64, 64))
    decoder = TAEHVDecoder(taehv).to(device=device, dtype=dtype).eval().requires_grad_(False)
    return HostFrames(decoder), f"taehv {'x'.join(map(str, taehv.widths))} (random)"


class CudaGraphStep:
    """torch.compile(mode="reduce-overhead"): inductor's graph replayed as CUDA graphs. A
    replay's outputs live in the graph's own buffers until the next replay, so the flow is
    copied out (new_k/new_v are copied into the cache before the next step anyway)."""

    def __init__(self, transformer: nn.Module, policy, **compile_options):
        # --tiny passes backend="eager" (dynamo only), which takes no mode
        mode = {} if "backend" in compile_options else {"mode": "reduce-overhead"}
        self.inner = TorchStepRunner(transformer, policy, compile=True, **mode, **compile_options)
        self.name, self.takes_no_mask = "compile-cudagraphs", True

    def warm_up(self, config, batches: tuple[int, ...] = (1,)) -> float:
        return self.inner.warm_up(config, batches)

    def __call__(self, inputs):
        torch.compiler.cudagraph_mark_step_begin()
        flow, new_k, new_v = self.inner(inputs)
        return flow.clone(), new_k, new_v


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


def threaded_cudagraphs_broken(device: str) -> str | None:
    """Why CUDA graphs cannot serve batched sessions here, or None. BatchScheduler forwards
    from its own thread; up to torch 2.11 inductor's cudagraph trees assert when that thread
    records a graph (`assert torch._C._is_key_in_tls(...)`, pytorch#123177, fixed in
    pytorch#184357 after 2.11). Seen on the lent H200 (torch 2.11): the one-stream row, run
    from the main thread, works; batched rows failed, also with every batch size recorded
    in the main thread first (a tree records again when calls come in a new order)."""
    if not device.startswith("cuda"):
        return None
    major, minor = (int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
    if (major, minor) > (2, 11):
        return None
    return (f"CUDA graphs (cudagraph trees) fail in BatchScheduler's thread on torch {torch.__version__} "
            "(pytorch#123177, fixed after 2.11); the batched rows use plain compile")


TENSORRT_ON_THE_IMAGE = ("TensorRT cannot be installed on the lent GPU image: no network there, and its wheels "
                         "(tensorrt + tensorrt-cu13-libs) are GBs, far over the 64 MiB a call carries; "
                         "the GPU Docker image (docker/Dockerfile.gpu) has it")


def runtime_model(base: StreamModel, backend: str, args, device: str) -> tuple[StreamModel, dict]:
    """A StreamModel over the same weights running `backend`; what it cost to get there."""
    model = StreamModel(base.config, base.transformer, base.text_encoder, base.decoder)
    info: dict = {}
    # inductor's C++ build of even a tiny graph takes a minute on a small CPU: the dry run
    # checks the path through dynamo only
    tiny = {"backend": "eager"} if args.tiny else {}
    policy = policy_class(model.config.attention)
    if backend == "compile-cudagraphs":
        runner = CudaGraphStep(model.transformer, policy, **tiny)
        info["build_s"] = runner.warm_up(model.config)
        model.step_fn = Stepper(model.transformer, policy, model.config.attention.backend, runner, args.max_batch)
    elif backend == "compile" and args.tiny:
        runner = TorchStepRunner(model.transformer, policy, compile=True, **tiny)
        info["build_s"] = runner.warm_up(model.config)
        model.step_fn = Stepper(model.transformer, policy, model.config.attention.backend, runner, args.max_batch)
    elif backend in ("compile", "tensorrt", "onnxruntime"):
        options = RuntimeOptions(backend, args.engine_cache, args.max_batch)
        started = time.perf_counter()
        build_engines(model, options)  # TensorRT / ONNX Runtime; nothing for compile
        attach_runtime(model, options)  # compile: compiles here
        info["build_s"] = time.perf_counter() - started
    if args.tiny and backend.startswith("compile"):
        info["note"] = "dynamo only (--tiny)"
    return model, info


def free(device: str) -> None:
    """After a phase failed (out of memory, say): what it held goes before the next one."""
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tiny", action="store_true", help="dry run: tiny config on the CPU, seconds")
    ap.add_argument("--device", default=None, help="torch device (default: cuda, or cpu with --tiny)")
    ap.add_argument("--backends", default="eager,compile-cudagraphs,tensorrt",
                    help="single-stream backends, in order: eager, compile, compile-cudagraphs (falls back to "
                         "compile when CUDA graphs fail), tensorrt, onnxruntime")
    ap.add_argument("--batched", default="eager,compiled",
                    help="backends of the batched rows, in order: names, or 'compiled' for the fastest compiled "
                         "single-stream backend that ran")
    ap.add_argument("--sessions", default=None, help="batched session counts (default 1,2,4,8; 1,2,4 with --tiny)")
    ap.add_argument("--warm-chunks", type=int, default=None, help="chunks streamed before timing (default: fill the window)")
    ap.add_argument("--timed-chunks", type=int, default=None, help="chunks timed per measurement (default 4; 2 with --tiny)")
    ap.add_argument("--max-batch", type=int, default=8, help="largest batch one engine call takes")
    ap.add_argument("--budget-s", type=float, default=400.0,
                    help="start no phase that would end past this many seconds (default 400: with start-up and "
                         "the wheel check, one call of at most 8 minutes)")
    ap.add_argument("--engine-cache", default=None,
                    help="engine cache dir (default: a temporary dir; engines are GBs, keep them out of $OUT)")
    ap.add_argument("--json", default=None, help="write the results here (default: $OUT/gpu_bench.json or runs/)")
    args = ap.parse_args()

    t_start = time.perf_counter()
    # Every compiled row and batch size is a graph of the same step module: more than
    # dynamo's default 8, past which it would silently run the rest eager.
    torch._dynamo.config.recompile_limit = 64
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
    sessions = [int(n) for n in (args.sessions or ("1,2,4" if args.tiny else "1,2,4,8")).split(",") if n.strip()]
    if args.engine_cache is None:
        import tempfile

        args.engine_cache = Path(tempfile.gettempdir()) / "framecast-bench-engines"

    started = time.perf_counter()
    with torch.device(device):  # initialise the 1.3B weights on the GPU, not on the host
        transformer = build_transformer(config, device, dtype, seed=0)
    decoder, decoder_name = build_decoder(config, device, dtype, args.tiny)
    base = StreamModel(config, transformer, build_text_encoder(config, None, device), decoder)
    build_s = time.perf_counter() - started
    weights_gb = sum(p.numel() * p.element_size() for p in transformer.parameters()) / 1e9
    print(f"{config.name}: {sum(p.numel() for p in transformer.parameters()) / 1e9:.2f} B parameters "
          f"({weights_gb:.1f} GB {config.dtype}), {config.latent.width}x{config.latent.height}, "
          f"{config.tokens_per_frame} tokens/latent frame, decoder {decoder_name}; built in {build_s:.1f} s",
          flush=True)

    out = Path(args.json) if args.json else Path(os.environ.get("OUT") or "runs") / "gpu_bench.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    result = {"config": config.model_dump(mode="json"), "device": device_label(device), "versions": versions(),
              "decoder": decoder_name, "warm_chunks": warm, "timed_chunks": timed, "rows": rows,
              "anchors_fps": ANCHORS_FPS, "stated_compute_bound_fps": STATED_COMPUTE_BOUND_FPS,
              "model_build_s": build_s, "complete": False}

    def save() -> None:  # after every row: a call cut short still leaves what it measured
        result["elapsed_s"] = time.perf_counter() - t_start
        out.write_text(json.dumps(result, indent=2) + "\n")

    def record(row: dict) -> None:
        rows.append(row)
        save()
        if row["fps"] is None:
            print(f"  {row['backend']} {row['mode']} x{row['sessions']}: {row['note']}", flush=True)
        else:
            print(f"  {row['backend']} {row['mode']} x{row['sessions']}: {row['fps']:.1f} fps per session, "
                  f"{row['total_fps']:.1f} total, first frame {row['ttff_s']:.2f} s", flush=True)

    def skipped(backend: str, mode: str, n: int, note: str) -> None:
        record({"backend": backend, "mode": mode, "sessions": n, "fps": None, "total_fps": None, "ttff_s": None,
                "peak_gb_per_session": None, "note": note[:500]})

    def fits(seconds: float) -> bool:
        return args.tiny or time.perf_counter() - t_start + seconds <= args.budget_s

    models: dict[str, StreamModel] = {}
    single: dict[str, dict] = {}

    def run_single(backend: str) -> None:
        needs = {"eager": 40, "compile": 150, "compile-cudagraphs": 150, "tensorrt": 420}.get(backend, 240)
        if not fits(needs):
            return skipped(backend, "single", 1, f"skipped: under {needs} s of the budget left")
        try:
            model, info = runtime_model(base, backend, args, device)
            measured = single_stream(model, device, warm, timed)
        except Exception as exc:  # a missing package, a compile failure, out of memory: the row says which
            note = f"{type(exc).__name__}: {exc}"
            if backend == "tensorrt" and device.startswith("cuda") and "not installed" in str(exc):
                note = f"{TENSORRT_ON_THE_IMAGE} ({note})"
            skipped(backend, "single", 1, note)
            free(device)
            if backend == "compile-cudagraphs":  # CUDA graphs where they work; plain inductor where not
                run_single("compile")
            return
        measured.update(backend=backend, mode="single", note=info.get("note", ""),
                        **{k: v for k, v in info.items() if k != "note"})
        models[backend], single[backend] = model, measured
        record(measured)
        reset_peak(device)

    def run_batched(backend: str, n: int) -> None:
        model = models.get(backend)
        if model is None:
            return skipped(backend, "batched", n, "skipped: this backend did not run single-stream")
        runner = getattr(model.step_fn, "runner", None)
        compiled = isinstance(runner, (TorchStepRunner, CudaGraphStep))
        recompile = 150 if compiled and n > 1 else 0  # a graph for this batch size
        estimate = (1 + warm + timed) * n * single[backend]["chunk_s"] * 1.2 + 20 + recompile
        if not fits(estimate):
            return skipped(backend, "batched", n, f"skipped: needs ~{estimate:.0f} s, budget spent")
        try:
            setup = {"build_s": runner.warm_up(config, (n,)), "first_call_s": 0.0} if compiled else {}
            measured = batched_sessions(model, device, n, warm, timed)
        except Exception as exc:  # out of memory, most likely
            skipped(backend, "batched", n, f"{type(exc).__name__}: {exc}")
            free(device)
            return
        measured.update(backend=backend, mode="batched", note="", **setup)
        record(measured)

    # Cheap and certain rows first: eager single and batched, then the compiled ones
    # (minutes of inductor), so a budget cut leaves the compiled rows out, not the baseline.
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    batched = [b.strip() for b in args.batched.split(",") if b.strip()]
    first, rest = ("eager", [b for b in backends if b != "eager"]) if "eager" in backends else (None, backends)
    if first:
        run_single(first)
        for n in sessions if "eager" in batched else []:
            run_batched("eager", n)
    for backend in rest:
        run_single(backend)
    compiled = [b for b in single if b != "eager"]
    for name in batched:
        if name == "eager":
            continue  # ran above
        if name == "compiled":
            blocked = threaded_cudagraphs_broken(device)
            usable = [b for b in compiled if not (blocked and b == "compile-cudagraphs")]
            if blocked and "compile-cudagraphs" in compiled:
                skipped("compile-cudagraphs", "batched", max(sessions), blocked)
                if not usable:
                    run_single("compile")
                    usable = [b for b in single if b == "compile"]
            if not usable:
                continue  # no compiled backend ran; its single rows say why
            name = max(usable, key=lambda b: single[b]["fps"])
        for n in sessions:
            run_batched(name, n)

    # --- the bound and the table -----------------------------------------------------------
    rate = matmul_tflops(device, dtype, 256 if args.tiny else 8192)
    per_frame = flops_per_frame(config)
    result.update(measured_matmul_tflops=rate, gflop_per_frame=per_frame / 1e9,
                  computed_bound_fps=rate * 1e12 / per_frame, complete=True)
    print_table(result)
    save()
    print(f"wrote {out}")
    print(json.dumps(json_table(result)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
