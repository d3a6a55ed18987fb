"""Operations: ``/api/v1/status`` (backend and archive size) and ``/metrics`` (Prometheus)."""

from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

import broker.metrics  # noqa: F401 - registers the stages' lanner_* metrics for the exposition
from api.dependencies import Archive, BackendName
from api.errors import UNAVAILABLE
from api.models import StatusOut
from broker import lanner_version

router = APIRouter(tags=["operations"])


@router.get(
    "/api/v1/status", response_model=StatusOut, summary="Backend and archive size",
    description="The backend in use and the rows per table of both archive roles (counting may "
                "take a while on a large archive).",
    responses={**UNAVAILABLE},
)
def status(archive: Archive, backend: BackendName) -> StatusOut:
    catalog, lightcurves = archive.counts()
    return StatusOut(backend=backend, version=lanner_version(), catalog=dict(catalog),
                     lightcurves=dict(lightcurves))


@router.get(
    "/metrics", summary="Prometheus metrics", response_class=Response,
    description="Prometheus text exposition of this process: HTTP request times "
                "(`lanner_http_request_duration_seconds`) and the `lanner_*` stage metrics.",
    responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}},
)
def metrics() -> Response:
    return Response(content=generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
