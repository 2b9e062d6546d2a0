"""Admission control: streams and running clip jobs share one memory budget
(weights + per-session memory), and each caller (API key, or address without keys) may
hold only so many streams.

Thread-safe: slots are taken on the event loop and returned from worker threads once a
session's engine state is really gone."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from .auth import Caller
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
    owner: str | None
    kind: str  # "stream" | "job"


class Admission:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._used = 0
        self._per_owner: dict[str, int] = {}
        self._freed = threading.Condition()

    @property
    def in_use(self) -> int:
        with self._freed:
            return self._used

    def admit_stream(self, who: Caller, limit: int) -> Ticket:
        """A slot for a stream now, or ApiError (server_full; rate_limited once `who`
        holds `limit` streams, 0 = no limit)."""
        owner = who.owner if limit else None
        with self._freed:
            if owner is not None and self._per_owner.get(owner, 0) >= limit:
                raise ApiError("rate_limited", f"{who.label} already holds {limit} streams"
                               + ("" if who.by_key else " (sessions_per_address)"))
            if self._used >= self.capacity:
                raise ApiError("server_full", f"all {self.capacity} session slots are in use; try again later")
            self._used += 1
            if owner is not None:
                self._per_owner[owner] = self._per_owner.get(owner, 0) + 1
            return Ticket(owner, "stream")

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
            if ticket.owner is not None:
                left = self._per_owner.get(ticket.owner, 1) - 1
                if left:
                    self._per_owner[ticket.owner] = left
                else:
                    self._per_owner.pop(ticket.owner, None)
            self._freed.notify_all()
