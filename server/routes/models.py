"""GET /v1/models: the model this replica serves, shaped like OpenAI's model list."""

from __future__ import annotations

from fastapi import APIRouter, Depends

from clients.protocol import ModelCard, ModelList

from ..auth import require_api_key
from ..state import ServerState
from .common import error_responses, get_state, strict_query

router = APIRouter(tags=["models"], dependencies=[Depends(require_api_key), Depends(strict_query)],
                   responses=error_responses(401, 500, 503))


def model_card(model) -> ModelCard:
    config = model.config
    return ModelCard(id=model.name, width=model.width, height=model.height, fps=model.fps,
                     chunk_frames=model.frames_per_chunk,
                     steps_per_chunk=list(config.sampler.steps_per_chunk),
                     attention=config.attention.policy, backend=model.step_fn.backend,
                     description=config.description)


@router.get("/v1/models", response_model=ModelList, summary="List the served models")
def list_models(state: ServerState = Depends(get_state)) -> ModelList:
    state.require_ready()
    return ModelList(data=[model_card(state.model)])
