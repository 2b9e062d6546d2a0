"""Runs clip jobs: worker threads claim queued jobs, generate them with the model, encode
an MP4, and report progress as they go. Shutdown lets running jobs finish for a grace
period, then stops them at their next chunk and puts them back in the queue."""

from __future__ import annotations

import logging
import socket
import threading
import uuid

from clients.protocol import ErrorDetail, VideoJob

from .admission import Admission
from .encoding import encode_mp4, kept_frames
from .streams import StreamPool
from .jobs import LEASE_S, JobStore
from .metrics import Metrics

log = logging.getLogger("framecast.server")

CLAIM_WAIT_S = 0.5
GENERATION_SHARE = 95  # progress % when frames are done; encoding and storing take the rest


class _Interrupted(Exception):
    """Raised inside generation (from the progress callback) to stop a job early."""


class JobRunner:
    def __init__(self, store: JobStore, streams: StreamPool, admission: Admission, metrics: Metrics,
                 workers: int):
        self.store, self.streams, self.admission, self.metrics = store, streams, admission, metrics
        self.model = streams.model
        self.worker_id = f"{socket.gethostname()}-{uuid.uuid4().hex[:8]}"
        self._stop = threading.Event()  # no new jobs
        self._abort = threading.Event()  # running jobs stop at their next chunk and re-queue
        self._threads = [threading.Thread(target=self._work, name=f"framecast-job-{i}", daemon=True)
                         for i in range(workers)]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def shutdown(self, grace_s: float) -> None:
        """Finish what can finish within `grace_s`; re-queue the rest."""
        self._stop.set()
        for thread in self._threads:
            thread.join(grace_s)
        self._abort.set()
        for thread in self._threads:
            thread.join()

    def _work(self) -> None:
        since_recover = 0.0
        while not self._stop.is_set():
            try:
                if not self.admission.wait_for_room(CLAIM_WAIT_S):
                    continue
                job = self.store.claim(self.worker_id, CLAIM_WAIT_S)
                if job is None:
                    since_recover += CLAIM_WAIT_S
                    if self.store.recovers_while_serving and since_recover >= LEASE_S / 2:
                        # adopt the jobs of a replica that died (their leases ran out)
                        since_recover = 0.0
                        if recovered := self.store.recover():
                            log.info("re-queued %d jobs left by a stopped worker", recovered)
                    continue
                self._run(job)
            except Exception:
                log.exception("job worker error")
                self._stop.wait(1.0)  # a store that is down: retry, do not spin

    def _run(self, job: VideoJob) -> None:
        from engine.errors import InvalidInput  # loaded with the model by now

        ticket = self.admission.try_admit_job()
        if ticket is None:  # a stream took the slot between looking and claiming
            self.store.requeue(job.id)
            return
        last = [-1]

        def progress(fraction: float) -> None:
            if self._abort.is_set():
                raise _Interrupted
            percent = int(fraction * GENERATION_SHARE)
            if percent != last[0]:
                last[0] = percent
                if self.store.set_progress(job.id, percent) is None:
                    raise _Interrupted  # deleted: stop spending the GPU on it

        try:
            log.info("job %s: generating %s s", job.id, job.seconds)
            frames = self.streams.generate_clip(job.prompt, float(job.seconds), job.seed,
                                                  progress=progress)  # [T, H, W, 3]
            self.metrics.frames_generated.labels("job").inc(len(frames))
            keep = kept_frames(0, len(frames), self.model.fps, job.fps)
            data = encode_mp4([frames[i] for i in keep], job.fps)
            if self.store.complete(job.id, data) is not None:
                log.info("job %s: completed (%d bytes)", job.id, len(data))
        except _Interrupted:
            if self.store.get(job.id) is not None:
                log.info("job %s: interrupted by shutdown, re-queued", job.id)
                self.store.requeue(job.id)
        except InvalidInput as exc:  # the request was wrong after all: say why
            self.store.fail(job.id, ErrorDetail(code=exc.code, message=str(exc)))
        except Exception:
            log.exception("job %s failed", job.id)
            self.store.fail(job.id, ErrorDetail(code="internal_error", message="generation failed"))
        finally:
            self.admission.release(ticket)
