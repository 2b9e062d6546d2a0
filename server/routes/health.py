"""Liveness, readiness and Prometheus metrics (no API key: probes and scrapers)."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Depends, Response
from pydantic import BaseModel

from ..capacity import Capacity
from ..state import ServerState
from .common import error_responses, get_state

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: Literal["ok", "ready"]
    model: str | None = None
    # Sessions (streams + running clip jobs) this replica takes, and how that was decided.
    capacity: Capacity | None = None


@router.get("/healthz", response_model=Health, summary="The process is alive")
def healthz() -> Health:
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses=error_responses(500, 503),
            summary="The model is loaded and warmed up")
def readyz(state: ServerState = Depends(get_state)) -> Health:
    state.require_ready()
    return Health(status="ready", model=state.model.name, capacity=state.capacity)


@router.get("/metrics", response_class=Response, summary="Prometheus metrics",
            responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}})
def metrics(state: ServerState = Depends(get_state)) -> Response:
    return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")
