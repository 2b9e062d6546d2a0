"""Clip jobs, shaped like OpenAI's Videos API: create (202, queued), poll with progress,
download the MP4, list, delete. Handlers are plain functions: FastAPI runs them on its
thread pool, where the job store's blocking I/O belongs."""

from __future__ import annotations

import secrets
import time
from typing import Literal

from fastapi import APIRouter, Depends, Path, Query, Response

from clients.protocol import VideoCreate, VideoDeleted, VideoJob, VideoList

from ..auth import require_api_key
from ..errors import ApiError
from ..jobs import new_job_id
from ..state import ServerState
from ..validation import check_model, check_output, check_prompt, check_seconds
from .common import error_responses, get_state, strict_query

router = APIRouter(prefix="/v1/videos", tags=["videos"], dependencies=[Depends(require_api_key), Depends(strict_query)],
                   responses=error_responses(400, 401, 500, 503))
VideoId = Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")


def _job_or_404(state: ServerState, video_id: str) -> VideoJob:
    job = state.store().get(video_id)
    if job is None:
        raise ApiError("not_found", f"no video {video_id!r}", "video_id")
    return job


@router.post("", status_code=202, response_model=VideoJob, summary="Queue a clip")
def create_video(body: VideoCreate, state: ServerState = Depends(get_state)) -> VideoJob:
    state.require_ready()
    model, settings = state.model, state.settings
    check_model(model, body.model)
    check_prompt(body.prompt, settings.max_prompt_chars)
    fps = check_output(model, body.fps, body.size)
    check_seconds(body.seconds, settings.max_job_seconds, "seconds")
    job = VideoJob(id=new_job_id(), status="queued", created_at=int(time.time()), model=model.name,
                   prompt=body.prompt, seconds=body.seconds,
                   # A server-chosen seed is recorded, so every clip can be made again.
                   seed=body.seed if body.seed is not None else secrets.randbelow(2**31),
                   size=f"{model.width}x{model.height}", fps=fps)
    state.store().create(job)
    return job


@router.get("", response_model=VideoList, summary="List clips, newest first")
def list_videos(limit: int = Query(20, ge=1, le=100),
                after: str | None = Query(None, max_length=64, description="id of the last video of the previous page"),
                order: Literal["asc", "desc"] = "desc",
                state: ServerState = Depends(get_state)) -> VideoList:
    return VideoList(data=state.store().list(limit=limit, after=after, order=order))


@router.get("/{video_id}", response_model=VideoJob, responses=error_responses(404), summary="A clip's status")
def get_video(video_id: str = VideoId, state: ServerState = Depends(get_state)) -> VideoJob:
    return _job_or_404(state, video_id)


@router.get("/{video_id}/content", response_class=Response, summary="Download a finished clip",
            responses={200: {"content": {"video/mp4": {"schema": {"type": "string", "format": "binary"}}}},
                       **error_responses(404, 409)})
def get_video_content(video_id: str = VideoId, state: ServerState = Depends(get_state)) -> Response:
    job = _job_or_404(state, video_id)
    if job.status != "completed":
        raise ApiError("conflict", f"video {video_id} is {job.status}, not completed", "video_id")
    data = state.store().content(video_id)
    if data is None:
        raise ApiError("not_found", f"the content of video {video_id} is gone", "video_id")
    return Response(data, media_type="video/mp4",
                    headers={"Content-Disposition": f'attachment; filename="{video_id}.mp4"'})


@router.delete("/{video_id}", response_model=VideoDeleted, responses=error_responses(404),
               summary="Delete a clip (a running one stops at its next chunk)")
def delete_video(video_id: str = VideoId, state: ServerState = Depends(get_state)) -> VideoDeleted:
    if state.store().delete(video_id) is None:
        raise ApiError("not_found", f"no video {video_id!r}", "video_id")
    return VideoDeleted(id=video_id)
