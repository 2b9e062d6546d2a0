"""What one running app holds: settings, metrics, the job store, and once loaded the
model with its generator, admission control and job runner."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from .admission import Admission, session_capacity
from .errors import ApiError
from .generation import Generator
from .job_runner import JobRunner
from .jobs import JobStore, open_job_store
from .metrics import Metrics
from .settings import Settings

log = logging.getLogger("framecast.server")


class ServerState:
    def __init__(self, settings: Settings, model: Any = None):
        self.settings = settings
        self.metrics = Metrics()
        self.model = model
        self.generator: Generator | None = None
        self.admission: Admission | None = None
        self.jobs: JobStore | None = None
        self.runner: JobRunner | None = None
        self.ready = False
        self.load_error: str | None = None
        self.shutting_down = False

    # --- startup and shutdown (called by the lifespan) ---------------------------------
    def open_jobs(self) -> None:
        self.jobs = open_job_store(self.settings.resolved_job_store_url())
        self.metrics.watch_jobs(self.jobs.counts)
        if recovered := self.jobs.recover():
            log.info("re-queued %d jobs that were in progress when the server last stopped", recovered)

    async def load(self) -> None:
        """Load (unless given) and warm up the model, then start serving it."""
        try:
            if self.model is None:
                from engine import load_model

                log.info("loading model %s", self.settings.model or "(default)")
                self.model = await asyncio.to_thread(load_model, self.settings.model, self.settings.device,
                                                     self.settings.backend, self.settings.engine_cache_dir)
            model, s = self.model, self.settings
            capacity = session_capacity(s.max_sessions, s.memory_budget_bytes, model.weights_bytes(),
                                        model.session_memory_bytes())
            if capacity < 1:
                raise RuntimeError(f"the memory budget of {s.memory_budget_bytes} bytes holds no session "
                                   f"(weights {model.weights_bytes()} B + {model.session_memory_bytes()} B each)")
            self.admission = Admission(capacity)
            self.generator = Generator(model, max_sessions=max(1, capacity), batching=s.batching)
            if s.warmup:
                started = time.perf_counter()
                stream = await self.generator.open("warm-up", 0)
                # Through every context length until the cache is full: each new attention
                # shape pays a one-off kernel set-up that a first viewer should not see.
                att = model.config.attention
                for _ in range(math.ceil((att.sink_frames + att.window_frames) / att.chunk_frames) + 1):
                    await stream.produce(lambda chunk: None)
                stream.close()
                log.info("warmed up in %.2f s", time.perf_counter() - started)
            self.runner = JobRunner(self.jobs, model, self.admission, self.metrics, s.job_workers)
            self.runner.start()
            self.ready = True
            self.metrics.ready.set(1)
            log.info("ready: model %s (%dx%d, %.3g fps), %d session slots, batching %s", model.name,
                     model.width, model.height, model.fps, capacity, "on" if self.generator.batching else "off")
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")

    def shutdown(self) -> None:
        """Blocking: stop job workers (finish or re-queue), the generator, the store."""
        self.shutting_down = True
        self.ready = False
        if self.runner is not None:
            self.runner.shutdown(self.settings.shutdown_grace_s)
        if self.generator is not None:
            self.generator.shutdown()
        if self.jobs is not None:
            self.jobs.close()

    # --- for routes ------------------------------------------------------------------------
    def require_ready(self) -> None:
        if self.shutting_down:
            raise ApiError("shutting_down", "the server is shutting down")
        if not self.ready:
            if self.load_error:
                raise ApiError("internal_error", f"the model failed to load: {self.load_error}")
            raise ApiError("model_loading", "the model is still loading; try again shortly")

    def store(self) -> JobStore:
        if self.jobs is None:
            raise ApiError("model_loading", "the job store is not open yet")
        return self.jobs
