"""StreamSession: one endless stream of frames from a prompt, chunk by chunk.

A session describes its work as a Python generator of `Forward` requests (one
transformer forward each: a denoising step, the t=0 context refresh, or a re-cache
after a prompt switch) and receives each forward's output through `send`. Running a
session alone (`next_chunk`) and batching many sessions into one forward (the
scheduler) therefore share every line of the sampling logic.

Per chunk (Self-Forcing inference, engine/step.py's chunk_steps):
    x ~ N(0, I);  for each step i: v = f(x, t_i, ctx, cache); x, x0 = sampler.step(v, x)
    refresh: f(x0, 0, ctx, cache) writes the clean chunk's K/V (or the last step's)
    frames = decoder.decode_chunk(x0, decoder_state)
A prompt switch replays the kept frames under the new prompt first (LongLive's re-cache).
"""

from __future__ import annotations

import secrets
import threading
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generator

import numpy as np
import torch

from framecast import MAX_PROMPT_CHARS, MAX_SEED

from .cache import CacheMark, KVCache
from .errors import InvalidPrompt, InvalidSeed, SessionClosed
from .step import KeptFrames, chunk_steps

if TYPE_CHECKING:
    from .model import StreamModel



@dataclass
class Chunk:
    index: int
    frames: np.ndarray  # uint8 [T, H, W, 3]
    pts: float  # stream time of the first frame, seconds
    prompt_event_id: str | None = None
    latents: torch.Tensor | None = None  # [1, C, F, h, w] clean latents of this chunk


@dataclass
class Checkpoint:
    """A session as it was before generating chunk `chunk_index`: what a rewind restores.
    Cheap: references to tensors that are never written in place, the RNG state, and a
    cache mark (engine/cache.py journals what commits overwrite from there on)."""

    chunk_index: int
    cache: CacheMark
    kept: KeptFrames
    decoder_state: Any
    generator_state: torch.Tensor
    prompt: str
    context: torch.Tensor


@dataclass
class Forward:
    """One transformer forward that a session needs next."""

    session: "StreamSession"
    latents: torch.Tensor  # [1, C, F, h, w]
    timestep: float  # model units (0..1000, shifted)
    context: torch.Tensor  # [1, L, D] projected text context
    commit: bool  # move this chunk's K/V into sink/window after the forward


def check_prompt(prompt: object) -> str:
    if not isinstance(prompt, str) or not prompt.strip():
        raise InvalidPrompt("prompt must be a non-empty string")
    if len(prompt) > MAX_PROMPT_CHARS:
        raise InvalidPrompt(f"prompt has {len(prompt)} characters; the limit is {MAX_PROMPT_CHARS}")
    return prompt.strip()


def check_seed(seed: object) -> int:
    if seed is None:
        return secrets.randbelow(2**31)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_SEED:
        raise InvalidSeed(f"seed must be an integer in [0, {MAX_SEED}], got {seed!r}")
    return seed


def to_uint8_frames(video: torch.Tensor) -> np.ndarray:
    """[1, 3, T, H, W] in [-1, 1] -> uint8 [T, H, W, 3] (the one copy a client needs)."""
    frames = ((video[0].float() + 1) * 127.5).clamp_(0, 255).round_().to(torch.uint8)
    return frames.permute(1, 2, 3, 0).contiguous().cpu().numpy()


