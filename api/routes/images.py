"""The cleaned listing photos (square RGB JPEGs written by ingest)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, status
from fastapi.responses import FileResponse

from api.deps import CatalogDep
from api.schemas import error_responses

router = APIRouter(prefix="/images", tags=["listings"])

ImageId = Annotated[str, Path(min_length=1, max_length=200, description="Image id.")]


@router.get(
    "/{image_id}",
    response_class=FileResponse,
    responses={
        200: {"content": {"image/jpeg": {}}, "description": "The cleaned JPEG."},
        **error_responses(404, 422, 503, descriptions={404: "Unknown image, or its file is missing."}),
    },
)
def get_image(image_id: ImageId, catalog: CatalogDep) -> FileResponse:
    path = catalog.image_path(image_id)
    if path is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no image with id {image_id!r}")
    root = catalog.root.resolve()
    resolved = path.resolve()
    if not resolved.is_relative_to(root) or not resolved.is_file():
        raise HTTPException(
            status.HTTP_404_NOT_FOUND,
            f"the file of image {image_id!r} is missing from the workspace; re-run `marketsearch ingest`",
        )
    return FileResponse(resolved, media_type="image/jpeg", headers={"Cache-Control": "public, max-age=3600"})
