"""ONNX Runtime vs eager torch (and optionally torch.compile), frames/s of a streamed
session, side by side in one run.

Every backend loads the same model; repetitions are interleaved (eager, onnxruntime,
onnxruntime, eager, ...) so a machine whose load drifts during the run affects all
alike. Each repetition opens a fresh session, streams until the window is full, then
times `--chunks` chunks (denoising steps, refresh and decoding: what a viewer gets).

    python bench/backends.py                       # the embedded default model, else tiny-random
    python bench/backends.py --model tiny-random --reps 5 --json runs/backends.json
    python bench/backends.py --backends eager,onnxruntime,compile     # inductor: minutes to compile on a small CPU
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.model import DEFAULT_MODEL_DIR, load_model  # noqa: E402

PROMPT = "a red ball bouncing on a blue background"


def default_model() -> str:
    return str(DEFAULT_MODEL_DIR) if (DEFAULT_MODEL_DIR / "model.json").is_file() else "tiny-random"


def default_architecture(directory: Path) -> str:
    """The embedded default model's architecture (distill's student preset: its transformer,
    MiniLM text encoder and Shapes autoencoder) with random weights, written as a model
    directory: the default model's speed before (or without) training it."""
    from distill.student import SHAPES_STUDENT
    from engine.autoencoder import AutoencoderConfig, ShapesAutoencoder
    from engine.model import save_model
    from engine.transformer import build_transformer

    config = SHAPES_STUDENT.model_copy(update={"name": "shapes-default-random-weights"})
    save_model(directory, config, build_transformer(config))
    ShapesAutoencoder(AutoencoderConfig()).save(directory)
    return str(directory)


def stream_fps(model, warm_chunks: int, chunks: int, seed: int) -> tuple[float, torch.Tensor]:
    session = model.open_session(PROMPT, seed=seed)
    for _ in range(warm_chunks):
        session.next_chunk()
    started = time.perf_counter()
    latents = [session.next_chunk().latents for _ in range(chunks)]
    elapsed = time.perf_counter() - started
    return chunks * model.frames_per_chunk / elapsed, torch.cat(latents, dim=2)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model name or directory (default: the embedded default "
                                                  "model if it is built, else tiny-random); 'default-arch': "
                                                  "the default model's architecture with random weights")
    ap.add_argument("--reps", type=int, default=3, help="timed repetitions per backend (interleaved)")
    ap.add_argument("--chunks", type=int, default=4, help="chunks timed per repetition")
    ap.add_argument("--engine-cache", default=None, help="engine cache dir (default: a temporary one)")
    ap.add_argument("--backends", default="eager,onnxruntime",
                    help="comma-separated, eager first: eager, onnxruntime, compile")
    ap.add_argument("--threads", type=int, default=None,
                    help="intra-op threads for every backend (default: torch's default, the core count)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)  # ONNX Runtime's CPU runner takes torch's count

    cache_dir = args.engine_cache or tempfile.mkdtemp(prefix="framecast-engines-")
    name = args.model or default_model()
    if name == "default-arch":
        name = default_architecture(Path(tempfile.mkdtemp(prefix="framecast-default-arch-")))
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if backends[0] != "eager":
        ap.error("--backends must start with eager (the reference the others are compared with)")
    models, load_s = {}, {}
    for backend in backends:
        started = time.perf_counter()
        models[backend] = load_model(name, backend=backend, engine_cache_dir=cache_dir)
        load_s[backend] = time.perf_counter() - started  # onnxruntime: export + optimisation, cold cache
    model = models["eager"]
    att = model.config.attention
    warm = (att.sink_frames + att.window_frames + att.chunk_frames - 1) // att.chunk_frames
    for backend, m in models.items():  # first chunk of each: kernel/arena set-up, compilation; not timed
        started = time.perf_counter()
        m.open_session("warm-up", seed=0).next_chunk()
        load_s[backend] += time.perf_counter() - started

    fps: dict[str, list[float]] = {b: [] for b in models}
    latents: dict[str, torch.Tensor] = {}
    for rep in range(args.reps):
        order = list(models) if rep % 2 == 0 else list(reversed(models))
        for backend in order:
            value, lat = stream_fps(models[backend], warm, args.chunks, seed=rep)
            fps[backend].append(value)
            if rep == 0:
                latents[backend] = lat

    diff = {b: (latents["eager"] - latents[b]).abs().max().item() for b in models if b != "eager"}
    median = {b: statistics.median(v) for b, v in fps.items()}
    print(f"{model.name}: {model.width}x{model.height}, {model.frames_per_chunk} frames/chunk, "
          f"torch threads {torch.get_num_threads()}; steady state after {warm} chunks, {args.chunks} timed x "
          f"{args.reps} reps")
    print(f"{'backend':<13}{'median fps':>11}{'x eager':>9}{'max |diff|':>12}{'setup s':>9}  all reps (fps)")
    for backend in models:
        reps = ", ".join(f"{v:.1f}" for v in fps[backend])
        d = f"{diff[backend]:.1e}" if backend in diff else "-"
        print(f"{backend:<13}{median[backend]:>11.2f}{median[backend] / median['eager']:>9.2f}{d:>12}"
              f"{load_s[backend]:>9.1f}  {reps}")
    print("(setup: load + first chunk, i.e. export/optimise or compile on a cold cache; "
          "max |diff|: latents against eager, same seed)")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps({
            "model": model.name, "fps": fps, "median_fps": median,
            "ratio_over_eager": {b: median[b] / median["eager"] for b in models}, "setup_s": load_s,
            "max_latent_diff": diff, "threads": torch.get_num_threads()}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
