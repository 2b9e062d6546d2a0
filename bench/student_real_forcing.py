"""A control: fine-tune a streaming student on real Shapes clips by teacher forcing.

Every chunk of a real clip is noised to one of the student's noise levels and the student,
given the clean real chunks before it as context (CausVid's teacher-forcing layout,
distill/rollout.py), regresses its x0 onto the real chunk. In the Shapes world a scene's
clip is fixed by its caption and its first frame (canonical layout, clips from the scene's
start), so each chunk after the first is fixed by the chunks before it: the loss teaches the
step from one latent frame to the next that the v5 student does not take
(bench/latent_motion.py). What it does not teach is to continue from the student's own,
imperfect frames (exposure bias): docs/default-model.md, "Measured: v5, streamed a latent frame
a chunk", has what it measured.

    python bench/student_real_forcing.py --init engine/models/shapes-default --run-dir runs/rf --steps 400
    python bench/student_real_forcing.py --run-dir runs/rf250 --context-t 250     # noised context
    python bench/latent_motion.py --student runs/rf/model --threads 2
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import save_file
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def fine_tune(init: Path, run_dir: Path, steps: int, batch: int, lr: float, pool: int, frames: int,
              context_t: float = 0.0, progress: bool = True) -> tuple[Path, list[float]]:
    """-> (the fine-tuned model dir, the loss of every step). The model dir is `init`'s config
    (runtime eager) with the EMA of the fine-tuned weights and `init`'s autoencoder. context_t:
    the earlier chunks noised to this timestep (0: clean, as a refreshed cache holds them; 250:
    as the last pass of a 4-3-2 chunk leaves them)."""
    from distill.common import EMA, CaptionCache, ShapesLatents, autocast
    from distill.losses import ode_regression_loss
    from distill.rollout import teacher_forcing_forward
    from distill.student import StudentRun, student_sigmas
    from distill.teacher import load_autoencoder
    from engine.components import build_text_encoder
    from engine.config import ModelConfig
    from engine.model import load_transformer_weights
    from engine.sampler import shift_sigma
    from engine.transformer import build_transformer

    cfg = ModelConfig.load(init / "model.json")
    lat = cfg.latent
    model = build_transformer(cfg).train()
    load_transformer_weights(model, init / "transformer.safetensors")
    ema = EMA(model, 0.99)
    data = ShapesLatents(load_autoencoder(init), frames, batch, 0, lat.height, lat.width, int(lat.fps),
                         max_start_frame=0, pool_size=pool, cache_dir=run_dir, progress=progress, layout="canonical")
    text = CaptionCache(build_text_encoder(cfg, None, "cpu", torch.float32), size=8192)
    sigmas = torch.tensor(student_sigmas(StudentRun(model=cfg)))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    chunk = cfg.attention.chunk_frames
    gen = torch.Generator().manual_seed(0)
    s_context = shift_sigma(context_t / cfg.sampler.num_train_timesteps, cfg.sampler.shift)  # the sampler's level
    losses = []
    for step in tqdm(range(steps), desc="real forcing", unit="step", disable=not progress, dynamic_ncols=True):
        x0, captions = data.batch(step)
        level = torch.randint(len(sigmas), (len(x0), frames // chunk), generator=gen).repeat_interleave(chunk, 1)
        s = sigmas[level]  # [B, F]: every chunk at one of the student's levels
        noisy = x0 + s[:, None, :, None, None] * (torch.randn(x0.shape, generator=gen) - x0)
        past = x0 if not context_t else x0 + s_context * (torch.randn(x0.shape, generator=gen) - x0)
        with autocast(model, True):
            pred = teacher_forcing_forward(model, cfg, past, noisy, s, model.embed_text(text(captions)), context_t)
            loss = ode_regression_loss(pred, x0)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        ema.update(model, step)
        losses.append(loss.item())
    out = run_dir / "model"
    out.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in ema.shadow.state_dict().items()}, out / "transformer.safetensors")
    config = json.loads((init / "model.json").read_text())
    config["runtime"] = "eager"
    config["provenance"] = {"stage": "bench/student_real_forcing.py", "init": str(init), "steps": steps,
                            "batch": batch, "lr": lr, "pool": pool, "frames": frames, "context_t": context_t}
    (out / "model.json").write_text(json.dumps(config, indent=2) + "\n")
    for name in ("autoencoder.json", "autoencoder.safetensors"):
        shutil.copy(init / name, out / name)
    return out, losses


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--init", type=Path, default=Path("engine/models/shapes-default"), help="student model dir")
    ap.add_argument("--run-dir", type=Path, required=True, help="clip pool and the fine-tuned model (run-dir/model)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--pool", type=int, default=1024, help="real clips, encoded once into the run dir")
    ap.add_argument("--frames", type=int, default=6, help="latent frames a clip (whole chunks)")
    ap.add_argument("--context-t", type=float, default=0.0,
                    help="timestep the earlier chunks are noised to (0: clean; 250: a 4-3-2 chunk's last pass)")
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if not (args.init / "model.json").is_file():
        ap.error(f"--init {args.init}: no model.json there")
    if args.steps < 1 or args.batch < 1 or args.pool < args.batch or args.lr <= 0 or not 0 <= args.context_t < 1000:
        ap.error("--steps and --batch >= 1, --pool >= --batch, --lr > 0, 0 <= --context-t < 1000")
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    out, losses = fine_tune(args.init, args.run_dir, args.steps, args.batch, args.lr, args.pool, args.frames,
                            args.context_t)
    tail = losses[-min(25, len(losses)):]
    print(f"wrote {out}: x0 loss {losses[0]:.4f} at the first step, {sum(tail) / len(tail):.4f} over the last "
          f"{len(tail)}; {time.time() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
