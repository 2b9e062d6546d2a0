"""WebSocket /v1/realtime/video: one StreamConnection per connection (server/session.py)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from clients.protocol import REALTIME_PATH

from ..session import StreamConnection

router = APIRouter(tags=["stream"])


@router.websocket(REALTIME_PATH)
async def realtime_video(websocket: WebSocket) -> None:
    await StreamConnection(websocket, websocket.app.state.server).serve()
