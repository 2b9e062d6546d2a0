"""Framecast wire protocol: every message the server and its clients exchange.

Defined once, here, in pure pydantic (no torch; of the project only the shared input
limits of `framecast`), and
imported by the server and by the Python client alike. The shapes follow the
conventions users already know from OpenAI's Realtime and Videos APIs: JSON text
messages with a ``type`` literal for control, binary WebSocket messages for media.

WebSocket ``/v1/realtime/video``::

    client -> session.start            (within START_TIMEOUT_S of connecting)
    server <- session.started
    server <- video.chunk  (JSON)  then one binary message with the media it describes
    server <- session.stats          (now and then)
    client -> session.update  -> server session.update.queued
    client -> session.pause | session.resume | session.stop | session.ping
    server <- session.pong | session.done | error (then close)

WebRTC ``/v1/realtime/webrtc`` (WHEP-style): POST an SDP offer (application/sdp, or
:class:`WebRTCOffer` as JSON) holding a recvonly video section and a data channel; the
answer comes back with 201 and a ``Location`` to DELETE. The data channel then carries
exactly the JSON messages above (session.start first); media is the video track, and each
run of frames on it is announced by a ``video.chunk`` with no binary message after it.

HTTP: ``POST /v1/videos`` -> :class:`VideoJob`; errors are :class:`ErrorBody`.
"""

from __future__ import annotations

import base64
import binascii
import re
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, TypeAdapter, WithJsonSchema

from framecast import MAX_PROMPT_CHARS, MAX_SEED

PROTOCOL_VERSION = "1"
REALTIME_PATH = "/v1/realtime/video"
WEBRTC_PATH = "/v1/realtime/webrtc"
START_TIMEOUT_S = 10.0
MAX_MESSAGE_BYTES = 64 * 1024
# Browsers cannot set headers on a WebSocket, and a key in the URL ends up in logs and
# history: a browser offers both subprotocols, `new WebSocket(url, [SUBPROTOCOL,
# api_key_subprotocol(key)])`, and the server selects SUBPROTOCOL (never echoing the key).
SUBPROTOCOL = "framecast.v1"
API_KEY_SUBPROTOCOL_PREFIX = "framecast.key."


def api_key_subprotocol(key: str) -> str:
    """The subprotocol that carries `key`: base64url without padding, so that any key is a
    valid header token (RFC 6455 subprotocols are RFC 7230 tokens)."""
    return API_KEY_SUBPROTOCOL_PREFIX + base64.urlsafe_b64encode(key.encode()).decode().rstrip("=")


def api_key_from_subprotocols(offered: list[str]) -> str | None:
    """The key a client offered as a subprotocol; None when it offered none (or a malformed one)."""
    for protocol in offered:
        if protocol.startswith(API_KEY_SUBPROTOCOL_PREFIX):
            encoded = protocol[len(API_KEY_SUBPROTOCOL_PREFIX):]
            try:
                return base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4)).decode()
            except (binascii.Error, UnicodeDecodeError, ValueError):
                return None
    return None


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _ClientMessage(BaseModel):
    """What clients send is validated strictly: a seed is an integer, not "5", true or 2.0;
    a number is not a string or a boolean. A lax parser turns client bugs into surprises."""

    model_config = ConfigDict(extra="forbid", strict=True)


# --- close codes (RFC 6455 4000-4999 are for applications) -------------------

class CloseCode:
    NORMAL = 1000
    GOING_AWAY = 1001  # server shutting down
    UNSUPPORTED_DATA = 1003  # binary from a client
    POLICY = 1008  # bad or unauthorised input
    TOO_BIG = 1009
    INTERNAL = 1011
    TRY_AGAIN_LATER = 1013  # server full
    START_TIMEOUT = 4000
    BAD_REQUEST = 4400
    UNAUTHORIZED = 4401
    NOT_FOUND = 4404
    STALLED = 4408  # the client read nothing for stall_timeout_s: its slot went to others


# --- error codes shared by HTTP bodies and WebSocket `error` messages ----------

ErrorCode = Literal[
    "invalid_json",
    "invalid_message",
    "unknown_message_type",
    "invalid_prompt",
    "invalid_seed",
    "invalid_request",
    "invalid_sdp",
    "already_started",
    "not_started",
    "binary_not_allowed",
    "message_too_large",
    "request_too_large",
    "unsupported_media_type",
    "method_not_allowed",
    "start_timeout",
    "stalled",
    "unknown_model",
    "unauthorized",
    "server_full",
    "rate_limited",
    "queue_full",
    "not_found",
    "conflict",
    "internal_error",
    "shutting_down",
]


class ErrorDetail(_Message):
    code: ErrorCode | str
    message: str
    param: str | None = None


