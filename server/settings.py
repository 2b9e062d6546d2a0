"""Server settings: the one place environment variables are read.

Every field can be set as ``FRAMECAST_<FIELD>`` (``FRAMECAST_API_KEYS=a,b`` or a JSON
list) and is overridden by the matching ``framecast serve`` flag.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from clients.protocol import START_TIMEOUT_S
from engine.config import Runtime
from framecast import MAX_PROMPT_CHARS


def default_data_dir() -> Path:
    # XDG data home: job records and clip files outlive the process and its cwd.
    base = os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share"
    return Path(base) / "framecast"


class IceServer(BaseModel):
    """A STUN or TURN server, as the browser's RTCIceServer spells it."""

    model_config = ConfigDict(extra="forbid")

    urls: str | list[str] = Field(description="stun:host:port, turn:host:port?transport=udp|tcp, turns:host:port")
    username: str | None = None
    credential: str | None = None

    @property
    def url_list(self) -> list[str]:
        return [self.urls] if isinstance(self.urls, str) else list(self.urls)


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="FRAMECAST_", extra="ignore")

    # --- the model ----------------------------------------------------------------
    model: str | None = Field(None, description="model name or directory; None = the embedded default")
    device: str | None = Field(None, description="torch device the model runs on; None = cuda when a GPU is "
                                                 "visible, else cpu")
    backend: Runtime | None = Field(
        None, description="runtime for the denoising steps; None = the model config's `runtime`")
    engine_cache_dir: str | None = Field(
        None, description="where `framecast build-engines` put built engines (default ~/.cache/framecast/engines)")
    warmup: bool = Field(True, description="generate one chunk before /readyz says ready")
    batching: bool = Field(True, description="batch the forwards of concurrent streams (BatchScheduler)")

    # --- network --------------------------------------------------------------------
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    api_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="accepted bearer keys; empty = no authentication")
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    # Behind a proxy every client has the proxy's address, which would put everyone under
    # one sessions_per_address; list the proxy here (uvicorn's forwarded_allow_ips, "*" =
    # any) so that X-Forwarded-For names the client. None = uvicorn's default (127.0.0.1).
    forwarded_allow_ips: str | None = None
    max_body_bytes: int = Field(1024 * 1024, ge=1024,
                                description="largest HTTP request body; larger ones get 413 before they are read")
    # Frames larger than this are refused by the WebSocket layer itself (close 1009); it is
    # kept above MAX_MESSAGE_BYTES so most oversize messages get a JSON `error` first.
    ws_max_frame_bytes: int = Field(1024 * 1024, ge=1024)
    # Kernel send buffer per connection. Linux autotunes it up to 4 MiB, which a stalled
    # client fills with thousands of frames before the server's bounded queue is felt;
    # a fixed size keeps memory per client bounded and pacing by consumption prompt.
    # None = kernel autotuning.
    socket_send_buffer_bytes: int | None = Field(256 * 1024, ge=4096)

    # --- capacity and limits -----------------------------------------------------------
    max_sessions: int | None = Field(
        None, ge=1, description="concurrent streams and running clip jobs (cache rows); None = as many as this "
                                "machine generates in real time, measured at warm-up, within the memory budget")
    memory_budget_bytes: int | None = Field(
        None, ge=0, description="weights + per-session memory must fit; None = the model's weights plus "
                                "80% of the device memory free once they are loaded")
    max_prompt_chars: int = Field(MAX_PROMPT_CHARS, ge=1, le=MAX_PROMPT_CHARS)
    max_stream_seconds: float = Field(3600.0, gt=0, description="longest stream before session.done")
    max_job_seconds: float = Field(60.0, gt=0, description="longest clip a job may ask for")
    sessions_per_key: int = Field(4, ge=1, description="concurrent streams per API key")
    sessions_per_address: int = Field(
        4, ge=0, description="concurrent streams per client address when no API keys are configured; 0 = no limit")
    stall_timeout_s: float = Field(
        30.0, gt=0, description="a stream whose client reads nothing for this long is ended (close 4408)")
    start_timeout_s: float = Field(START_TIMEOUT_S, gt=0, description="session.start must arrive within this")
    queue_depth: int = Field(1, ge=1, description="chunks generated ahead per stream and waiting to be sent "
                             "(a prompt switch discards them); the engine keeps one more in its own queue")
    # Delivery runs this far ahead of real time: enough to ride out generation jitter and
    # the re-cache after a switch without a stall, small enough that a switch shows soon
    # (it must first play out what was sent: at most a chunk plus this). A stream leads by
    # more while its machine takes longer than this to make a chunk after a switch (at most
    # a chunk; server/live.py `_lead`). None = as fast as the client reads (benchmarks).
    stream_lead_s: float | None = Field(0.35, ge=0)
    # A chunk leaves in pieces of this many output frames, each at its time: a switch shows
    # once the last piece sent has played (a whole chunk is 0.75 s at 16 fps; 4 frames,
    # 0.25 s). Smaller pieces mean more, smaller media messages. None = whole chunks.
    stream_piece_frames: int | None = Field(4, ge=1)
    stats_interval_s: float = Field(2.0, gt=0)

    # --- WebRTC (POST /v1/realtime/webrtc) ------------------------------------------------
    # Host candidates are enough on one machine or a flat network; behind NAT list a STUN
    # server (the server learns its public address) and, where UDP cannot get through
    # directly, a TURN relay. The same list goes to clients (OPTIONS, Link headers), so a
    # browser relays through the same TURN server. A JSON list in the environment:
    # FRAMECAST_WEBRTC_ICE_SERVERS='[{"urls": "stun:stun.example.org:3478"}]'
    webrtc_ice_servers: list[IceServer] = Field(default_factory=list)
    webrtc_codec: Literal["h264", "vp8"] = Field(
        "h264", description="video codec the server prefers when the peer offers both")
    # A peer gone without a goodbye (network lost, process killed) sends no more RTCP
    # reports; after this long without one its stream is ended and its slot freed (ICE
    # consent would notice too, but only after ~30 s).
    webrtc_peer_timeout_s: float = Field(5.0, gt=0)

    # --- jobs ---------------------------------------------------------------------------
    data_dir: Path = Field(default_factory=default_data_dir)
    job_store_url: str | None = Field(
        None, description="sqlite:///path.db or redis://host:port/db; None = SQLite under data_dir")
    job_workers: int = Field(1, ge=0, description="clip jobs generated at once by this replica")
    max_pending_jobs: int = Field(32, ge=1, description="queued + running jobs, all callers together; 429 beyond")
    pending_jobs_per_key: int = Field(
        8, ge=1, description="queued + running jobs per API key (per client address without keys); 429 beyond")
    shutdown_grace_s: float = Field(10.0, ge=0, description="how long running jobs may finish at shutdown")

    @field_validator("webrtc_ice_servers", mode="before")
    @classmethod
    def _urls_as_servers(cls, value: object) -> object:
        # A bare URL (`--ice-server stun:host:3478`) is a server without credentials.
        if isinstance(value, list):
            return [{"urls": item} if isinstance(item, str) else item for item in value]
        return value

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, value: object) -> object:
        if isinstance(value, str):
            text = value.strip()
            if text.startswith("["):
                import json

                return json.loads(text)
            return [k.strip() for k in text.split(",") if k.strip()]
        return value

    def resolved_job_store_url(self) -> str:
        return self.job_store_url or f"sqlite:///{self.data_dir / 'jobs.sqlite3'}"
