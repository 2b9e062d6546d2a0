"""Figures for the default model's autoencoder: held-out reconstruction PSNR, streaming decode
real-time factor (on 2 threads and on 1), encode speed, weight size, and a PNG grid of
originals over reconstructions to look at.

    .venv/bin/python bench/autoencoder.py                       # the shipped engine/models/shapes-default
    .venv/bin/python bench/autoencoder.py --model runs/ae/autoencoder --grid runs/ae_grid.png
    .venv/bin/python bench/autoencoder.py --latent-noise 0.2,0.35,0.5   # + the decoder's noise tolerance

Held-out clips are Shapes seeds 0..N-1, which training never draws (distill/train_autoencoder.py).
With --latent-noise, the standard prompts' own scenes (1.5 s each) are encoded, Gaussian
noise of each given std is added to the normalised latents (unit variance per channel, the
space the teacher generates in), and the decoded clips are scored with the evaluator: how
far from the autoencoder's own code a generator may land before colour, shape, motion or
count is lost.

Real-time factor = seconds of video decoded per wall-clock second, decoding chunk by chunk
with state carried across chunks, as a streaming session does.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from distill.data.shapes import ShapesConfig, ShapesWorld
from distill.train_autoencoder import heldout_video, psnr
from engine.autoencoder import WEIGHTS_NAME, ShapesAutoencoder, parameter_count

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "engine" / "models" / "shapes-default"


def decode_rtf(ae: ShapesAutoencoder, latents: torch.Tensor, chunk_frames: int, fps: float, repeats: int) -> float:
    """Best-of-`repeats` seconds of video per wall second, streaming `chunk_frames` latent frames at a time."""
    seconds_of_video = latents.shape[2] * 4 / fps
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            state = ae.init_decoder_state(latents.shape[0])
            start = time.perf_counter()
            for i in range(0, latents.shape[2], chunk_frames):
                _, state = ae.decode_chunk(latents[:, :, i:i + chunk_frames], state)
            best = min(best, time.perf_counter() - start)
    return seconds_of_video / best


def encode_rate(ae: ShapesAutoencoder, video: torch.Tensor, fps: float, repeats: int) -> float:
    best = float("inf")
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            ae.encode(video)
            best = min(best, time.perf_counter() - start)
    return video.shape[2] / fps / best


def noise_tolerance(ae: ShapesAutoencoder, world: ShapesWorld, levels: list[float],
                    prompts: int | None = None) -> dict[str, dict]:
    """Evaluator scores of the standard scenes (the first `prompts` of them, or all) decoded
    from their latents + level * N(0, 1)."""
    from distill.eval import evaluate_generator, standard_prompts, standard_scenes
    from engine.session import to_uint8_frames

    scenes = dict(zip(standard_prompts(), standard_scenes()))
    prompts = standard_prompts()[:prompts]
    out = {}
    for level in levels:
        @torch.inference_mode()
        def generate(prompt, seconds, seed, level=level):
            frames = world.render(scenes[prompt], max(4, round(seconds * world.config.fps) // 4 * 4))
            video = torch.from_numpy(frames).permute(3, 0, 1, 2)[None].float() / 127.5 - 1
            z = ae.encode(video)
            noise = torch.randn(z.shape, generator=torch.Generator().manual_seed(prompts.index(prompt)))
            return to_uint8_frames(ae.decode(z + level * noise))

        summary = evaluate_generator(generate, prompts, 1, 1.5, fps=world.config.fps)["summary"]
        out[f"{level:g}"] = {k: round(summary[k], 3) for k in
                             ("prompt_accuracy", "colour_accuracy", "shape_accuracy", "motion_accuracy", "count_accuracy")}
    return out


def save_grid(path: Path, originals: list[torch.Tensor], reconstructions: list[torch.Tensor],
              frames: list[int]) -> None:
    """Rows: per clip, the original frames over their reconstructions. Videos [1, 3, T, H, W]."""
    from PIL import Image

    def strip(video: torch.Tensor) -> np.ndarray:  # -> uint8 [H, len(frames) * W, 3]
        picked = video[0, :, frames].permute(2, 1, 3, 0).flatten(1, 2)  # [3, n, H, W] -> [H, n*W, 3]
        return ((picked.clamp(-1, 1) + 1) * 127.5).round().byte().numpy()

    rows = []
    for original, reconstruction in zip(originals, reconstructions):
        rows += [strip(original), strip(reconstruction), np.full((4, strip(original).shape[1], 3), 255, np.uint8)]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(rows[:-1])).save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL,
                        help="directory with autoencoder.json + autoencoder.safetensors (default: the shipped one)")
    parser.add_argument("--clips", type=int, default=32, help="held-out clips for PSNR (default 32)")
    parser.add_argument("--frames", type=int, default=32, help="video frames per held-out clip (default 32)")
    parser.add_argument("--seconds", type=float, default=4.0, help="seconds of video decoded per timing (default 4)")
    parser.add_argument("--chunk", type=int, default=3, help="latent frames per streamed chunk (default 3)")
    parser.add_argument("--grid", type=Path, default=Path("runs/ae_grid.png"),
                        help="where to write the originals-over-reconstructions PNG (default runs/ae_grid.png)")
    parser.add_argument("--latent-noise", default="",
                        help="comma-separated noise stds (in latent std units) to score the decoder's tolerance at, "
                             "e.g. 0.2,0.35,0.5 (default: none)")
    args = parser.parse_args(argv)
    try:
        levels = [float(v) for v in args.latent_noise.split(",") if v.strip()]
    except ValueError:
        parser.error(f"--latent-noise: not a comma-separated list of numbers: {args.latent_noise!r}")
    if any(v < 0 for v in levels):
        parser.error("--latent-noise: stds must be >= 0")

    torch.set_num_threads(2)
    ae = ShapesAutoencoder.load(args.model)
    cfg = ae.config
    world = ShapesWorld(ShapesConfig(height=cfg.height, width=cfg.width, fps=cfg.fps))
    figures: dict[str, object] = {"model": str(args.model), "size": f"{cfg.width}x{cfg.height}@{cfg.fps}fps",
                                  "latent": f"{cfg.latent_channels}x(T/4)x{cfg.height // 8}x{cfg.width // 8}",
                                  "parameters": parameter_count(ae),
                                  "decoder_parameters": parameter_count(ae) - parameter_count(ae.encoder),
                                  "weights_bytes": (args.model / WEIGHTS_NAME).stat().st_size}

    # --- reconstruction quality on held-out clips -------------------------------------------------
    scores, originals, reconstructions, latents = [], [], [], []
    with torch.inference_mode():
        for index in range(args.clips):
            video = heldout_video(world, index, args.frames)
            z = ae.encode(video)
            rec = ae.decode(z)
            scores.append(psnr(rec, video))
            latents.append(z)
            if index < 4:
                originals.append(video)
                reconstructions.append(rec)
    figures["heldout_psnr_db_mean"] = round(float(np.mean(scores)), 2)
    figures["heldout_psnr_db_min"] = round(float(np.min(scores)), 2)
    z = torch.cat(latents)
    channel_std = z.std((0, 2, 3, 4))  # [C]
    figures["latent_channel_std_range"] = [round(float(channel_std.min()), 3), round(float(channel_std.max()), 3)]
    figures["latent_channel_mean_absmax"] = round(float(z.mean((0, 2, 3, 4)).abs().max()), 3)
    save_grid(args.grid, originals, reconstructions, list(range(0, args.frames, max(1, args.frames // 8))))
    figures["grid"] = str(args.grid)
    if levels:
        figures["latent_noise_tolerance"] = noise_tolerance(ae, world, [0.0, *levels])

    # --- speed -----------------------------------------------------------------------------------
    latent_frames = max(args.chunk, int(round(args.seconds * cfg.fps / 4)))
    timing_latents = torch.randn(1, cfg.latent_channels, latent_frames, cfg.height // 8, cfg.width // 8)
    video = heldout_video(world, 0, 4 * latent_frames)
    for threads in (2, 1):
        torch.set_num_threads(threads)
        decode_rtf(ae, timing_latents[:, :, :args.chunk], args.chunk, cfg.fps, 1)  # warm-up
        figures[f"decode_rtf_{threads}_threads"] = round(decode_rtf(ae, timing_latents, args.chunk, cfg.fps, 3), 1)
        figures[f"encode_rtf_{threads}_threads"] = round(encode_rate(ae, video, cfg.fps, 3), 1)
    print(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
