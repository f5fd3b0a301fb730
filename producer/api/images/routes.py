"""The gallery and thumbnail routes: ``/v1/jobs/{job}/gallery`` and
``/v1/jobs/{job}/images/{image}/thumbnail``, both with the read scope.

A thumbnail is of an image of that job's own input record, named by its place there
(``{chunk}-{index}``, see ``gallery.py``): no URI or path is ever taken from the caller.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Query
from fastapi.responses import Response

from rstream.producer.api.context import ApiContext, ApiError
from rstream.producer.api.images import gallery
from rstream.producer.api.images.thumbnail import SIZES, thumbnail
from rstream.shared.names import JOB_ID

CACHE = "private, max-age=300"  # a job's inputs do not change; a token's reach may


def add_routes(app: FastAPI, ctx: ApiContext) -> None:
    client, settings, read = ctx.client, ctx.settings, ctx.need("read")

    @app.get("/v1/jobs/{job}/gallery", tags=["jobs"], dependencies=[read])
    def job_gallery(job: str, *, label: Annotated[str | None, Query(max_length=512)] = None,
                    failed: bool = False, sort: gallery.Sort = "order",
                    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
                    limit: Annotated[int, Query(ge=1, le=200)] = 48) -> dict[str, Any]:
        """The job's images with their top-1 label and probability, a page at a time;
        ``sort=prob`` puts the least certain first (a review queue), ``failed=true`` shows
        the failures with their reason."""
        record = client.jobs.get(JOB_ID.check(job))
        query = gallery.Query(label=label, failed=failed, sort=sort, offset=offset,
                              limit=limit)
        return {"job": job, **gallery.page(gallery.items(client.storage, record), query)}

    @app.get("/v1/jobs/{job}/images/{image}/thumbnail", tags=["jobs"], dependencies=[read],
             response_class=Response,
             responses={200: {"content": {"image/jpeg": {}}}})
    def job_thumbnail(job: str, image: str, size: int = SIZES[0]) -> Response:
        """A small JPEG of one image of the job, re-encoded; a placeholder (header
        ``X-Rstream-Placeholder`` says why) when it cannot be read or decoded."""
        if size not in SIZES:
            raise ApiError(422, "BadSize", f"size={size}: use one of {', '.join(map(str, SIZES))}")
        record = client.jobs.get(JOB_ID.check(job))
        uri = gallery.input_uri(client.storage, record, *gallery.parse_image_id(image))
        shown = thumbnail(client.storage, uri, size, max_bytes=settings.max_object_bytes,
                          max_pixels=settings.max_image_pixels)
        headers = {"Cache-Control": CACHE}
        if shown.placeholder:
            headers["X-Rstream-Placeholder"] = shown.placeholder.encode("ascii", "replace"
                                                                         ).decode()[:300]
        return Response(shown.jpeg, media_type="image/jpeg", headers=headers)
