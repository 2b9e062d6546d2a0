"""Pieces every training run shares: checkpoints in safetensors + JSON (never pickle),
resume by re-running, weight EMA, cached caption embeddings, and latent batches of the
Shapes world or of a folder of videos."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn as nn
from safetensors.torch import load_file, save_file

CKPT_RE = re.compile(r"checkpoint-(\d+)\.safetensors$")


# --- runs ---------------------------------------------------------------------------------

@dataclass
class TrainResult:
    """What every trainer returns (train_autoencoder, train_teacher, train_student, train_reward)."""

    out_dir: Path | None  # the exported model; None on ranks other than 0
    step: int  # the run's last step
    seconds: float  # this invocation's wall time
    losses: list[float] = field(default_factory=list)  # per step of this invocation (rank 0)
    figures: dict[str, float] = field(default_factory=dict)  # held-out figures measured at the end


def resolve_device(name: str = "auto") -> torch.device:
    """A run's `device` field: "auto" is the GPU of this process (cuda:LOCAL_RANK) if there
    is one, else the CPU; anything else is a torch device name ("cpu", "cuda", "cuda:1")."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return dev


def native_bf16(device_type: str) -> bool:
    """Whether bf16 matmuls run in hardware on this device: a GPU, or a CPU with avx512_bf16 or
    AMX (`engine.model.cpu_has_bf16`). An AVX2-only CPU (AMD Zen 3, older Intel) emulates them:
    a Shapes teacher step there took 32 s under bf16 autocast against 1.8 s in float32 (and
    0.73 s in bf16 on an AMX CPU)."""
    from engine.model import cpu_has_bf16

    return device_type != "cpu" or cpu_has_bf16()


_said_float32: set[str] = set()


def autocast(module: nn.Module, enabled: bool):
    """bf16 autocast on `module`'s device for a run's forwards (weights, optimiser states and
    losses stay float32): training steps run 1.4-2.5x faster on CPUs with bf16 matrix
    units (avx512_bf16 / AMX), as on GPUs. Asked for where bf16 is emulated (`native_bf16`),
    the run stays in float32, and says so once."""
    device = next(module.parameters()).device.type
    if enabled and not native_bf16(device):
        if device not in _said_float32:
            _said_float32.add(device)
            print("bf16 autocast is off: this CPU has no avx512_bf16 or AMX, and emulated bf16 is "
                  "~18x slower than float32; training in float32", file=sys.stderr)
        enabled = False
    return torch.autocast(device, dtype=torch.bfloat16, enabled=enabled)


def run_to_json(run: Any) -> dict[str, Any]:
    """A run config (a dataclass holding a pydantic model config) as plain JSON data."""
    data = {f.name: getattr(run, f.name) for f in dataclasses.fields(run)}
    return json.loads(json.dumps(data, default=lambda v: v.model_dump(mode="json") if hasattr(v, "model_dump")
                                 else str(v)))


# --- checkpoints -------------------------------------------------------------------------

