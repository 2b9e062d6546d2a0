"""Small builders shared by the engine tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from engine import PRESETS
from engine.attention import AttentionMode, apply_rope, attend
from engine.model import StreamModel, build_decoder, build_text_encoder, build_transformer


def tiny_model(**attention) -> StreamModel:
    """The tiny-random preset with attention overrides (policy, sink_frames, window_frames...)."""
    base = PRESETS["tiny-random"]
    cfg = base.model_copy(update={"attention": base.attention.model_copy(update=attention)})
    cfg = cfg.model_validate(cfg.model_dump())  # re-run validation on the overrides
    return StreamModel(cfg, build_transformer(cfg), build_text_encoder(cfg, None, "cpu"),
                       build_decoder(cfg, None, "cpu"))


class ExplicitWindowAttention(AttentionMode):
    """Reference for the windowed policies, written from the definition rather than the
    cache: over the whole sequence, the chunk starting at frame s sees the sink frames
    [0, min(s, S)), the window [max(S, s - W), s) and itself, with those frames placed at
    positions 0..n-1 in that order (window-relative RoPE)."""

    def __init__(self, model: StreamModel, frames: int):
        att = model.config.attention
        self.rope, self.frames = model.transformer.rope_tables, frames
        self.chunk, self.sink, self.window = att.chunk_frames, att.sink_frames, att.window_frames
        self.tpf = model.config.tokens_per_frame

    def _tokens(self, frames: list[int]) -> torch.Tensor:
        return torch.cat([torch.arange(f * self.tpf, (f + 1) * self.tpf) for f in frames])

    def __call__(self, layer, q, k, v):
        out = torch.empty_like(q)
        for start in range(0, self.frames, self.chunk):
            own = list(range(start, min(start + self.chunk, self.frames)))
            visible = list(range(min(start, self.sink))) + list(range(max(self.sink, start - self.window), start)) + own
            pos = torch.arange(len(visible))
            k_cos, k_sin = self.rope.for_frames(pos)
            q_cos, q_sin = self.rope.for_frames(pos[len(visible) - len(own):])
            qi, ki = self._tokens(own), self._tokens(visible)
            out[:, qi] = attend(apply_rope(q[:, qi], q_cos[None], q_sin[None]),
                                apply_rope(k[:, ki], k_cos[None], k_sin[None]), v[:, ki], None, "native")
        return out


def torchrun_two_processes(args: list[str], timeout: float) -> tuple[int, str]:
    """`torchrun --standalone --nproc_per_node=2 ARGS` from the repo root, one thread each;
    (exit code, stderr). Every worker is killed if it outlives the timeout."""
    root = Path(__file__).resolve().parent.parent
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    proc = subprocess.Popen(cmd, cwd=root, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        _, stderr = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:  # never leave worker processes behind
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, stderr
