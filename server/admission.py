"""Admission control: streams and running clip jobs share one set of session slots (the
capacity, server/capacity.py), and each caller (API key, or address without keys) may hold
only so many streams.

Thread-safe: slots are taken on the event loop and returned from worker threads once a
session's engine state is really gone."""

from __future__ import annotations

import threading
from dataclasses import dataclass

from .auth import Caller
from .errors import ApiError


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

    def wait_for_room(self, timeout: float) -> bool:
        """Whether a slot is free, waiting up to `timeout` for one (nothing is taken: a job
        worker looks before it claims a job, so a job stays `queued` while streams hold
        every slot, and an idle worker holds no slot a stream could use)."""
        with self._freed:
            return self._freed.wait_for(lambda: self._used < self.capacity, timeout)

    def try_admit_job(self) -> Ticket | None:
        with self._freed:
            if self._used >= self.capacity:
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
