"""Clip jobs, shaped like OpenAI's Videos API so that its SDK works as is: create (202,
queued), poll with progress, download the MP4 or a JPEG thumbnail, list in pages, delete.

The create body is JSON or multipart/form-data (what OpenAI's SDK sends), one set of
fields and one validation for both. The handler reads it itself, after the API key has
been checked and the server found ready: a declared body parameter would make FastAPI
read and parse the body before any dependency runs. The other handlers are plain
functions: FastAPI runs them on its thread pool, where the job store's blocking I/O belongs.
"""

from __future__ import annotations

import json
import math
import re
import secrets
import time
from typing import Any, Literal

from fastapi import APIRouter, Depends, Path, Query, Request, Response
from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError

from clients.protocol import VideoCreate, VideoDeleted, VideoJob, VideoList

from ..auth import Caller, caller, require_api_key
from ..encoding import mp4_thumbnail
from ..errors import ApiError, from_validation_error
from ..jobs import new_job_id
from ..state import ServerState
from ..validation import check_model, check_output, check_prompt, check_seconds, read_as
from .common import error_responses, get_state, strict_query

router = APIRouter(prefix="/v1/videos", tags=["videos"], dependencies=[Depends(require_api_key), Depends(strict_query)],
                   responses=error_responses(400, 401, 500, 503))
VideoId = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")
POLL_AFTER_MS = 500  # OpenAI's SDK polls a queued or running job this often (it reads the header)

# In a form every value is text: these fields are read from their digits (anything else
# stays text and fails validation like a wrong JSON type would).
FORM_NUMBERS = {"seed": (re.compile(r"^-?[0-9]+$"), int), "fps": (re.compile(r"^[0-9]+(\.[0-9]+)?$"), float)}
MAX_FORM_FIELDS = 16
_CREATE_SCHEMA = VideoCreate.model_json_schema()
CREATE_BODY = {"requestBody": {"required": True, "content": {
    "application/json": {"schema": _CREATE_SCHEMA},
    "multipart/form-data": {"schema": _CREATE_SCHEMA},
}}}


async def read_create_body(request: Request) -> dict[str, Any]:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media in ("multipart/form-data", "application/x-www-form-urlencoded"):
        return await _read_form(request)
    if media not in ("", "application/json"):
        raise ApiError("unsupported_media_type", f"send application/json or multipart/form-data, not {media[:64]!r}")
    try:
        data = json.loads(await request.body())
    except RecursionError:  # e.g. "[" * 30000
        raise ApiError("invalid_json", "the request body nests too deeply to be parsed") from None
    except ValueError as exc:
        raise ApiError("invalid_json", f"the request body is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ApiError("invalid_request", "the request body must be a JSON object")
    return data


async def _read_form(request: Request) -> dict[str, Any]:
    data: dict[str, Any] = {}
    async with request.form(max_files=1, max_fields=MAX_FORM_FIELDS) as form:
        for name, value in form.multi_items():
            if name in data:
                raise ApiError("invalid_request", f"form field {name[:64]!r} is given more than once", name[:64])
            if not isinstance(value, str) and name != "input_reference":
                raise ApiError("invalid_request", f"{name[:64]}: only input_reference may be a file", name[:64])
            data[name] = value
    for name, (pattern, kind) in FORM_NUMBERS.items():
        if isinstance(data.get(name), str) and pattern.fullmatch(data[name]):
            data[name] = kind(data[name])
    return data


def parse_create(data: dict[str, Any]) -> VideoCreate:
    if "input_reference" in data:
        raise ApiError("invalid_request", "input_reference is not supported: this server's models make video from "
                       "the prompt alone; send no reference image", "input_reference")
    try:
        return VideoCreate.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc, "invalid_request") from None


def _job_or_404(state: ServerState, video_id: str) -> VideoJob:
    job = state.store().get(video_id)
    if job is None:
        raise ApiError("not_found", f"no video {video_id!r}", "video_id")
    return job


def _retry_after_s(state: ServerState, job: VideoJob) -> int:
    """About when a job's worth of generation frees a place: its frames at the speed one
    session was measured at on this machine (the model's fps when unmeasured)."""
    model, capacity = state.model, state.capacity
    speed = capacity.measured[0].fps_per_session if capacity and capacity.measured else model.fps
    return max(1, math.ceil(float(job.seconds) * model.fps / max(speed, 1e-3)))


