"""What one running app holds: settings, metrics, the job store, and once loaded the
model with its stream pool, admission control and job runner."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .admission import Admission
from .capacity import Capacity, NoRoom, decide_capacity, memory_plan
from .errors import ApiError
from .job_runner import JobRunner
from .jobs import JobStore, open_job_store
from .metrics import Metrics
from .settings import Settings
from .streams import StreamPool

log = logging.getLogger("framecast.server")


class ServerState:
    def __init__(self, settings: Settings, model: Any = None):
        self.settings = settings
        self.metrics = Metrics()
        self.model = model
        self.streams: StreamPool | None = None
        self.admission: Admission | None = None
        self.capacity: Capacity | None = None
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
            # Decided before any cache is allocated: arithmetic on the config.
            plan = memory_plan(model, s.memory_budget_bytes)
            if plan.sessions < 1:
                raise NoRoom(plan.refusal())
            self.capacity = await decide_capacity(model, s, plan)
            self.admission = Admission(self.capacity.sessions)
            self.streams = StreamPool(model, max_sessions=self.capacity.sessions, batching=s.batching)
            self.runner = JobRunner(self.jobs, self.streams, self.admission, self.metrics, s.job_workers)
            self.runner.start()
            self.ready = True
            self.metrics.ready.set(1)
            log.info("ready: model %s (%dx%d, %.3g fps); %s", model.name, model.width, model.height, model.fps,
                     self.capacity.describe())
        except NoRoom as exc:
            self.load_error = str(exc)
            log.error("not serving: %s", exc)
        except Exception as exc:
            self.load_error = f"{type(exc).__name__}: {exc}"
            log.exception("model failed to load")

    def shutdown(self) -> None:
        """Blocking: stop job workers (finish or re-queue), the streams, the store."""
        self.shutting_down = True
        self.ready = False
        if self.runner is not None:
            self.runner.shutdown(self.settings.shutdown_grace_s)
        if self.streams is not None:
            self.streams.shutdown()
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
