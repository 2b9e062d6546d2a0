"""WebSocket /v1/realtime/video: one WebSocketStream per connection (server/websocket.py)."""

from __future__ import annotations

from fastapi import APIRouter, WebSocket

from clients.protocol import REALTIME_PATH

from ..websocket import WebSocketStream

router = APIRouter(tags=["stream"])


@router.websocket(REALTIME_PATH)
async def realtime_video(websocket: WebSocket) -> None:
    await WebSocketStream(websocket, websocket.app.state.server).serve()
