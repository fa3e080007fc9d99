"""Routes of /jobs/{id}/checkpoints: the list, each archive as a download, each policy exported
as an ONNX model, and each policy's actions for a batch of observations."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Path, Query
from fastapi.responses import FileResponse, Response, StreamingResponse

from api.deps import Authenticated, PoliciesDep, QueriesDep
from api.routing import StrictQueryRoute
from api.schemas import ActPublic, ActRequest, CheckpointPublic, CheckpointsPublic
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


@router.post("/{ckpt_id}/act", response_model=ActPublic, response_model_exclude_none=True, responses={
    404: {"description": "Unknown job or checkpoint (for `best`: no checkpoint evaluated yet)"},
    422: {"description": ("Observations that do not fit the policy (`loc` points into body.observations), "
                          "or an archive that does not load")}})
def act(job_id: JobId, ckpt_id: CheckpointId, body: ActRequest, queries: QueriesDep,
        policies: PoliciesDep) -> ActPublic:
    """The checkpoint's actions for a batch of observations: its policy, loaded once and kept in
    a bounded cache (A2C_ACT_CACHE_MB), normalising and scaling them as in training."""
    job, ckpt, location = queries.checkpoint_archive(job_id, ckpt_id)
    out = policies.act((job.id, ckpt.id), location, body.observations, body.deterministic)
    return ActPublic(job_id=job.id, checkpoint=ckpt.id, actions=out.actions,
                     values=out.values if body.include_values else None)

