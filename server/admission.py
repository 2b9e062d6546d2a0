"""Admission control: streams and running clip jobs share one memory budget
(weights + per-session memory), and each API key may hold only so many streams.

Thread-safe: slots are taken on the event loop and returned from worker threads once a
session's engine state is really gone."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from .errors import ApiError

log = logging.getLogger("framecast.server")


def session_capacity(max_sessions: int, budget_bytes: int | None, weights_bytes: int,
                     session_bytes: int) -> int:
    """How many sessions fit: weights + n * session_bytes <= budget, at most max_sessions."""
    if budget_bytes is None:
        return max_sessions
    fit = (budget_bytes - weights_bytes) // max(1, session_bytes)
    if fit < 1:
        log.warning("memory budget %d B holds no session (weights %d B, %d B per session)",
                    budget_bytes, weights_bytes, session_bytes)
    return max(0, min(max_sessions, fit))


@dataclass(frozen=True)
class Ticket:
    key: str | None
    kind: str  # "stream" | "job"


class Admission:
    def __init__(self, capacity: int, sessions_per_key: int):
        self.capacity = capacity
        self.sessions_per_key = sessions_per_key
        self._used = 0
        self._per_key: dict[str, int] = {}
        self._freed = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._freed:
            return self._used

    def admit_stream(self, key: str | None) -> Ticket:
        """A slot for a stream now, or ApiError (server_full / rate_limited)."""
        with self._freed:
            if key is not None and self._per_key.get(key, 0) >= self.sessions_per_key:
                raise ApiError("rate_limited", f"this API key already holds {self.sessions_per_key} streams")
            if self._used >= self.capacity:
                raise ApiError("server_full", f"all {self.capacity} session slots are in use; try again later")
            self._used += 1
            if key is not None:
                self._per_key[key] = self._per_key.get(key, 0) + 1
            return Ticket(key, "stream")

    def admit_job(self, stop: threading.Event, poll_s: float = 0.25) -> Ticket | None:
        """Wait for a slot for a clip job (jobs queue rather than fail); None once `stop` is set."""
        with self._freed:
            while self._used >= self.capacity:
                if stop.is_set():
                    return None
                self._freed.wait(poll_s)
            if stop.is_set():
                return None
            self._used += 1
            return Ticket(None, "job")

    def release(self, ticket: Ticket) -> None:
        with self._freed:
            self._used -= 1
            if ticket.key is not None:
                left = self._per_key.get(ticket.key, 1) - 1
                if left:
                    self._per_key[ticket.key] = left
                else:
                    self._per_key.pop(ticket.key, None)
            self._freed.notify_all()
