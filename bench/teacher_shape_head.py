"""Does the shape word reach the object's tokens? For a teacher trained with `--set
shape_labels=W`, its checkpoint's shape head reads the tokens after block `shape_layer`:
this takes single-object Shapes clips the run never saw, noises them to a level s and asks
the head which shape each object token shows (tokens at least half covered by the object),
under the clip's true caption, under the caption with the shape word changed, and with no
text.

A head that follows the caption names the true shape under the true caption and the changed
caption's shape under the changed one; one that reads the shape from the noisy latents
names the true shape under both; with neither to go on it guesses (chance: 1 in 5).

    python bench/teacher_shape_head.py --run-dir runs/f-lab --levels 0.5,0.7,0.9
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.teacher_conditioning import changed  # noqa: E402
from distill.common import token_shape_maps  # noqa: E402
from engine.shapes import vocab  # noqa: E402
from engine.shapes.captions import scene_caption  # noqa: E402
from distill.data.shapes import ShapesConfig, ShapesWorld  # noqa: E402
from distill.eval.report import bootstrap_interval  # noqa: E402
from distill.losses import add_noise  # noqa: E402


def single_object_clips(count: int, seed: int, frames: int) -> list[tuple]:
    """(clip, its first frame) of `count` single-object scenes of a seed of their own."""
    world = ShapesWorld(ShapesConfig())
    rng = np.random.default_rng(seed)
    clips = []
    while len(clips) < count:
        start = int(rng.integers(0, 480))
        clip = world.sample(int(rng.integers(2**62)), frames, start)
        if len(clip.scene.objects) == 1:
            clips.append((clip, start))
    return clips


@torch.no_grad()
def measure(run_dir: Path, drawn, frames: int, levels: list[float], seed: int) -> dict:
    from distill.teacher import TeacherRun, build_text_encoder_for, load_autoencoder, shape_layer
    from engine.config import ModelConfig
    from engine.transformer import build_transformer

    saved = json.loads((run_dir / "run.json").read_text())
    config = ModelConfig.model_validate(saved["model"])
    ckpt = sorted(run_dir.glob("checkpoint-*.safetensors"))[-1]
    tensors = load_file(ckpt)
    if not any(k.startswith("shape_head.") for k in tensors):
        raise SystemExit(f"{ckpt} has no shape head: train with --set shape_labels=W")
    model = build_transformer(config)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})  # the raw weights it trained with
    head = torch.nn.Linear(tensors["shape_head.weight"].shape[1], tensors["shape_head.weight"].shape[0])
    head.load_state_dict({k[11:]: v for k, v in tensors.items() if k.startswith("shape_head.")})
    layer = shape_layer(saved.get("shape_layer", 0), len(model.blocks))
    kept = {}
    model.blocks[layer - 1].register_forward_hook(lambda m, i, o: kept.__setitem__("tokens", o))
    encoder = build_text_encoder_for(config)
    autoencoder = load_autoencoder(saved.get("autoencoder", TeacherRun.autoencoder))

    clips = [c for c, _ in drawn]
    rng = np.random.default_rng(seed)
    wrong = [changed(c.scene, "shape", rng) for c in clips]
    captions = {"true caption": [scene_caption(c.scene) for c in clips], "shape word changed": [
        scene_caption(w) for w in wrong]}
    feats = {k: encoder.encode(v) for k, v in captions.items()}
    feats["no text"] = torch.zeros_like(feats["true caption"])
    video = torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    x0 = autoencoder.encode(video)
    world = ShapesWorld(ShapesConfig())
    token = config.latent.spatial_compression * config.transformer.patch_size[1]
    per_latent = frames // x0.shape[2]
    maps = torch.stack([token_shape_maps(world, c.scene, start, frames, per_latent, token) for c, start in drawn])
    target = maps.permute(0, 1, 3, 4, 2).reshape(len(clips), -1, maps.shape[2])  # [B, N, K]
    on_object = target[..., 0] <= 0.5  # tokens mostly the object
    true_shape = torch.tensor([1 + vocab.SHAPES.index(c.scene.objects[0].shape) for c in clips])
    wrong_shape = torch.tensor([1 + vocab.SHAPES.index(w.objects[0].shape) for w in wrong])
    attention = model.full_attention(x0.shape[2])
    rows = {}
    for level in levels:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        sigma = torch.full((len(clips),), level)
        xt = add_noise(x0, noise, sigma)
        row = {}
        for name, f in feats.items():
            model.denoise(xt, sigma * 1000, model.embed_text(f), attention)
            shape = head(kept["tokens"].float())[..., 1:].argmax(-1) + 1  # [B, N] the head's shape, not "background"
            per_clip = {}
            for label, wanted in (("names the true shape", true_shape), ("names the changed caption's shape",
                                                                         wrong_shape)):
                hits = ((shape == wanted[:, None]) & on_object).sum(1) / on_object.sum(1).clamp(min=1)
                hits = hits[on_object.any(1)].numpy()
                per_clip[label] = {"mean": float(hits.mean()), "interval": bootstrap_interval(hits)}
            row[name] = per_clip
        rows[str(level)] = row
    return {"run_dir": str(run_dir), "checkpoint": ckpt.name, "layer": layer, "clips": len(clips), "levels": rows}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run-dir", action="append", required=True, help="teacher run dir (repeat to compare)")
    ap.add_argument("--clips", type=int, default=48, help="single-object clips")
    ap.add_argument("--seconds", type=float, default=0.25, help="clip length (whole latent frames: 0.25 s each)")
    ap.add_argument("--levels", default="0.5,0.7,0.9", help="noise levels s")
    ap.add_argument("--seed", type=int, default=321)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [float(s) for s in args.levels.split(",")]
    frames = round(args.seconds * 16)
    if not all(0 < s <= 1 for s in levels) or frames < 4 or frames % 4:
        ap.error("--levels in (0, 1]; --seconds a multiple of 0.25")
    clips = single_object_clips(args.clips, args.seed, frames)
    results = [measure(Path(d), clips, frames, levels, args.seed) for d in args.run_dir]
    print(f"{args.clips} single-object clips of {args.seconds:g} s: share of each clip's object tokens where the "
          "shape head names ..., mean [95 % bootstrap interval over clips]")
    for r in results:
        print(f"\n{r['run_dir']} ({r['checkpoint']}, head after block {r['layer']})")
        for level, row in r["levels"].items():
            for name, cells in row.items():
                print(f"  s={level:<5} {name:<20} " + "  ".join(
                    f"{label}: {c['mean']:.2f} [{c['interval'][0]:.2f}, {c['interval'][1]:.2f}]"
                    for label, c in cells.items()))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