class ErrorBody(_Message):
    """HTTP error body: ``{"error": {"code", "message"}}``."""

    error: ErrorDetail


# --- client -> server ----------------------------------------------------------

Prompt = Annotated[str, Field(min_length=1, max_length=MAX_PROMPT_CHARS)]
Seed = Annotated[int, Field(ge=0, le=MAX_SEED)]
# fmp4 and jpeg travel over the WebSocket; webrtc is negotiated over HTTP (an SDP offer),
# its control messages then travel over a data channel.
MediaFormat = Literal["fmp4", "jpeg", "webrtc"]


class SessionStart(_ClientMessage):
    type: Literal["session.start"] = "session.start"
    prompt: Prompt
    seed: Seed | None = None
    model: str | None = None
    format: MediaFormat | None = None  # None: the transport's own (fmp4 on the WebSocket)
    fps: Annotated[float, Field(gt=0, le=60)] | None = None
    max_seconds: Annotated[float, Field(gt=0)] | None = None


class SessionUpdate(_ClientMessage):
    type: Literal["session.update"] = "session.update"
    prompt: Prompt
    event_id: Annotated[str, Field(min_length=1, max_length=128)] | None = None


class SessionPause(_ClientMessage):
    type: Literal["session.pause"] = "session.pause"


class SessionResume(_ClientMessage):
    type: Literal["session.resume"] = "session.resume"


class SessionStop(_ClientMessage):
    type: Literal["session.stop"] = "session.stop"


class SessionPing(_ClientMessage):
    type: Literal["session.ping"] = "session.ping"
    ts: float | None = None


ClientMessage = Annotated[
    Union[SessionStart, SessionUpdate, SessionPause, SessionResume, SessionStop, SessionPing],
    Field(discriminator="type"),
]
CLIENT_MESSAGE_TYPES = ("session.start", "session.update", "session.pause", "session.resume",
                        "session.stop", "session.ping")


# --- server -> client ----------------------------------------------------------

# What the model reads for the prompt, when that is not the prompt as written: a model whose
# config has `prompt_rewrite` (the Shapes default reads "a crimson ball drifting left" as "a
# medium red circle moves left on a cyan background"). None: it reads the prompt as written.
ReadAs = Annotated[str | None, Field(description="the caption the model reads for the prompt, "
                                     "when it rewrites it; null when it reads the prompt as written")]


class SessionStarted(_Message):
    type: Literal["session.started"] = "session.started"
    session_id: str
    width: int
    height: int
    fps: float
    format: MediaFormat
    model: str
    protocol: str = PROTOCOL_VERSION
    # RFC 6381 codecs string of the fmp4 stream (e.g. "avc1.42C01E") for
    # MediaSource.addSourceBuffer; webrtc: the negotiated RTP codec ("video/H264"); None for jpeg.
    codec: str | None = None
    read_as: ReadAs = None


class VideoChunk(_Message):
    """Metadata for the binary message that immediately follows it.

    fmp4: index 0 is the init segment (frames == 0), then one fragment per run of frames
    sent together (a piece of a chunk; `frames` says how many).
    jpeg: one message per frame (frames == 1).
    webrtc: no binary message; it announces a run of frames on the video track, sent as its
    first frame leaves. `pts` is then track time (the frame's RTP timestamp minus the first
    frame's, in seconds), which runs on through pauses and stalls: a decoded frame at track
    time t is stream frame `frame + round((t - pts) * fps)` of the last run with pts <= t.
    """

    type: Literal["video.chunk"] = "video.chunk"
    index: int  # media message number (fmp4: 0 is the init segment)
    frames: int
    bytes: int
    pts: float  # seconds of stream time of the first frame
    frame: int = 0  # stream frame number of the first frame (pts * fps)
    prompt_event_id: str | None = None  # set on the first media under a switched prompt
    init: bool = False


class SessionUpdateQueued(_Message):
    """The switch is made: the new prompt shows from stream frame `at_frame` on (video made
    ahead under the old prompt and not yet sent was discarded; nothing after it is)."""

    type: Literal["session.update.queued"] = "session.update.queued"
    event_id: str
    at_frame: int
    read_as: ReadAs = None


class SessionStats(_Message):
    type: Literal["session.stats"] = "session.stats"
    fps: float
    latency_ms: float
    frames: int
    chunks: int


class SessionPaused(_Message):
    type: Literal["session.paused"] = "session.paused"


class SessionResumed(_Message):
    type: Literal["session.resumed"] = "session.resumed"


class SessionPong(_Message):
    type: Literal["session.pong"] = "session.pong"
    ts: float | None = None


class SessionDone(_Message):
    type: Literal["session.done"] = "session.done"
    reason: Literal["max_seconds", "stopped", "shutdown"]
    frames: int
    seconds: float


