"""Readiness and versions: model fingerprint, index manifest, counts."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import APIRouter, Response, status

from api.deps import StateDep
from api.schemas import HealthResponse, ModelInfo, RankerInfo
from api.state import public_text

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/health", tags=["health"])


@router.get("", responses={503: {"model": HealthResponse, "description": "Search is not available."}})
def health(state: StateDep, response: Response) -> HealthResponse:
    """200 when search is ready, 503 (same body) when artefacts are missing; ``detail`` names the fix.
    No absolute server path leaves here: the workspace is named by its folder, artefacts relative to it."""
    root = state.workspace.root

    def public(value: Any) -> Any:
        return _json_safe(value, lambda text: public_text(text, root))

    listings = state.catalog.count() if state.catalog is not None else None
    searcher = state.searcher
    if searcher is None:
        response.status_code = status.HTTP_503_SERVICE_UNAVAILABLE
        return HealthResponse(
            status="unavailable",
            detail=public(state.searcher_error),
            workspace=root.name,
            listings=listings,
        )
    model = searcher.model
    ranker = searcher.ranker
    return HealthResponse(
        status="ok",
        workspace=root.name,
        listings=listings,
        model=ModelInfo(
            fingerprint=model.fingerprint,
            embed_dim=model.embed_dim,
            num_classes=len(model.labels.classes),
            text_runtime=model.text_tower.backbone.runtime,
            text_runtime_error=public(state.text_runtime_error),
            text_precision=model.text_tower.backbone.precision,
            image_runtime=model.image_tower.backbone.runtime,
            image_runtime_error=public(state.image_runtime_error),
            image_precision=model.image_tower.backbone.precision,
            runtime_notes=public(state.runtime_notes or {}),
            details=public({"backbones": model.backbones, **model.info}),
        ),
        index=public({**searcher.vector_index.manifest, "index_set": searcher.index_version,
                      "photo": searcher.photo_index.manifest if searcher.photo_index is not None else None}),
        bm25_documents=len(searcher.bm25),
        ranker=RankerInfo(
            loaded=ranker is not None,
            error=public(state.ranker_error),
            details=public(ranker.meta_) if ranker else {},
        ),
        live=public(_live_status(state)) if state.follower is not None else None,
    )


def _json_safe(value: Any, text: Callable[[str], str]) -> Any:
    """Manifests may hold numpy scalars or paths; keep what JSON can carry, stringify the rest, and pass every
    string through ``text``."""
    if isinstance(value, dict):
        return {str(k): _json_safe(v, text) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v, text) for v in value]
    if isinstance(value, str):
        return text(value)
    if value is None or isinstance(value, bool | int):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    try:
        return _json_safe(value.item(), text)  # numpy scalar
    except AttributeError:
        return text(str(value))


def _live_status(state) -> dict:
    status = state.follower.status()
    if state.recs_follower is not None:
        status["recs"] = state.recs_follower.status()
    return status
