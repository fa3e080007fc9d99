"""Routes of /jobs/{id}/videos: the videos recorded while the job trained (`video_every`), and
each one as an MP4."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path
from fastapi.responses import FileResponse, Response, StreamingResponse

from api.deps import Authenticated, QueriesDep
from api.routing import StrictQueryRoute
from api.schemas import VideoPublic, VideosPublic
from service import storage
from service.records import JOB_ID_PATTERN, VIDEO_ID_PATTERN

router = APIRouter(prefix="/jobs/{job_id}/videos", tags=["videos"], dependencies=[Authenticated],
                   route_class=StrictQueryRoute)

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id (12 hex digits).")]
VideoId = Annotated[str, Path(pattern=VIDEO_ID_PATTERN,
                              description="A video id (`step-0000051200`), as `GET /jobs/{id}/videos` lists them.")]


@router.get("", response_model=VideosPublic, responses={404: {"description": "Unknown job"}})
def list_videos(job_id: JobId, queries: QueriesDep) -> VideosPublic:
    """The job's videos in step order: step, episode return and length, frames, size, and the URL
    of the MP4. A video is listed once it is whole."""
    return VideosPublic(job_id=job_id, videos=[VideoPublic.from_sidecar(job_id, v) for v in queries.videos(job_id)])


@router.get("/{video_id}", response_class=FileResponse, responses={
    200: {"content": {"video/mp4": {}}, "description": "The MP4 (H.264), named `<job>-<video>.mp4`."},
    206: {"content": {"video/mp4": {}}, "description": "The byte range asked for with `Range`."},
    404: {"description": "Unknown job or video"}})
def download_video(job_id: JobId, video_id: VideoId, queries: QueriesDep) -> Response:
    """The video as an MP4, shown inline. A local file answers `Range` requests (206 with
    `Content-Range`), so a player can seek; one on an object store is streamed whole."""
    location, filename = queries.video(job_id, video_id)
    if storage.is_local(location):
        return FileResponse(storage.local_path(location), media_type="video/mp4", filename=filename,
                            content_disposition_type="inline")
    return StreamingResponse(storage.read_chunks(location), media_type="video/mp4",
                             headers={"Content-Disposition": f'inline; filename="{filename}"'})
