"""Which words of a prompt does a model use? The flow-matching error of a model on real Shapes
clips at fixed noise, under the clip's true caption and under the same caption with one
attribute changed (the object's colour, its shape, its motion) or with no text at all.

A model that uses a word fits the clip worse when that word is wrong: the table gives, per
noise level s, the error in the object cells (the 10 % of latent cells furthest from the
frame's median, where the object is) and its increase over the true caption, mean [95 %
bootstrap interval over clips]. An increase near 0 means the model ignores that attribute.

    python bench/teacher_conditioning.py --model runs/v2/teacher/model
    python bench/teacher_conditioning.py --model A --model B --clips 96 --json runs/conditioning.json
    python bench/teacher_conditioning.py --model A --seconds 0.25 --blur 1   # one latent frame, blurred

`--blur SIGMA` noises a spatially blurred copy of each clip (distill.losses.blur_latents) and
still scores the fit of the sharp one: the soft blobs sampling passes through, where only the
prompt can tell the object's outline.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from engine.shapes import vocab  # noqa: E402
from engine.shapes.captions import scene_caption  # noqa: E402
from distill.data.shapes import ShapesConfig, ShapesWorld  # noqa: E402
from distill.eval.report import bootstrap_interval  # noqa: E402
from distill.losses import add_noise, blur_latents, masked_flow_error, object_cells  # noqa: E402

ATTRIBUTES = {"colour": tuple(vocab.OBJECT_COLOURS), "shape": vocab.SHAPES, "motion": vocab.MOTIONS}


def single_object_clips(count: int, seed: int, frames: int, size: int, fps: int):
    world = ShapesWorld(ShapesConfig(height=size, width=size, fps=fps))
    rng = np.random.default_rng(seed)
    clips = []
    while len(clips) < count:
        clip = world.sample(int(rng.integers(2**62)), frames, int(rng.integers(0, 480)))
        if len(clip.scene.objects) == 1:
            clips.append(clip)
    return clips


def changed(scene, field: str, rng: np.random.Generator):
    obj = scene.objects[0]
    options = [v for v in ATTRIBUTES[field] if v != getattr(obj, field)]
    value = options[int(rng.integers(len(options)))]
    return dataclasses.replace(scene, objects=(dataclasses.replace(obj, **{field: value}),))


@torch.no_grad()
def measure(model_dir: str, clips, levels: list[float], seed: int, blur: float = 0.0) -> dict:
    from distill.teacher import load_autoencoder
    from engine import load_model

    model = load_model(model_dir, device="cpu", backend="eager")
    tr = model.transformer.eval()
    autoencoder = load_autoencoder(model_dir)
    rng = np.random.default_rng(seed)
    captions = {"true": [scene_caption(c.scene) for c in clips]}
    for field in ATTRIBUTES:
        captions[field] = [scene_caption(changed(c.scene, field, rng)) for c in clips]
    video = torch.from_numpy(np.stack([c.frames for c in clips])).permute(0, 4, 1, 2, 3).float() / 127.5 - 1
    x0 = autoencoder.encode(video)
    mask = object_cells(x0)
    attention = tr.full_attention(x0.shape[2])
    feats = {k: model.text_encoder.encode(v) for k, v in captions.items()}
    feats["no text"] = torch.zeros_like(feats["true"])
    rows = {}
    for level in levels:
        noise = torch.randn(x0.shape, generator=torch.Generator().manual_seed(seed))
        sigma = torch.full((len(clips),), level)
        xt = add_noise(blur_latents(x0, blur) if blur > 0 else x0, noise, sigma)
        errors = {name: masked_flow_error(tr.denoise(xt, sigma * 1000, tr.embed_text(f), attention), x0, noise,
                                          mask).numpy() for name, f in feats.items()}
        true = errors["true"]
        rows[str(level)] = {"object_error_true": float(true.mean()), **{
            name: {"increase": float((e / true - 1).mean()), "interval": bootstrap_interval(e / true - 1)}
            for name, e in errors.items() if name != "true"}}
    return {"model": model_dir, "clips": len(clips), "blur": blur, "levels": rows,
            "examples": {k: v[:2] for k, v in captions.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", action="append", required=True, help="model dir (repeat to compare)")
    ap.add_argument("--clips", type=int, default=48, help="single-object clips")
    ap.add_argument("--seconds", type=float, default=1.5, help="clip length (whole latent frames: 0.25 s each)")
    ap.add_argument("--blur", type=float, default=0.0, help="noise a blurred copy (sigma, latent pixels); 0: none")
    ap.add_argument("--levels", default="0.5,0.7,0.9,0.98", help="noise levels s")
    ap.add_argument("--seed", type=int, default=123)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    levels = [float(s) for s in args.levels.split(",")]
    if not all(0 < s <= 1 for s in levels):
        ap.error("--levels: noise levels in (0, 1]")
    frames = round(args.seconds * 16)
    if frames < 4 or frames % 4 or args.blur < 0:
        ap.error("--seconds: a multiple of 0.25 (whole latent frames of 4 frames at 16 fps); --blur >= 0")
    clips = single_object_clips(args.clips, args.seed, frames, 128, 16)
    results = [measure(m, clips, levels, args.seed, args.blur) for m in args.model]
    blurred = f", noised from a copy blurred by {args.blur:g} latent px" if args.blur else ""
    print(f"{args.clips} single-object clips of {args.seconds:g} s{blurred}; increase of the object cells' error "
          "over the true caption, mean [95 % bootstrap interval]")
    for r in results:
        print(f"\n{r['model']}")
        print(f"  {'s':>5}  {'true':>7}  " + "  ".join(f"{n:>22}" for n in (*ATTRIBUTES, "no text")))
        for level, row in r["levels"].items():
            cells = [f"{100 * row[n]['increase']:+5.1f}% [{100 * row[n]['interval'][0]:+.1f},"
                     f"{100 * row[n]['interval'][1]:+.1f}]" for n in (*ATTRIBUTES, "no text")]
            print(f"  {level:>5}  {row['object_error_true']:7.4f}  " + "  ".join(f"{c:>22}" for c in cells))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
