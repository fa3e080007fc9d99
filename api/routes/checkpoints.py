"""Routes of /jobs/{id}/checkpoints: the list, each archive as a download, and each policy
exported as an ONNX model."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, Response, StreamingResponse

from api.deps import Authenticated, QueriesDep
from api.routing import StrictQueryRoute
from api.schemas import CheckpointPublic, CheckpointsPublic
from service import storage
from service.records import CHECKPOINT_ID_PATTERN, JOB_ID_PATTERN

router = APIRouter(prefix="/jobs/{job_id}/checkpoints", tags=["checkpoints"], dependencies=[Authenticated],
                   route_class=StrictQueryRoute)

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id (12 hex digits).")]
CheckpointId = Annotated[str, Path(pattern=CHECKPOINT_ID_PATTERN,
                                   description=("A checkpoint id (`step-0000051200`), `latest` (the highest step) "
                                                "or `best` (the highest evaluation return)."))]


@router.get("", response_model=CheckpointsPublic, responses={404: {"description": "Unknown job"}})
def list_checkpoints(job_id: JobId, queries: QueriesDep) -> CheckpointsPublic:
    """The job's checkpoints in step order: id, step, evaluation return (and whether it is the
    best), mean training return, size, creation time."""
    rows = queries.checkpoints(job_id)
    best = queries.best_checkpoint_id(job_id)
    return CheckpointsPublic(job_id=job_id, checkpoints=[
        CheckpointPublic.from_row(job_id, c, best=c.id == best) for c in rows])


@router.get("/{ckpt_id}/archive", response_class=FileResponse, responses={
    200: {"content": {"application/gzip": {}}, "description": "The .tar.gz; `a2c evaluate` loads it."},
    404: {"description": "Unknown job or checkpoint (for `best`: no checkpoint evaluated yet)"}})
def download_archive(job_id: JobId, ckpt_id: CheckpointId, queries: QueriesDep) -> Response:
    """The checkpoint archive as a download, named `<job>-<checkpoint>.tar.gz`.

    Streamed from the storage the job wrote to: a local file as it is, a storage URI in chunks.
    """
    location, filename = queries.archive(job_id, ckpt_id)
    if storage.is_local(location):
        return FileResponse(storage.local_path(location), media_type="application/gzip", filename=filename)
    return StreamingResponse(storage.read_chunks(location), media_type="application/gzip",
                             headers={"Content-Disposition": f'attachment; filename="{filename}"'})


@router.get("/{ckpt_id}/export", response_class=Response, responses={
    200: {"content": {"application/octet-stream": {}},
          "description": "The policy as an ONNX model: input `obs`, outputs `action` first (docs/api.md)."},
    404: {"description": "Unknown job or checkpoint (for `best`: no checkpoint evaluated yet)"},
    422: {"description": "An unknown format, or an archive that does not load"}})
def export_policy(job_id: JobId, ckpt_id: CheckpointId, queries: QueriesDep,
                  format: Annotated[Literal["onnx"], Query(description="The model format.")] = "onnx") -> Response:
    """The checkpoint's policy as a model file, named `<job>-<checkpoint>.onnx`: raw observations
    in (normalisation and image scaling inside), the deterministic action out."""
    data, filename = queries.export(job_id, ckpt_id, format)
    return Response(data, media_type="application/octet-stream",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})

