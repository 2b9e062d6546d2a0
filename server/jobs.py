"""Video job stores: where clip jobs and their MP4s live between request and download.

SQLite (the default, one replica): a file under the data dir, content as files beside it;
survives a restart, and jobs left in progress by a stopped server are queued again when
the next one starts. Redis (several replicas): jobs, queue and content in Redis; a job
being generated holds a lease its worker renews, and any replica re-queues jobs whose
lease ran out (their replica died).
"""

from __future__ import annotations

import secrets
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Callable, Literal

from clients.protocol import ErrorDetail, VideoJob

Order = Literal["asc", "desc"]
LEASE_S = 60  # a Redis job whose worker stops renewing for this long is re-queued


def new_job_id() -> str:
    return "video_" + secrets.token_hex(12)


class JobStore(ABC):
    """Thread-safe; every method is blocking I/O (call it off the event loop)."""

    # Whether `recover` can tell a dead worker's job from a live one (leases), so that
    # workers may call it while serving; otherwise it runs once, at startup.
    recovers_while_serving = False

    @abstractmethod
    def create(self, job: VideoJob, owner: str | None = None) -> None:
        """Queue `job`; `owner` (an API key's hash, or a client address) is whom it counts
        against in `pending`."""

    @abstractmethod
    def pending(self, owner: str | None) -> tuple[int, int]:
        """Jobs queued or in progress: all of them, and those of `owner`."""

    @abstractmethod
    def get(self, job_id: str) -> VideoJob | None: ...

    @abstractmethod
    def list(self, limit: int = 20, after: str | None = None, order: Order = "desc") -> list[VideoJob]: ...

    @abstractmethod
    def claim(self, worker: str, timeout: float) -> VideoJob | None:
        """The oldest queued job, now in_progress and owned by `worker`; None after `timeout`."""

    @abstractmethod
    def transition(self, job_id: str, change: Callable[[VideoJob], VideoJob]) -> VideoJob | None:
        """Apply `change` atomically; None when the job does not exist (deleted)."""

    @abstractmethod
    def requeue(self, job_id: str) -> None:
        """Put an in_progress job back at the head of the queue (shutdown, lost lease)."""

    @abstractmethod
    def recover(self) -> int:
        """Re-queue in_progress jobs no live worker owns; returns how many."""

    @abstractmethod
    def save_content(self, job_id: str, data: bytes) -> None: ...

    @abstractmethod
    def content(self, job_id: str) -> bytes | None: ...

    @abstractmethod
    def delete(self, job_id: str) -> VideoJob | None: ...

    @abstractmethod
    def counts(self) -> dict[str, int]: ...

    def close(self) -> None:
        pass

    # --- the transitions the runner makes ------------------------------------------------
    def set_progress(self, job_id: str, progress: int) -> VideoJob | None:
        return self.transition(job_id, lambda j: j.model_copy(update={"progress": progress}))

    def complete(self, job_id: str, data: bytes) -> VideoJob | None:
        if self.get(job_id) is None:
            return None  # deleted while generating: keep no orphan content
        self.save_content(job_id, data)
        return self.transition(job_id, lambda j: j.model_copy(
            update={"status": "completed", "progress": 100, "completed_at": int(time.time())}))

    def fail(self, job_id: str, error: ErrorDetail) -> VideoJob | None:
        return self.transition(job_id, lambda j: j.model_copy(
            update={"status": "failed", "error": error, "completed_at": int(time.time())}))


def open_job_store(url: str) -> JobStore:
    if url.startswith(("redis://", "rediss://", "unix://")):
        from .jobs_redis import RedisJobStore

        return RedisJobStore(url)
    if url.startswith("sqlite:///"):
        return SQLiteJobStore(Path(url[len("sqlite:///"):]))
    raise ValueError(f"job store url must be sqlite:///PATH or redis://HOST:PORT/DB, got {url!r}")


