"""WebRTC signalling, WHEP-style (RFC 9725's shape): POST an SDP offer, get the answer and
a session URL to DELETE. OPTIONS says what the endpoint takes and which ICE servers to
use (Link headers), so a browser behind NAT relays through the server's TURN server.

The API key is checked, the server found ready and a slot taken before anything is
negotiated: a refused client never costs a peer connection. The session itself (server/
webrtc.py) then waits for session.start on its data channel.
"""

from __future__ import annotations

import json
from urllib.parse import quote

from fastapi import APIRouter, Depends, Path, Request, Response
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from clients.protocol import WEBRTC_PATH, WebRTCAnswer, WebRTCOffer, WebRTCSessionDeleted

from ..auth import caller, require_api_key
from ..errors import ApiError, from_validation_error
from ..settings import Settings
from .common import error_responses, get_state, strict_query

router = APIRouter(prefix=WEBRTC_PATH, tags=["stream"], dependencies=[Depends(strict_query)],
                   responses=error_responses(400, 401, 500, 503))
SessionId = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
SDP = "application/sdp"
OFFER_BODY = {"requestBody": {"required": True, "content": {
    SDP: {"schema": {"type": "string", "description": "the SDP offer"}},
    "application/json": {"schema": WebRTCOffer.model_json_schema()},
}}}
ANSWER_RESPONSE = {
    "description": "The SDP answer (as JSON when the offer came as JSON); Location: the session URL",
    "content": {SDP: {"schema": {"type": "string"}},
                "application/json": {"schema": WebRTCAnswer.model_json_schema()}},
    "headers": {"Location": {"schema": {"type": "string"}, "description": "the session, for DELETE"}},
}


def ice_links(settings: Settings) -> list[str]:
    """Link headers for the configured STUN/TURN servers (WHEP's rel="ice-server")."""
    links = []
    for server in settings.webrtc_ice_servers:
        for url in server.url_list:
            link = f'<{url}>; rel="ice-server"'
            if server.username is not None:
                link += f'; username="{quote(server.username)}"; credential="{quote(server.credential or "")}"'
                link += '; credential-type="password"'
            links.append(link)
    return links


def _with_links(response: Response, settings: Settings) -> Response:
    for link in ice_links(settings):
        response.headers.append("Link", link)
    return response


@router.options("", status_code=204, dependencies=[Depends(require_api_key)],
                responses={204: {"description": "Accept-Post, and Link headers for the ICE servers"}})
async def webrtc_options(request: Request) -> Response:
    response = Response(status_code=204, headers={"Accept-Post": f"{SDP}, application/json"})
    return _with_links(response, get_state(request).settings)


async def _read_offer(request: Request) -> tuple[str, bool]:
    """The offer's SDP, and whether it came as JSON."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    body = await request.body()
    if media == SDP:
        try:
            return body.decode(), False
        except UnicodeDecodeError:
            raise ApiError("invalid_sdp", "the SDP offer is not UTF-8 text", "sdp") from None
    if media != "application/json":
        raise ApiError("unsupported_media_type", f"send the offer as {SDP} or application/json, "
                       f"not {media[:64] or 'no content type'!r}")
    try:
        data = json.loads(body)
    except RecursionError:
        raise ApiError("invalid_json", "the request body nests too deeply to be parsed") from None
    except ValueError as exc:
        raise ApiError("invalid_json", f"the request body is not valid JSON: {exc}") from None
    try:
        return WebRTCOffer.model_validate(data).sdp, True
    except ValidationError as exc:
        raise from_validation_error(exc, "invalid_request") from None


@router.post("", status_code=201, openapi_extra=OFFER_BODY,
             responses={201: ANSWER_RESPONSE, **error_responses(413, 415, 429)})
async def webrtc_offer(request: Request, key: str | None = Depends(require_api_key)) -> Response:
    state = get_state(request)
    state.require_ready()
    offer, as_json = await _read_offer(request)
    from ..webrtc import WebRTCStream  # aiortc loads on the first offer, not at startup

    settings = state.settings
    who = caller(key, request.client.host if request.client else None)
    limit = settings.sessions_per_key if key is not None else settings.sessions_per_address
    peer = None
    try:
        ticket = state.admission.admit_stream(who, limit)
        peer = WebRTCStream(state, who, key, ticket, limit)
        answer = await peer.negotiate(offer)
    except BaseException as exc:
        if isinstance(exc, ApiError):
            state.metrics.stream_errors.labels(exc.code).inc()
        if peer is not None:
            await peer.close()  # frees the slot too
        raise
    state.webrtc_peers[peer.id] = peer
    peer.start()
    location = f"{WEBRTC_PATH}/{peer.id}"
    if as_json:
        response: Response = JSONResponse(WebRTCAnswer(sdp=answer, location=location).model_dump(), status_code=201)
    else:
        response = Response(answer, status_code=201, media_type=SDP)
    response.headers["Location"] = location
    return _with_links(response, settings)


@router.delete("/{session_id}", responses=error_responses(404))
async def webrtc_delete(request: Request, session_id: str = SessionId,
                        key: str | None = Depends(require_api_key)) -> WebRTCSessionDeleted:
    """End the session (as session.stop would) and close its peer connection."""
    peer = get_state(request).webrtc_peers.get(session_id)
    # With keys, a session is its owner's: to anyone else it does not exist.
    if peer is None or (key is not None and peer.key != key):
        raise ApiError("not_found", f"no WebRTC session {session_id}")
    peer.stop()
    return WebRTCSessionDeleted(id=session_id)