def _flatten_optimizer(name: str, opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    state = opt.state_dict()
    tensors, scalars = {}, {}
    for idx, slots in state["state"].items():
        for key, value in slots.items():
            if torch.is_tensor(value):
                tensors[f"{name}.state.{idx}.{key}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{key}"] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _restore_optimizer(name: str, opt: torch.optim.Optimizer, tensors: dict, meta: dict, grow: bool = False) -> None:
    """grow: the optimizer may hold more parameters than the checkpoint's (a resumed run whose
    model gained modules, registered after the old ones): those start with fresh state."""
    state: dict[int, dict] = {}
    prefix = f"{name}.state."
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, slot = key[len(prefix):].split(".", 1)
            state.setdefault(int(idx), {})[slot] = value
    for key, value in meta["scalars"].items():
        idx, slot = key.split(".", 1)
        state.setdefault(int(idx), {})[slot] = value
    groups = meta["param_groups"]
    if grow:
        groups = [{**saved, "params": current["params"] if len(current["params"]) > len(saved["params"]) else saved["params"]}
                  for saved, current in zip(groups, opt.state_dict()["param_groups"])]
    opt.load_state_dict({"state": state, "param_groups": groups})


class Checkpointer:
    """run_dir/checkpoint-<step>.safetensors (+ .json): modules, optimizers, step, extra."""

    def __init__(self, run_dir: str | Path, keep: int = 2):
        self.run_dir = Path(run_dir)
        self.keep = keep

    def latest(self) -> Path | None:
        found = sorted((int(m.group(1)), p) for p in self.run_dir.glob("checkpoint-*.safetensors")
                       if (m := CKPT_RE.search(p.name)) and p.with_suffix(".json").is_file())
        return found[-1][1] if found else None

    def save(self, step: int, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             extra: dict | None = None) -> Path:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        tensors: dict[str, torch.Tensor] = {}
        meta: dict = {"step": step, "extra": extra or {}, "optimizers": {}}
        for name, module in modules.items():
            for key, value in module.state_dict().items():
                tensors[f"{name}.{key}"] = value.detach().cpu().contiguous()
        for name, opt in optimizers.items():
            t, m = _flatten_optimizer(f"opt_{name}", opt)
            tensors.update(t)
            meta["optimizers"][name] = m
        path = self.run_dir / f"checkpoint-{step:07d}.safetensors"
        tmp = path.with_suffix(".tmp")
        save_file(tensors, tmp)
        path.with_suffix(".json").write_text(json.dumps(meta))
        tmp.replace(path)  # the JSON exists before the weights appear, so latest() never sees half a checkpoint
        for old in sorted(self.run_dir.glob("checkpoint-*.safetensors"))[: -self.keep]:
            old.unlink(missing_ok=True)
            old.with_suffix(".json").unlink(missing_ok=True)
        return path

    def load(self, path: Path, modules: dict[str, nn.Module], optimizers: dict[str, torch.optim.Optimizer],
             optional: tuple[str, ...] = ()) -> tuple[int, dict]:
        """Restore modules and optimizers in place -> (step, extra). Names in `optional` (of
        modules, optimizers, or of a module's submodules) may be missing from the checkpoint:
        they keep their fresh state."""
        tensors = load_file(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        grown = False
        for name, module in modules.items():
            prefix = f"{name}."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if not state and name in optional:  # a training-only head added to a resumed run starts afresh
                grown = True  # (its parameters, in an optimizer with the others, get fresh state too)
                continue
            result = module.load_state_dict(state, strict=False)
            missing = result.missing_keys
            if result.unexpected_keys or any(k.split(".")[0] not in optional for k in missing):
                raise ValueError(f"{path} does not fit {name}: missing {missing[:4]}, unexpected "
                                 f"{result.unexpected_keys[:4]}")
            grown |= bool(missing)  # a module added to the model since (in `optional`) keeps its initial state
        for name, opt in optimizers.items():
            if name not in meta["optimizers"] and name in optional:
                continue
            _restore_optimizer(f"opt_{name}", opt, tensors, meta["optimizers"][name], grow=grown)
        return meta["step"], meta["extra"]


def warmup_cosine_lr(lr: float, step: int, warmup: int, steps: int, final_fraction: float) -> float:
    """Linear warm-up, then cosine decay to lr * final_fraction at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return lr * (final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress)))


def step_generator(seed: int, step: int, rank: int = 0, stream: tuple[int, ...] = (),
                   device: torch.device | str = "cpu") -> torch.Generator:
    """A generator seeded from (seed, step, rank, *stream): a resumed run draws what an
    uninterrupted one would have drawn at that step. On `device`, for drawing there."""
    mixed = int(np.random.SeedSequence([seed, step, rank, *stream]).generate_state(1, np.uint64)[0]) % 2**63
    return torch.Generator(device=device).manual_seed(mixed)


class MetricsLog:
    """run_dir/metrics.jsonl: one JSON object per logged step, beside TensorBoard's
    event files, so scripts and tests can read a run without TensorBoard."""

    def __init__(self, run_dir: Path, enabled: bool = True):
        from torch.utils.tensorboard import SummaryWriter

        self.enabled = enabled
        self.path = Path(run_dir) / "metrics.jsonl"
        self.writer = SummaryWriter(Path(run_dir) / "tb") if enabled else None

    def log(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)
        with self.path.open("a") as f:
            f.write(json.dumps({"step": step, **values}) + "\n")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


# --- weight EMA ----------------------------------------------------------------------------

class EMA(nn.Module):
    """theta_ema <- d * theta_ema + (1 - d) * theta after every optimiser step, with
    d = min(decay, (1 + step) / (10 + step)): early on the average forgets the random init
    quickly. Without that warm-up a 0.9995 average keeps 0.9995^4500 = 10 % of the init
    after 4500 steps: the Shapes teacher's prompt accuracy was 0.21 from that average and
    0.39 from the raw weights (12 standard prompts)."""

    def __init__(self, model: nn.Module, decay: float):
        super().__init__()
        self.decay = decay
        self.shadow = copy.deepcopy(model).requires_grad_(False).eval()

    def decay_at(self, step: int) -> float:
        return min(self.decay, (1 + step) / (10 + step))

    @torch.no_grad()
    def update(self, model: nn.Module, step: int) -> None:
        """After optimiser step `step` (0 for the first)."""
        weight = 1 - self.decay_at(step)
        for ema_p, p in zip(self.shadow.parameters(), model.parameters()):
            ema_p.lerp_(p.detach(), weight)


# --- captions ------------------------------------------------------------------------------

class CaptionCache:
    """Text-encoder features per caption, computed once (Shapes captions repeat a lot)."""

    def __init__(self, encoder, size: int = 50_000):
        self.encoder, self.size = encoder, size
        self._cache: OrderedDict[str, torch.Tensor] = OrderedDict()

    def __call__(self, captions: list[str]) -> torch.Tensor:  # -> [B, L, text_dim]
        missing = [c for c in dict.fromkeys(captions) if c not in self._cache]
        if missing:
            for caption, feats in zip(missing, self.encoder.encode(missing)):
                self._cache[caption] = feats.cpu()  # kept in host memory, whatever device encodes
            while len(self._cache) > self.size:
                self._cache.popitem(last=False)
        return torch.stack([self._cache[c] for c in captions])


# --- latent batches: the Shapes world or a folder of videos --------------------------------------

# Which of a clip's captions a training step reads (TeacherRun.captions says why)
CaptionChoice = Literal["paraphrases", "canonical"]
# How a run stores its exported transformer (engine.model.save_model): bf16 halves the file.
WeightsDtype = Literal["float32", "bfloat16"]


class ClipLatents:
    """Deterministic batches of (latents, captions) for a training step: clips derive from
    (seed, step), so a resumed run sees the data it would have seen. Subclasses say where
    clips come from (`clips`).

    With `pool_size` > 0 the clips are rendered and encoded once (a pool, saved under
    `cache_dir` so a resumed run does not encode again) and each step draws clips from it
    with a random paraphrase of each caption: the autoencoder's encoder then costs nothing
    per step, which on 2 CPU cores more than doubles the teacher's steps per second."""

    pool_name = "latent-pool"
    CAPTION_CHOICES = get_args(CaptionChoice)

    def __init__(self, autoencoder, latent_frames: int, batch_size: int, seed: int, pool_size: int = 0,
                 cache_dir: str | Path | None = None, progress: bool = True, captions: str = "paraphrases",
                 pool_seed: int | None = None, pool_batch: int = 0):
        if captions not in self.CAPTION_CHOICES:
            raise ValueError(f"captions {captions!r}: one of {', '.join(self.CAPTION_CHOICES)}")
        # "canonical": every draw takes a clip's first caption (the Shapes world's canonical one,
        # naming every attribute in the canonical words) instead of a random paraphrase; the
        # paraphrase is still drawn, so both ways see the same clips step for step
        self.canonical = captions == "canonical"
        self.autoencoder = autoencoder
        self.frames = latent_frames * autoencoder.config.temporal_compression
        self.batch_size, self.seed = batch_size, seed
        # The pool is drawn by its own seed and clips per draw (default: the run's): another run's
        # pool (a teacher's, whose seed and batch these are) is then the same file, linkable.
        self.pool_seed = seed if pool_seed is None else pool_seed
        self.pool_batch = pool_batch or batch_size
        self.pool: torch.Tensor | None = None  # [N, C, F, h, w]
        self.pool_captions: list[list[str]] = []
        if pool_size > 0:
            self._build_pool(pool_size, Path(cache_dir) if cache_dir else None, progress)

    def clips(self, step: int, stream: tuple[int, ...] = (), seed: int | None = None, count: int = 0) -> list:
        """`count` clips (default batch_size) of draw `seed` (default the run's): objects with
        uint8 `frames` [T, H, W, 3], `caption`, `captions`."""
        raise NotImplementedError

    @torch.no_grad()
    def encode(self, clips) -> torch.Tensor:
        video = torch.from_numpy(np.stack([c.frames for c in clips]))  # [B, T, H, W, 3] uint8
        device = next(self.autoencoder.parameters()).device  # encoded where the autoencoder is, kept on the host
        video = video.to(device).permute(0, 4, 1, 2, 3).float() / 127.5 - 1  # [B, 3, T, H, W]
        return self.autoencoder.encode(video).cpu()

    @torch.no_grad()
    def batch(self, step: int) -> tuple[torch.Tensor, list[str]]:
        if self.pool is None:
            clips = self.clips(step)
            return self.encode(clips), [c.captions[0] if self.canonical else c.caption for c in clips]
        index, captions = self.batch_draw(step)
        return self.pool[torch.from_numpy(index)], captions

    def batch_draw(self, step: int) -> tuple[np.ndarray, list[str]]:
        """The pool clips of a step's batch and a paraphrase of each one's caption."""
        rng = np.random.default_rng([self.seed, 1, step])
        index = rng.choice(len(self.pool), size=self.batch_size, replace=False)
        return index, self._captions(index, rng)

    def _captions(self, index: np.ndarray, rng: np.random.Generator) -> list[str]:
        """A random paraphrase of each pool clip's caption (or, with captions "canonical", its first)."""
        drawn = [int(rng.integers(len(self.pool_captions[i]))) for i in index]
        return [self.pool_captions[i][0 if self.canonical else k] for i, k in zip(index, drawn)]

    @torch.no_grad()
    def single_frames(self, step: int, count: int) -> tuple[torch.Tensor, list[str]]:
        """`count` single latent frames of pool clips, each with a paraphrase of its clip's
        caption: [count, C, 1, h, w]. The autoencoder encodes every latent frame from its own
        4 video frames, so a pool clip's frame is what encoding those frames alone gives."""
        index, frame, captions = self.single_frames_draw(step, count)
        return self.pool[torch.from_numpy(index), :, torch.from_numpy(frame)].unsqueeze(2), captions

    def single_frames_draw(self, step: int, count: int) -> tuple[np.ndarray, np.ndarray, list[str]]:
        """Which pool clips and which of their latent frames `single_frames` takes, and the captions."""
        if self.pool is None:
            raise ValueError("single frames are drawn from the clip pool: set pool_size > 0")
        rng = np.random.default_rng([self.seed, 3, step])
        index = rng.integers(len(self.pool), size=count)
        frame = rng.integers(self.pool.shape[2], size=count)
        return index, frame, self._captions(index, rng)

    def _build_pool(self, size: int, cache_dir: Path | None, progress: bool) -> None:
        from tqdm import tqdm

        file = cache_dir / f"{self.pool_name}-{self.pool_seed}-{size}x{self.frames}.safetensors" if cache_dir else None
        if file is not None and file.is_file():
            self.pool = load_file(file)["latents"]
            self.pool_captions = json.loads(file.with_suffix(".json").read_text())
            if len(self.pool) == size:
                return
        latents, captions, done = [], [], 0
        with tqdm(total=size, desc="encoding clips", unit="clip", disable=not progress, dynamic_ncols=True) as bar:
            while done < size:  # a stream of its own: the pool's clips are never a training step's
                clips = self.clips(len(latents), stream=(2,), seed=self.pool_seed, count=self.pool_batch)[: size - done]
                latents.append(self.encode(clips))
                captions += [list(dict.fromkeys(c.captions)) for c in clips]
                done += len(clips)
                bar.update(len(clips))
        self.pool, self.pool_captions = torch.cat(latents).contiguous(), captions
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            save_file({"latents": self.pool}, file)
            file.with_suffix(".json").write_text(json.dumps(captions))


class ShapesLatents(ClipLatents):
    """Clips of the procedural Shapes world: windows of random scenes' streams."""

    def __init__(self, autoencoder, latent_frames: int, batch_size: int, seed: int, height: int = 128,
                 width: int = 128, fps: int = 16, max_start_frame: int = 480, pool_size: int = 0,
                 cache_dir: str | Path | None = None, progress: bool = True, layout: str = "random",
                 captions: str = "paraphrases", pool_seed: int | None = None, pool_batch: int = 0,
                 min_start_frame: int = 0, orbit: str = "either"):
        from engine.shapes.scene import SceneSampling
        from distill.data.shapes import ShapesConfig, ShapesWorld

        self.world = ShapesWorld(ShapesConfig(height=height, width=width, fps=fps,
                                              sampling=SceneSampling(layout=layout, orbit=orbit)))
        # clips start at a frame drawn from [min_start_frame, max_start_frame] of their scene's stream
        self.min_start, self.max_start = min_start_frame, max_start_frame
        if not 0 <= min_start_frame <= max_start_frame:
            raise ValueError(f"clip starts from frame {min_start_frame} to {max_start_frame}: need 0 <= min <= max")
        if (layout, min_start_frame, max_start_frame) != ("random", 0, 480):  # another pool: another file
            starts = f"{min_start_frame}to{max_start_frame}" if min_start_frame else f"{max_start_frame}"
            self.pool_name = f"latent-pool-{layout}-start{starts}"
        if orbit != "either":
            self.pool_name = f"{self.pool_name}-{orbit}"
        super().__init__(autoencoder, latent_frames, batch_size, seed, pool_size, cache_dir, progress, captions,
                         pool_seed, pool_batch)

    def clips(self, step: int, stream: tuple[int, ...] = (), seed: int | None = None, count: int = 0):
        seeds, starts = self._draws(step, stream, seed, count)
        return [self.world.sample(int(s), self.frames, int(o)) for s, o in zip(seeds, starts)]

    def _draws(self, step: int, stream: tuple[int, ...], seed: int | None = None,
               count: int = 0) -> tuple[np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed if seed is None else seed, *stream, step])
        count = count or self.batch_size
        return rng.integers(0, 2**62, size=count), rng.integers(self.min_start, self.max_start + 1, size=count)

    def pool_shape_maps(self, token: int, cache_dir: str | Path | None = None, progress: bool = True) -> torch.Tensor:
        """What each token of each pool clip shows: the share of its pixels (over its latent
        frame's video frames) that are background or each of vocab.SHAPES, from the pool
        clips' scenes (`distill.data.render.shape_maps`). token: pixels a token spans
        (spatial compression x patch) -> [N, F, 1 + S, H / token, W / token], cached in
        `cache_dir` beside the pool."""
        from tqdm import tqdm

        from engine.shapes.captions import scene_caption

        if self.pool is None:
            raise ValueError("shape maps are made for the clip pool: set pool_size > 0")
        size, c = len(self.pool), self.world.config
        name = f"shape-maps{self.pool_name.removeprefix('latent-pool')}-{self.pool_seed}-{size}x{self.frames}-{token}px"
        file = Path(cache_dir) / f"{name}.safetensors" if cache_dir else None
        if file is not None and file.is_file():
            return load_file(file)["maps"]
        per_latent = self.frames // self.pool.shape[2]
        maps = []
        with tqdm(total=size, desc="shape maps", unit="clip", disable=not progress, dynamic_ncols=True) as bar:
            for batch in range(-(-size // self.pool_batch)):  # the pool's clips, as _build_pool drew them
                for seed, start in zip(*self._draws(batch, (2,), self.pool_seed, self.pool_batch)):
                    if len(maps) == size:
                        break
                    scene = self.world.scene(int(seed))
                    if scene_caption(scene) != self.pool_captions[len(maps)][0]:  # [0] is the canonical caption
                        raise ValueError(f"pool clip {len(maps)} is not the scene its draw gives: the pool was "
                                         f"built with another batch size than {self.pool_batch}")
                    maps.append(token_shape_maps(self.world, scene, int(start), self.frames, per_latent, token))
                    bar.update(1)
        out = torch.stack(maps).contiguous()
        if file is not None:
            file.parent.mkdir(parents=True, exist_ok=True)
            save_file({"maps": out}, file)
        return out


def token_shape_maps(world, scene, start: int, frames: int, per_latent: int, token: int) -> torch.Tensor:
    """`distill.data.render.shape_maps` of video frames [start, start + frames) of a scene,
    averaged over each latent frame's `per_latent` video frames and each token's `token` x
    `token` pixels -> [F, 1 + S, H / token, W / token]"""
    from distill.data.render import shape_maps

    c = world.config
    m = shape_maps(scene, np.arange(start, start + frames), c.height, c.width, c.fps)  # [T, H, W, K]
    t, h, w, k = m.shape
    m = m.reshape(t // per_latent, per_latent, h // token, token, w // token, token, k)
    return torch.from_numpy(m.mean((1, 3, 5))).permute(0, 3, 1, 2).contiguous()


class VideoFolderLatents(ClipLatents):
    """Clips of a folder of your own videos with a captions.jsonl (distill/data/video_folder.py)."""

    pool_name = "latent-pool-videos"

    def __init__(self, autoencoder, folder: str | Path, latent_frames: int, batch_size: int, seed: int,
                 height: int = 128, width: int = 128, fps: float = 16, pool_size: int = 0,
                 cache_dir: str | Path | None = None, progress: bool = True, captions: str = "paraphrases"):
        from distill.data.video_folder import VideoClips

        self.source = VideoClips(folder, latent_frames * autoencoder.config.temporal_compression, height, width, fps)
        super().__init__(autoencoder, latent_frames, batch_size, seed, pool_size, cache_dir, progress, captions)

    def clips(self, step: int, stream: tuple[int, ...] = (), seed: int | None = None, count: int = 0):
        rng = np.random.default_rng([self.seed if seed is None else seed, *stream, step])
        return [self.source.sample(rng) for _ in range(count or self.batch_size)]