class Error(_Message):
    type: Literal["error"] = "error"
    error: ErrorDetail


ServerMessage = Annotated[
    Union[SessionStarted, VideoChunk, SessionUpdateQueued, SessionStats, SessionPaused,
          SessionResumed, SessionPong, SessionDone, Error],
    Field(discriminator="type"),
]

client_message_adapter: TypeAdapter = TypeAdapter(ClientMessage)
server_message_adapter: TypeAdapter = TypeAdapter(ServerMessage)


def parse_client_message(text: str | bytes):
    """Parse one client JSON message; raises pydantic.ValidationError."""
    return client_message_adapter.validate_json(text)


def parse_server_message(text: str | bytes):
    return server_message_adapter.validate_json(text)


# --- HTTP: video jobs (OpenAI Videos API shape) and models -------------------------

JobStatus = Literal["queued", "in_progress", "completed", "failed", "cancelled"]


SECONDS_TEXT = r"^[0-9]+(\.[0-9]+)?$"
_SECONDS_TEXT = re.compile(SECONDS_TEXT)


def _seconds_from_text(value: Any) -> Any:
    """OpenAI's Videos API sends `seconds` as a string ("4"); a JSON number is taken too.
    Nothing looser: a boolean is not a number, and " 4", "4e0" or "four" are no form either
    API uses (the strict float check after this refuses what is not a number)."""
    if isinstance(value, str):
        if not _SECONDS_TEXT.fullmatch(value):
            raise ValueError('seconds must be a number or a numeric string such as "4"')
        return float(value)
    return value


def _seconds_as_text(value: Any) -> Any:
    # Jobs stored before `seconds` became a string (OpenAI's Video type) held a number.
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return f"{value:g}"
    return value


Seconds = Annotated[
    float, BeforeValidator(_seconds_from_text), Field(gt=0, le=600, allow_inf_nan=False),
    WithJsonSchema({"anyOf": [{"type": "number", "exclusiveMinimum": 0, "maximum": 600},
                              {"type": "string", "pattern": SECONDS_TEXT}]}),
]


class VideoCreate(_ClientMessage):
    """`POST /v1/videos`, as JSON or as multipart/form-data (what OpenAI's SDK sends; there
    every field is text, and the server reads `seed` and `fps` from their digits)."""

    prompt: Prompt
    seconds: Seconds = 4.0
    seed: Seed | None = None
    size: Annotated[str, Field(pattern=r"^\d{2,5}x\d{2,5}$")] | None = None  # "WxH"
    fps: Annotated[float, Field(gt=0, le=60, allow_inf_nan=False)] | None = None
    model: str | None = None


class VideoJob(_Message):
    """The job object; its fields are those OpenAI's `Video` type reads (`seconds` is a
    string there, "4"), plus the seed and fps a clip was made with."""

    id: str
    object: Literal["video"] = "video"
    status: JobStatus
    progress: Annotated[int, Field(ge=0, le=100)] = 0
    created_at: int
    completed_at: int | None = None
    model: str
    prompt: str
    read_as: ReadAs = None
    seconds: Annotated[str, BeforeValidator(_seconds_as_text)]
    seed: int
    size: str
    fps: float
    error: ErrorDetail | None = None


class VideoDeleted(_Message):
    id: str
    object: Literal["video.deleted"] = "video.deleted"
    deleted: bool = True


class VideoList(_Message):
    """One page; the next starts `after=last_id` while `has_more` (OpenAI's cursor page)."""

    object: Literal["list"] = "list"
    data: list[VideoJob]
    first_id: str | None = None
    last_id: str | None = None
    has_more: bool = False


class ModelCard(_Message):
    id: str
    object: Literal["model"] = "model"
    owned_by: str = "framecast"
    width: int
    height: int
    fps: float
    chunk_frames: int
    steps_per_chunk: list[int]
    attention: str
    formats: list[MediaFormat] = ["fmp4", "jpeg", "webrtc"]
    backend: str = "eager"
    description: str = ""


class ModelList(_Message):
    object: Literal["list"] = "list"
    data: list[ModelCard]


# --- WebRTC signalling (WHEP-style) -------------------------------------------------

class WebRTCOffer(_ClientMessage):
    """`POST /v1/realtime/webrtc` as JSON (the raw SDP as application/sdp works too)."""

    type: Literal["offer"] = "offer"
    sdp: Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_BYTES)]


class WebRTCAnswer(_Message):
    type: Literal["answer"] = "answer"
    sdp: str
    location: str  # the session's URL path, for DELETE (also the Location header)


class WebRTCSessionDeleted(_Message):
    id: str
    object: Literal["realtime.webrtc_session.deleted"] = "realtime.webrtc_session.deleted"
    deleted: bool = True