class SQLiteJobStore(JobStore):
    def __init__(self, path: Path):
        self.path = Path(path)
        self.content_dir = self.path.parent / "videos"
        self.content_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._queued = threading.Condition(self._lock)
        # One connection shared under a lock: SQLite serialises writers anyway.
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS jobs (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
                         "id TEXT UNIQUE NOT NULL, status TEXT NOT NULL, body TEXT NOT NULL)")
        self._db.execute("CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq)")
        if "owner" not in {row[1] for row in self._db.execute("PRAGMA table_info(jobs)")}:
            self._db.execute("ALTER TABLE jobs ADD COLUMN owner TEXT")  # a store made before owners

    def _write(self, job: VideoJob) -> None:
        self._db.execute("UPDATE jobs SET status = ?, body = ? WHERE id = ?",
                         (job.status, job.model_dump_json(), job.id))

    def create(self, job: VideoJob, owner: str | None = None) -> None:
        with self._queued:
            self._db.execute("INSERT INTO jobs (id, status, body, owner) VALUES (?, ?, ?, ?)",
                             (job.id, job.status, job.model_dump_json(), owner))
            self._queued.notify()

    def pending(self, owner: str | None) -> tuple[int, int]:
        with self._lock:
            total, own = self._db.execute(
                "SELECT COUNT(*), COALESCE(SUM(owner = ?), 0) FROM jobs WHERE status IN ('queued', 'in_progress')",
                (owner,)).fetchone()
        return total, own

    def get(self, job_id: str) -> VideoJob | None:
        with self._lock:
            row = self._db.execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return VideoJob.model_validate_json(row[0]) if row else None

    def list(self, limit: int = 20, after: str | None = None, order: Order = "desc") -> list[VideoJob]:
        op, direction = ("<", "DESC") if order == "desc" else (">", "ASC")
        query, args = "SELECT body FROM jobs", []
        if after is not None:
            # An unknown cursor compares with NULL: no rows, not the whole table again.
            query += f" WHERE seq {op} (SELECT seq FROM jobs WHERE id = ?)"
            args.append(after)
        query += f" ORDER BY seq {direction} LIMIT ?"
        args.append(limit)
        with self._lock:
            rows = self._db.execute(query, args).fetchall()
        return [VideoJob.model_validate_json(r[0]) for r in rows]

    def claim(self, worker: str, timeout: float) -> VideoJob | None:
        deadline = time.monotonic() + timeout
        with self._queued:
            while True:
                # IMMEDIATE takes the write lock before reading: two connections to one
                # file (a restarted server racing its predecessor) never claim one job twice.
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    row = self._db.execute(
                        "SELECT body FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
                    job = None
                    if row:
                        job = VideoJob.model_validate_json(row[0]).model_copy(update={"status": "in_progress"})
                        self._write(job)
                    self._db.execute("COMMIT")
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                if job is not None:
                    return job
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                self._queued.wait(left)

    def transition(self, job_id: str, change: Callable[[VideoJob], VideoJob]) -> VideoJob | None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute("SELECT body FROM jobs WHERE id = ?", (job_id,)).fetchone()
                job = change(VideoJob.model_validate_json(row[0])) if row else None
                if job is not None:
                    self._write(job)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return job

    def requeue(self, job_id: str) -> None:
        def back(job: VideoJob) -> VideoJob:
            return job.model_copy(update={"status": "queued", "progress": 0}) if job.status == "in_progress" else job

        self.transition(job_id, back)
        with self._queued:
            self._queued.notify()

    def recover(self) -> int:
        # One replica per SQLite file: whatever is in progress at start was left by a
        # server that stopped before finishing it.
        with self._lock:
            ids = [r[0] for r in self._db.execute("SELECT id FROM jobs WHERE status = 'in_progress'")]
        for job_id in ids:
            self.requeue(job_id)
        return len(ids)

    def _content_path(self, job_id: str) -> Path:
        return self.content_dir / f"{job_id}.mp4"

    def save_content(self, job_id: str, data: bytes) -> None:
        path = self._content_path(job_id)
        partial = path.with_suffix(".part")
        partial.write_bytes(data)
        partial.replace(path)  # atomic: a reader never sees half a file

    def content(self, job_id: str) -> bytes | None:
        try:
            return self._content_path(job_id).read_bytes()
        except FileNotFoundError:
            return None

    def delete(self, job_id: str) -> VideoJob | None:
        with self._lock:
            row = self._db.execute("DELETE FROM jobs WHERE id = ? RETURNING body", (job_id,)).fetchone()
        self._content_path(job_id).unlink(missing_ok=True)
        return VideoJob.model_validate_json(row[0]) if row else None

    def counts(self) -> dict[str, int]:
        with self._lock:
            return dict(self._db.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())

    def close(self) -> None:
        with self._queued:
            self._queued.notify_all()
            self._db.close()