class StreamSession:
    def __init__(self, model: "StreamModel", prompt: str, seed: int | None = None, *,
                 cache: KVCache | None = None, row: int = 0, rewind_chunks: int = 0):
        """rewind_chunks: how many chunk boundaries back `rewind` may go (0: none, and no
        journal is kept). A server that generates ahead sets it to what it holds unsent."""
        self.model = model
        self.prompt = check_prompt(prompt)
        self.seed = check_seed(seed)
        self.generator = torch.Generator(device=model.device).manual_seed(self.seed)
        self.context = model.context_for(self.prompt)
        self.cache = cache if cache is not None else model.new_cache(rows=1)
        self.row = row
        self.cache.reset(row)
        att = model.config.attention
        self.kept = KeptFrames(att.sink_frames, att.window_frames)  # what a re-cache replays
        self.decoder_state = model.decoder.init_decoder_state(1)
        self.chunk_index = 0
        self.closed = False
        self._lock = threading.Lock()
        self._pending: tuple[str, str] | None = None
        self._event_counter = 0
        self._in_chunk = False
        self.rewind_chunks = rewind_chunks
        self._checkpoints: deque[Checkpoint] = deque()

    # --- public API ---------------------------------------------------------------
    def update_prompt(self, prompt: str, event_id: str | None = None) -> int:
        """Switch prompts at the next chunk boundary; returns that chunk's index."""
        prompt = check_prompt(prompt)
        with self._lock:
            self._event_counter += 1
            self._pending = (prompt, event_id or f"evt_{self._event_counter}")
            return self.chunk_index + (1 if self._in_chunk else 0)

    def next_chunk(self) -> Chunk:
        """Generate the next chunk, running its forwards one at a time."""
        if self.closed:
            raise SessionClosed("session is closed")
        work = self.chunk_work()
        request = next(work)
        try:
            while True:
                output = self.model.run_forwards([request])[0]
                request = work.send(output)
        except StopIteration as done:
            return done.value

    def __iter__(self):
        while not self.closed:
            yield self.next_chunk()

    def close(self) -> None:
        self.closed = True

    # --- rewinding ------------------------------------------------------------------
    def rewind(self, chunk_index: int) -> bool:
        """Go back to just before chunk `chunk_index` was generated, as if the chunks from it
        on never were: the cache, kept latents, decoder state, RNG and prompt as they were.
        Not during a chunk's work (abandon it first). False when that boundary is not held
        (older than `rewind_chunks`, or not reached yet); the session is then unchanged."""
        found = next((cp for cp in self._checkpoints if cp.chunk_index == chunk_index), None)
        if found is None:
            return False
        self.cache.rewind(found.cache)
        self.kept = found.kept.copy()
        self.decoder_state = found.decoder_state
        self.generator.set_state(found.generator_state)
        while self._checkpoints and self._checkpoints[-1].chunk_index >= chunk_index:
            self._checkpoints.pop()
        with self._lock:
            self.prompt, self.context, self.chunk_index = found.prompt, found.context, chunk_index
            self._in_chunk = False
        return True

    def can_rewind(self, chunk_index: int) -> bool:
        return any(cp.chunk_index == chunk_index for cp in self._checkpoints)

    def _checkpoint(self) -> None:
        """Keep the state before the chunk about to be generated; forget the ones too old."""
        if not self.rewind_chunks:
            return
        self._checkpoints.append(Checkpoint(
            self.chunk_index, self.cache.mark(self.row), self.kept.copy(), self.decoder_state, self.generator.get_state(), self.prompt, self.context))
        while len(self._checkpoints) > self.rewind_chunks:
            self._checkpoints.popleft()
        self.cache.forget(self.row, self._checkpoints[0].cache)

    # --- the work of one chunk ----------------------------------------------------
    def chunk_work(self) -> Generator[Forward, torch.Tensor, Chunk]:
        """Yields the forwards of the next chunk (engine/step.py's chunk_steps); returns the Chunk."""
        self._checkpoint()
        with self._lock:
            self._in_chunk = True
            pending, self._pending = self._pending, None
        event_id = None
        if pending is not None:
            self.prompt, event_id = pending
            self.context = self.model.context_for(self.prompt)
            yield from self._recache()

        cfg = self.model.config
        att, lat = cfg.attention, cfg.latent
        shape = (1, lat.channels, att.chunk_frames, lat.latent_height, lat.latent_width)
        noise = torch.randn(shape, generator=self.generator, device=self.generator.device).to(self.context.dtype)
        steps = chunk_steps(cfg.sampler, self.chunk_index, noise, self.generator)
        request = next(steps)
        try:
            while True:
                v = yield Forward(self, request.latents, request.timestep, self.context, request.commit)
                request = steps.send(v)
        except StopIteration as done:
            x0, committed = done.value
        self.kept.keep(committed)

        with torch.no_grad():  # decoding never trains: no autograd graph per streamed chunk
            video, self.decoder_state = self.model.decoder.decode_chunk(x0, self.decoder_state)
        chunk = Chunk(self.chunk_index, to_uint8_frames(video), self.chunk_index * cfg.frames_per_chunk / lat.fps,
                      event_id, x0)
        with self._lock:
            self.chunk_index += 1
            self._in_chunk = False
        return chunk

    def _recache(self) -> Generator[Forward, torch.Tensor, None]:
        """LongLive's KV re-cache: recompute the kept frames' K/V under the new prompt, so the
        scene carries on but follows the new text. The policy's long-range memory (an EMA
        sink, a linear state) is kept as it is: the kept latents cannot rebuild it."""
        self.cache.restart_window(self.row)
        for request in self.kept.recache(self.cache.policy, self.model.config.attention.chunk_frames):
            yield Forward(self, request.latents, request.timestep, self.context, commit=True)
