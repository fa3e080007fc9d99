"""GET /jobs/{id}/plot.png: the learning curve as an image, for notebooks, chat and reports."""

from __future__ import annotations

import io
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response

from api.deps import Authenticated, QueriesDep
from api.routing import StrictQueryRoute
from service.jobs.queries import JobQueries
from service.records import JOB_ID_PATTERN
from service.store import JobRow

router = APIRouter(prefix="/jobs/{job_id}", tags=["metrics"], dependencies=[Authenticated],
                   route_class=StrictQueryRoute)

JobId = Annotated[str, Path(pattern=JOB_ID_PATTERN, description="A job id (12 hex digits).")]
PAGE = 10_000


def all_rows(queries: JobQueries, job_id: str) -> tuple[JobRow, list[dict[str, Any]]]:
    """The job and every metrics row it has, read a page at a time."""
    job, rows = queries.metrics(job_id, 0, PAGE)
    while rows and len(rows) % PAGE == 0:
        _, more = queries.metrics(job_id, rows[-1]["step"], PAGE)
        if not more:
            break
        rows += more
    return job, rows


def render_learning_curve(job: JobRow, rows: list[dict[str, Any]], width: float, height: float) -> bytes:
    """PNG of episode return mean (with the min-max band of the window) and eval return vs step."""
    from matplotlib.figure import Figure  # imported here: a second or so, only when a plot is asked for

    def series(key: str) -> tuple[list[int], list[float]]:
        pairs = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        return [s for s, _ in pairs], [v for _, v in pairs]

    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    steps, mean = series("episode_return_mean")
    band = [(r["step"], r["episode_return_min"], r["episode_return_max"]) for r in rows
            if r.get("episode_return_min") is not None and r.get("episode_return_max") is not None]
    if band:
        ax.fill_between([b[0] for b in band], [b[1] for b in band], [b[2] for b in band],
                        color="#2563eb", alpha=0.15, linewidth=0, label="episode return min-max")
    ax.plot(steps, mean, color="#2563eb", linewidth=1.8, label="episode return mean")
    eval_steps, eval_mean = series("eval_return_mean")
    if eval_steps:
        ax.plot(eval_steps, eval_mean, color="#dc2626", marker="o", markersize=4, linewidth=1.2,
                label="eval return mean (deterministic)")
    ax.set_xlabel("env steps")
    ax.set_ylabel("return")
    ax.set_title(f"{job.env}  ·  job {job.id}  ·  {job.status}  ·  {job.step:,}/{job.total_steps:,} steps",
                 fontsize=10)
    ax.grid(True, alpha=0.3)
    if steps or eval_steps:
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no metrics yet", transform=ax.transAxes, ha="center", va="center", color="#64748b")
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


@router.get("/plot.png", response_class=Response, responses={
    200: {"content": {"image/png": {}}, "description": "The learning curve as a PNG."},
    404: {"description": "Unknown job"}})
def plot_png(job_id: JobId, queries: QueriesDep,
             width: Annotated[float, Query(ge=2, le=20, description="Inches (100 px each).")] = 8,
             height: Annotated[float, Query(ge=2, le=20, description="Inches (100 px each).")] = 4.5) -> Response:
    """The learning curve: episode return mean with its min-max band, and eval return, vs env steps."""
    job, rows = all_rows(queries, job_id)
    return Response(render_learning_curve(job, rows, width, height), media_type="image/png",
                    headers={"Cache-Control": "no-store"})