def _enqueue(state: ServerState, job: VideoJob, who: Caller) -> None:
    settings, store = state.settings, state.store()
    total, own = store.pending(who.owner)
    retry = {"Retry-After": str(_retry_after_s(state, job))}
    if total >= settings.max_pending_jobs:
        raise ApiError("queue_full", f"{total} clip jobs are queued or running, this server's limit "
                       "(max_pending_jobs); try again later", headers=retry)
    if who.owner is not None and own >= settings.pending_jobs_per_key:
        raise ApiError("rate_limited", f"{who.label} has {own} clip jobs queued or running, the limit "
                       "(pending_jobs_per_key); try again when one is done", headers=retry)
    store.create(job, owner=who.owner)


@router.post("", status_code=202, response_model=VideoJob, summary="Queue a clip",
             responses=error_responses(413, 415, 429), openapi_extra=CREATE_BODY)
async def create_video(request: Request, key: str | None = Depends(require_api_key),
                       state: ServerState = Depends(get_state)) -> VideoJob:
    state.require_ready()
    body = parse_create(await read_create_body(request))
    model, settings = state.model, state.settings
    check_model(model, body.model)
    check_prompt(body.prompt, settings.max_prompt_chars)
    fps = check_output(model, body.fps, body.size)
    check_seconds(model, body.seconds, settings.max_job_seconds, "seconds")
    job = VideoJob(id=new_job_id(), status="queued", created_at=int(time.time()), model=model.name,
                   prompt=body.prompt, read_as=read_as(model, body.prompt), seconds=f"{body.seconds:g}",
                   # A server-chosen seed is recorded, so every clip can be made again.
                   seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
                   size=f"{model.width}x{model.height}", fps=fps)
    await run_in_threadpool(_enqueue, state, job, caller(key, request.client.host if request.client else None))
    return job


@router.get("", response_model=VideoList, summary="List clips, newest first")
def list_videos(limit: int = Query(20, ge=1, le=100),
                after: str | None = Query(None, max_length=64, description="id of the last video of the previous page"),
                order: Literal["asc", "desc"] = "desc",
                state: ServerState = Depends(get_state)) -> VideoList:
    jobs = state.store().list(limit=limit + 1, after=after, order=order)  # one more tells whether there is more
    page = jobs[:limit]
    return VideoList(data=page, first_id=page[0].id if page else None, last_id=page[-1].id if page else None,
                     has_more=len(jobs) > limit)


@router.get("/{video_id}", response_model=VideoJob, responses=error_responses(404), summary="A clip's status")
def get_video(response: Response, video_id: str = VideoId, state: ServerState = Depends(get_state)) -> VideoJob:
    job = _job_or_404(state, video_id)
    if job.status in ("queued", "in_progress"):
        response.headers["openai-poll-after-ms"] = str(POLL_AFTER_MS)
    return job


@router.get("/{video_id}/content", response_class=Response, summary="Download a finished clip or its thumbnail",
            responses={200: {"content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}},
                                         "image/jpeg": {"schema": {"type": "string", "format": "binary"}}}},
                       **error_responses(404, 409)})
def get_video_content(video_id: str = VideoId,
                      variant: Literal["video", "thumbnail"] = Query(
                          "video", description="video: the MP4; thumbnail: its first frame as a JPEG"),
                      state: ServerState = Depends(get_state)) -> Response:
    job = _job_or_404(state, video_id)
    if job.status != "completed":
        raise ApiError("conflict", f"video {video_id} is {job.status}, not completed", "video_id")
    data = state.store().content(video_id)
    if data is None:
        raise ApiError("not_found", f"the content of video {video_id} is gone", "video_id")
    if variant == "thumbnail":
        return Response(mp4_thumbnail(data), media_type="image/jpeg",
                        headers={"Content-Disposition": f'attachment; filename="{video_id}.jpg"'})
    return Response(data, media_type="video/mp4",
                    headers={"Content-Disposition": f'attachment; filename="{video_id}.mp4"'})


@router.delete("/{video_id}", response_model=VideoDeleted, responses=error_responses(404),
               summary="Delete a clip (a running one stops at its next chunk)")
def delete_video(video_id: str = VideoId, state: ServerState = Depends(get_state)) -> VideoDeleted:
    if state.store().delete(video_id) is None:
        raise ApiError("not_found", f"no video {video_id!r}", "video_id")
    return VideoDeleted(id=video_id)
