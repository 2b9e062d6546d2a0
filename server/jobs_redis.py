"""Redis job store, for several replicas sharing one queue.

Keys (prefix ``framecast:``)::

    job:<id>      the VideoJob as JSON                 jobs     ZSET of ids by creation order
    owner:<owner> SET of the ids an owner created (pruned of finished ones when counted)
    queue         LIST of queued ids (taken from the right)
    running       LIST of claimed ids (the reliable-queue pattern: BLMOVE queue -> running)
    lease:<id>    owner of a running job, expires unless renewed
    content:<id>  the MP4 bytes                         counts   HASH status -> jobs

Every change to a job is a WATCH/MULTI transaction, so two replicas never both move it.
"""

from __future__ import annotations

import time
from typing import Callable

import redis

from clients.protocol import VideoJob

from .jobs import LEASE_S, JobStore, Order


class RedisJobStore(JobStore):
    recovers_while_serving = True
    def __init__(self, url: str, prefix: str = "framecast:", lease_s: int = LEASE_S):
        self._r = redis.Redis.from_url(url)
        self._r.ping()  # fail at startup, not on the first request
        self.prefix = prefix
        self.lease_s = lease_s
        self._queue, self._running = prefix + "queue", prefix + "running"
        self._index, self._counts, self._seq = prefix + "jobs", prefix + "counts", prefix + "seq"

    def _job(self, job_id: str) -> str:
        return f"{self.prefix}job:{job_id}"

    def _lease(self, job_id: str) -> str:
        return f"{self.prefix}lease:{job_id}"

    def _content(self, job_id: str) -> str:
        return f"{self.prefix}content:{job_id}"

    def _owner(self, owner: str) -> str:
        return f"{self.prefix}owner:{owner}"

    def create(self, job: VideoJob, owner: str | None = None) -> None:
        seq = self._r.incr(self._seq)
        with self._r.pipeline() as pipe:  # MULTI: the job is never half-created
            pipe.set(self._job(job.id), job.model_dump_json())
            pipe.zadd(self._index, {job.id: seq})
            pipe.hincrby(self._counts, job.status, 1)
            if owner is not None:
                pipe.sadd(self._owner(owner), job.id)
            pipe.lpush(self._queue, job.id)
            pipe.execute()

    def pending(self, owner: str | None) -> tuple[int, int]:
        counts = self.counts()
        total = counts.get("queued", 0) + counts.get("in_progress", 0)
        if owner is None:
            return total, 0
        ids = [raw.decode() for raw in self._r.smembers(self._owner(owner))]
        jobs = self._r.mget([self._job(i) for i in ids]) if ids else []
        own, done = 0, []
        for job_id, raw in zip(ids, jobs):
            if raw is not None and VideoJob.model_validate_json(raw).status in ("queued", "in_progress"):
                own += 1
            else:
                done.append(job_id)  # finished or deleted: it no longer counts
        if done:
            self._r.srem(self._owner(owner), *done)
        return total, own

    def get(self, job_id: str) -> VideoJob | None:
        raw = self._r.get(self._job(job_id))
        return VideoJob.model_validate_json(raw) if raw else None

    def list(self, limit: int = 20, after: str | None = None, order: Order = "desc") -> list[VideoJob]:
        desc = order == "desc"
        if after is None:
            start = 0
        else:
            rank = self._r.zrevrank(self._index, after) if desc else self._r.zrank(self._index, after)
            if rank is None:
                return []
            start = rank + 1
        ids = (self._r.zrevrange if desc else self._r.zrange)(self._index, start, start + limit - 1)
        if not ids:
            return []
        raws = self._r.mget([self._job(i.decode()) for i in ids])
        return [VideoJob.model_validate_json(raw) for raw in raws if raw]

    def claim(self, worker: str, timeout: float) -> VideoJob | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            raw_id = self._r.blmove(self._queue, self._running, max(left, 0.01), "RIGHT", "LEFT")
            if raw_id is None:
                return None
            job_id = raw_id.decode()
            self._r.set(self._lease(job_id), worker, ex=self.lease_s)
            job = self.transition(job_id, lambda j: j.model_copy(update={"status": "in_progress"})
                                  if j.status == "queued" else j)
            if job is not None and job.status == "in_progress":
                return job
            self._release(job_id)  # deleted or already finished while queued
        return None

    def transition(self, job_id: str, change: Callable[[VideoJob], VideoJob],
                   extra: Callable[..., None] | None = None) -> VideoJob | None:
        key = self._job(job_id)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.unwatch()
                        return None
                    old = VideoJob.model_validate_json(raw)
                    new = change(old)
                    pipe.multi()
                    pipe.set(key, new.model_dump_json())
                    if new.status != old.status:
                        pipe.hincrby(self._counts, old.status, -1)
                        pipe.hincrby(self._counts, new.status, 1)
                    if new.status == "in_progress":
                        pipe.expire(self._lease(job_id), self.lease_s)  # progress renews the lease
                    if extra is not None:
                        extra(pipe, old, new)
                    pipe.execute()
                    return new
                except redis.WatchError:
                    continue  # another replica changed it between WATCH and EXEC: read again

    def _release(self, job_id: str) -> None:
        with self._r.pipeline() as pipe:
            pipe.lrem(self._running, 0, job_id)
            pipe.delete(self._lease(job_id))
            pipe.execute()

    def requeue(self, job_id: str) -> None:
        def push_back(pipe, old: VideoJob, new: VideoJob) -> None:
            pipe.lrem(self._running, 0, job_id)
            pipe.delete(self._lease(job_id))
            if new.status == "queued":
                pipe.rpush(self._queue, job_id)  # the right end is taken next: it goes first

        def back(job: VideoJob) -> VideoJob:
            return job.model_copy(update={"status": "queued", "progress": 0}) if job.status == "in_progress" else job

        if self.transition(job_id, back, extra=push_back) is None:
            self._release(job_id)

    def recover(self) -> int:
        recovered = 0
        for raw_id in self._r.lrange(self._running, 0, -1):
            job_id = raw_id.decode()
            if self._r.exists(self._lease(job_id)):
                continue  # a live worker (this replica or another) owns it
            job = self.get(job_id)
            if job is None or job.status not in ("queued", "in_progress"):
                self._release(job_id)
                continue
            self.requeue(job_id)
            recovered += 1
        return recovered

    def save_content(self, job_id: str, data: bytes) -> None:
        self._r.set(self._content(job_id), data)

    def content(self, job_id: str) -> bytes | None:
        return self._r.get(self._content(job_id))

    def complete(self, job_id: str, data: bytes) -> VideoJob | None:
        done = super().complete(job_id, data)
        self._release(job_id)
        return done

    def fail(self, job_id: str, error) -> VideoJob | None:
        failed = super().fail(job_id, error)
        self._release(job_id)
        return failed

    def delete(self, job_id: str) -> VideoJob | None:
        key = self._job(job_id)
        with self._r.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    raw = pipe.get(key)
                    if raw is None:
                        pipe.unwatch()
                        return None
                    job = VideoJob.model_validate_json(raw)
                    pipe.multi()
                    pipe.delete(key, self._content(job_id), self._lease(job_id))
                    pipe.zrem(self._index, job_id)
                    pipe.lrem(self._queue, 0, job_id)
                    pipe.lrem(self._running, 0, job_id)
                    pipe.hincrby(self._counts, job.status, -1)
                    pipe.execute()
                    return job
                except redis.WatchError:
                    continue

    def counts(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self._r.hgetall(self._counts).items() if int(v)}

    def close(self) -> None:
        self._r.close()
