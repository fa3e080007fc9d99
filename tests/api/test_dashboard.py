"""The dashboard page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against a real `a2c serve` with an API token and real Ray: token prompt, new-job form with its
422s, live learning curves, a queued job's wait reason and its stop, checkpoint download, stop;
the charts' hover, smoothing, x axes, log scale, zoom and CSV; the runs table's columns and the
comparison of runs; a sweep's view; the newest training video playing beside the learning
curve; the layout at 1366 px and at 390x844. Screenshots go to test-artifacts/dashboard/.

The tests run in order on one server and share its jobs (`JOBS`).

Without Chromium or Playwright the tests skip, unless A2C_REQUIRE_BROWSER=1 (as .ci/run sets),
in which case they fail.
"""

from __future__ import annotations

import csv
import math
import os
import shutil
from datetime import datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Iterator

import pytest

from tests.api.conftest import start_server

pytestmark = pytest.mark.browser

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "dashboard-test-token"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard"
WAIT_MS = 300_000
"""Hang guard for waits on training (the same as the API tests' job timeout)."""
JOBS: dict[str, str] = {}
"""Job ids the tests share: "long" (stopped by the user), "queued" (stopped while PENDING), "short",
"video" (a video every evaluation, stopped); "sweep" is a sweep's id."""


def to_fixed(value: float, digits: int) -> str:
    """JavaScript's ``Number.prototype.toFixed``: a tie on the exact binary value rounds away from zero.

    Python's format rounds ties to even, so a CartPole mean of 295.25 (exact in binary) is
    "295.2" in Python and "295.3" on the page.
    """
    return str(Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP))


def _browser_missing() -> str | None:
    """Why the browser test cannot run here, or None."""
    if not CHROMIUM.is_file():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing (pip install -e '.[test]')"
    return None


@pytest.fixture(scope="module")
def dashboard_server(tmp_path_factory):
    """A server of its own, with a token, so the page's token handling is exercised."""
    server = start_server(tmp_path_factory, token=TOKEN)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory) -> Iterator:
    """A fresh Chromium profile (no Playwright browser download: executable_path)."""
    missing = _browser_missing()
    if missing:
        if os.environ.get("A2C_REQUIRE_BROWSER") == "1":
            pytest.fail(f"A2C_REQUIRE_BROWSER=1 but {missing}")
        pytest.skip(missing)
    from playwright.sync_api import sync_playwright
    shutil.rmtree(ARTIFACTS, ignore_errors=True)
    ARTIFACTS.mkdir(parents=True)
    with sync_playwright() as p:
        context = p.chromium.launch_persistent_context(
            str(tmp_path_factory.mktemp("chromium-profile")), executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS, headless=True, viewport={"width": 1400, "height": 900}, accept_downloads=True)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture(scope="module")
def page(browser_context, dashboard_server):
    """One tab on the dashboard, with every request it sends recorded in `page.sent`."""
    page = browser_context.new_page()
    page.set_default_timeout(60_000)
    page.sent = []
    page.on("request", lambda r: page.sent.append((r.url, r.all_headers().get("authorization"))))
    page.errors = []
    page.on("pageerror", lambda e: page.errors.append(str(e)))
    page.goto(dashboard_server.url + "/")
    yield page
    assert page.errors == []  # no uncaught script error during the whole module


@pytest.fixture(scope="module")
def api(dashboard_server):
    """An httpx client of the same server, with the token."""
    with dashboard_server.client() as c:
        yield c


def shot(page, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def submit(page, **fields: str) -> None:
    """Fill the new-job form on the jobs view (other fields emptied) and submit it."""
    page.goto(page.url.split("#")[0] + "#/")
    form = page.locator("#job-form")
    for name in ("total_steps", "seed", "workers", "envs_per_worker", "a2c.steps_per_batch",
                 "a2c.learning_rate", "eval_every", "checkpoint_every"):
        form.locator(f"[name='{name}']").fill(fields.get(name, ""))
    form.locator("[name='env']").fill(fields.get("env", "CartPole-v1"))
    page.click("#job-submit")


def open_job_from_form(page, **fields: str) -> str:
    """Submit the form; the page goes to the new job's view. Returns the job id."""
    submit(page, **fields)
    page.wait_for_url("**/#/jobs/*")
    return page.url.rsplit("/", 1)[1]


def points(page, chart: str = "return") -> int:
    return int(page.get_attribute(f"#chart-{chart}", "data-points") or 0)


def test_page_asks_for_the_token_once_and_sends_it_only_as_a_bearer_header(page, dashboard_server):
    page.wait_for_selector("#token-dialog[open]")
    shot(page, "01-token-prompt")
    page.fill("#token-input", TOKEN)
    page.click("#token-save")
    page.wait_for_selector("#token-dialog", state="hidden")
    page.wait_for_selector("#jobs-empty:not([hidden])")  # /jobs answered with the token
    page.reload()
    page.wait_for_selector("#jobs-empty:not([hidden])")
    assert not page.is_visible("#token-dialog")  # kept in sessionStorage: not asked again
    assert page.evaluate("sessionStorage.getItem('a2c-api-token')") == TOKEN
    api_calls = [(url, auth) for url, auth in page.sent if "/jobs" in url]
    assert api_calls[0][1] is None  # the first call, before the prompt, got its 401
    assert len(api_calls) >= 3 and all(auth == f"Bearer {TOKEN}" for _, auth in api_calls[1:])
    assert not any(TOKEN in url for url, _ in page.sent)


def test_422_from_the_server_is_shown_next_to_the_field_its_loc_names(page, api):
    cases = [({"total_steps": "0"}, "total_steps", {"env": "CartPole-v1", "total_steps": 0}),
             ({"workers": "3", "envs_per_worker": "4", "a2c.steps_per_batch": "100"}, "a2c.steps_per_batch",
              {"env": "CartPole-v1", "workers": 3, "envs_per_worker": 4, "a2c": {"steps_per_batch": 100}}),
             ({"a2c.learning_rate": "-0.1"}, "a2c.learning_rate", {"env": "CartPole-v1", "a2c": {"learning_rate": -0.1}})]
    for fields, field, body in cases:
        expected = api.post("/jobs", json=body)
        assert expected.status_code == 422
        [detail] = expected.json()["detail"]
        assert ".".join(detail["loc"][1:]) == field
        submit(page, **fields)
        error = page.locator(f".field[data-field='{field}'] .error")
        error.wait_for(state="visible")
        assert error.inner_text() == detail["msg"]
        assert page.locator(".field.invalid").count() == 1
        assert page.url.endswith("#/")  # no job was made
        shot(page, f"02-422-{field}")
    assert api.get("/jobs").json()["jobs"] == []


def test_job_from_the_form_draws_live_curves_stops_and_its_checkpoint_downloads(page, api, tmp_path):
    # Long enough to be RUNNING for the whole test: the stop button ends it.
    job_id = open_job_from_form(page, total_steps="4000000", workers="2", envs_per_worker="4",
                                **{"a2c.steps_per_batch": "512"}, eval_every="5", checkpoint_every="10")
    spec = api.get(f"/jobs/{job_id}").json()["spec"]
    assert spec["total_steps"] == 4_000_000 and spec["eval_every"] == 5 and spec["a2c"]["steps_per_batch"] == 512
    page.wait_for_function("Number(document.querySelector('#chart-return').dataset.points) >= 3",
                           timeout=WAIT_MS)
    early = points(page)
    page.wait_for_function(f"Number(document.querySelector('#chart-return').dataset.points) > {early}",
                           timeout=WAIT_MS)  # more points arrive while the page stays open: live
    page.wait_for_selector("#job-status.running")
    JOBS["long"] = job_id
    # The curve is really on the canvas: pixels of the mean-return colour (#2563eb).
    blue = page.evaluate("""() => {
        const c = document.querySelector('#chart-return canvas'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 0x25 && d[i+1] === 0x63 && d[i+2] === 0xeb) n++;
        return n; }""")
    assert blue > 50
    for chart in ("policy_loss", "value_loss", "entropy", "explained_variance", "grad_norm", "learning_rate",
                  "env_steps_per_s"):
        assert points(page, chart) > 0
    page.wait_for_selector("#ckpt-table button[data-ckpt]", timeout=WAIT_MS)  # after 10 updates
    shot(page, "03-job-live")

    check_queued_job_and_its_stop(page, api, job_id)

    page.once("dialog", lambda d: d.dismiss())  # Stop asks first; "Cancel" leaves the job running
    page.click("#job-stop")
    page.wait_for_timeout(500)
    assert api.get(f"/jobs/{job_id}").json()["stop_requested"] is False
    page.once("dialog", lambda d: d.accept())
    page.click("#job-stop")
    page.wait_for_selector("#job-status.stopped", timeout=WAIT_MS)
    page.wait_for_selector("#stream-state:has-text('job ended')")
    job = api.get(f"/jobs/{job_id}").json()
    assert job["stop_requested"] and 0 < job["progress"]["step"] < 4_000_000
    assert page.is_disabled("#job-stop")
    rows = api.get(f"/jobs/{job_id}/metrics", params={"limit": 10_000}).json()["rows"]
    returns = sum(r.get("episode_return_mean") is not None for r in rows)
    evals = sum(r.get("eval_return_mean") is not None for r in rows)
    assert points(page) == returns + evals  # every row of the stream is on the chart
    checkpoints = api.get(f"/jobs/{job_id}/checkpoints").json()["checkpoints"]
    final = checkpoints[-1]
    assert final["step"] == job["progress"]["step"]  # the stop wrote a final checkpoint
    page.wait_for_selector(f"button[data-ckpt='{final['id']}']")
    assert page.locator("#ckpt-table tbody tr").count() == len(checkpoints)
    # Evaluation returns, not training ones, and the best-evaluated checkpoint marked.
    final_row = page.locator(f"#ckpt-table tbody tr:has(button[data-ckpt='{final['id']}'])")
    assert final["eval_return_mean"] is not None  # a stop's final checkpoint is evaluated
    assert final_row.locator("td[data-label='Eval return']").inner_text() == f"{final['eval_return_mean']:.1f}"
    best = [c["id"] for c in checkpoints if c["best"]]
    assert len(best) == 1 and page.locator("#ckpt-table .best-mark").count() == 1
    assert best[0] in page.locator("#ckpt-table tr:has(.best-mark)").inner_text()
    shot(page, "04-job-stopped")

    with page.expect_download() as info:
        page.click(f"button[data-ckpt='{final['id']}']")
    download = info.value
    assert download.suggested_filename == f"{job_id}-{final['id']}.tar.gz"
    saved = tmp_path / download.suggested_filename
    download.save_as(saved)
    assert saved.read_bytes() == api.get(final["archive_url"]).content
    from learner.checkpoint import read_archive
    assert read_archive(saved).state.step == final["step"]

    with page.expect_download() as info:
        page.click("#job-png")
    png = tmp_path / info.value.suggested_filename
    info.value.save_as(png)
    assert png.name == f"{job_id}-learning-curve.png" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    page.goto(page.url.split("#")[0] + "#/")
    row = page.locator(f"tr[data-job='{job_id}']")
    row.locator(".badge.stopped").wait_for()
    page.wait_for_function(f"document.querySelector(\"tr[data-job='{job_id}'] .ret\").textContent !== '—'")
    latest = api.get(f"/jobs/{job_id}").json()["latest_metrics"]["episode_return_mean"]
    assert row.locator(".ret").inner_text() == to_fixed(latest, 1)
    assert row.locator(".progress-text").inner_text() == f"{math.floor(job['progress']['fraction'] * 100 + 0.5)}%"
    assert row.locator("td[data-label='Env']").inner_text() == "CartPole-v1"
    shot(page, "05-jobs-table")


def check_queued_job_and_its_stop(page, api, running_id: str) -> None:
    """With the long job holding 3 of the server's 4 CPUs, a job that needs 2 waits: its view says
    so, and stopping it (after the confirmation) ends it without any actor, metric or checkpoint."""
    r = api.post("/jobs", json={"env": "CartPole-v1", "total_steps": 20_000, "workers": 1, "envs_per_worker": 4})
    assert r.status_code == 201
    queued = JOBS["queued"] = r.json()["id"]
    page.goto(page.url.split("#")[0] + f"#/jobs/{queued}")
    page.wait_for_selector("#job-wait:not([hidden])")
    wait = api.get(f"/jobs/{queued}").json()["queue"]
    assert wait == {"starting": False, "place": 1, "queued": 1, "cpus_needed": 2, "cpus_free": 1, "cpus_total": 4}
    assert page.inner_text("#job-wait") == "Queued: place 1 of 1 — needs 2 CPUs; 1 of 4 free."
    shot(page, "03b-job-queued")
    page.once("dialog", lambda d: d.accept())
    page.click("#job-stop")
    page.wait_for_selector("#job-status.stopped")
    page.wait_for_selector("#stream-state:has-text('job ended')")
    job = api.get(f"/jobs/{queued}").json()
    assert job["progress"]["step"] == 0 and "queue" not in job
    assert api.get(f"/jobs/{queued}/checkpoints").json()["checkpoints"] == []
    assert api.get(f"/jobs/{queued}/metrics").json()["rows"] == []
    assert not any(e["kind"] == "started" for e in job["events"])
    # An ended job with no rows does not say it waits for metrics.
    assert page.get_attribute("#chart-return", "data-empty").startswith("no metrics")
    assert page.is_hidden("#job-wait")
    page.goto(page.url.split("#")[0] + f"#/jobs/{running_id}")
    page.wait_for_selector("#job-status.running")


def tensorboard_smooth(values: list[float], weight: float) -> list[float]:
    """TensorBoard's smoothing: an exponential moving average, debiased."""
    out, last = [], 0.0
    for n, v in enumerate(values, 1):
        last = last * weight + (1 - weight) * v
        out.append(last / (1 - weight ** n))
    return out


def test_charts_hover_smooth_switch_x_axis_log_zoom_and_export_csv(page, api, tmp_path):
    job_id = JOBS["long"]
    page.goto(page.url.split("#")[0] + f"#/jobs/{job_id}")
    page.wait_for_selector("#stream-state:has-text('job ended')")
    rows = api.get(f"/jobs/{job_id}/metrics", params={"limit": 10_000}).json()["rows"]
    job = api.get(f"/jobs/{job_id}").json()
    page.wait_for_function(f"Number(document.querySelector('#chart-entropy').dataset.points) === {len(rows)}")
    # Every panel's x axis ends at the data's last step (not at a rounded 2x of it).
    for chart in ("return", "entropy", "grad_norm"):
        assert float(page.get_attribute(f"#chart-{chart}", "data-x-max")) == rows[-1]["step"]

    # Hover: a tooltip with the step and the values; the crosshair shows on the other panels too.
    page.locator("#chart-return").scroll_into_view_if_needed()
    box = page.locator("#chart-return .u-over").bounding_box()
    page.mouse.move(box["x"] + box["width"] * 0.5, box["y"] + box["height"] * 0.5)
    tip = page.locator("#chart-return .chart-tip")
    tip.wait_for(state="visible")
    text = tip.inner_text()
    assert "steps" in text and "episode mean (last 20)" in text and "eval mean" in text
    assert "(max)" not in text and "(min)" not in text  # the band's edges are not series to read
    idx = page.evaluate("a2cCharts.job.panels[0].plot.cursor.idx")
    x = page.evaluate(f"a2cCharts.job.panels[0].plot.data[0][{idx}]")
    row = next(r for r in rows if r["step"] == x)
    assert f"{row['episode_return_mean']:.4g}" in text
    assert page.evaluate("a2cCharts.job.panels[3].plot.cursor.idx") == idx  # synced crosshair
    shot(page, "06-hover")

    # Smoothing: the entropy curve becomes TensorBoard's EMA of the rows; the raw one stays faint.
    page.locator("#job-chart-toolbar [data-ctl=smoothing]").fill("0.9")
    page.wait_for_function("a2cCharts.job.panels[3].plot.series.length === 3")
    drawn = page.evaluate("a2cCharts.job.panels[3].plot.data[2]")
    expected = tensorboard_smooth([r["entropy"] for r in rows], 0.9)
    assert drawn == pytest.approx(expected, rel=1e-9)
    assert points(page, "entropy") == len(rows)  # smoothed copies are not counted twice
    shot(page, "07-smoothed")
    page.locator("#job-chart-toolbar [data-ctl=smoothing]").fill("0")

    # x axis: seconds of training, then wall-clock time (from the job's start).
    page.select_option("#job-chart-toolbar [data-ctl=x]", "relative")
    page.wait_for_function(f"Number(document.querySelector('#chart-entropy').dataset.xMax) === {rows[-1]['wall_s']}")
    page.select_option("#job-chart-toolbar [data-ctl=x]", "wall")
    started = datetime.fromisoformat(job["started"]).timestamp()
    page.wait_for_function("a2cCharts.job.panels[3].plot.scales.x.time === true")
    assert float(page.get_attribute("#chart-entropy", "data-x-max")) == pytest.approx(started + rows[-1]["wall_s"], abs=2e-3)
    page.select_option("#job-chart-toolbar [data-ctl=x]", "step")

    # Log y: the value loss panel switches to a log scale.
    page.check("#job-chart-toolbar [data-ctl=log]")
    page.wait_for_function("a2cCharts.job.panels[2].plot.scales.y.distr === 3")
    page.uncheck("#job-chart-toolbar [data-ctl=log]")
    page.wait_for_function("a2cCharts.job.panels[2].plot.scales.y.distr === 1")

    # Zoom: a drag across one panel narrows every panel's x range; a double-click resets it.
    page.locator("#chart-entropy").scroll_into_view_if_needed()
    box = page.locator("#chart-entropy .u-over").bounding_box()
    y = box["y"] + box["height"] / 2
    page.mouse.move(box["x"] + box["width"] * 0.25, y)
    page.mouse.down()
    page.mouse.move(box["x"] + box["width"] * 0.6, y, steps=5)
    page.mouse.up()
    page.wait_for_function(f"a2cCharts.job.panels[0].plot.scales.x.max < {rows[-1]['step']}")
    ranges = page.evaluate("a2cCharts.job.panels.map(p => [p.plot.scales.x.min, p.plot.scales.x.max])")
    assert len({tuple(r) for r in ranges}) == 1
    page.dblclick("#chart-entropy .u-over")
    page.wait_for_function(f"a2cCharts.job.panels[0].plot.scales.x.max === {rows[-1]['step']}")

    # CSV of the rows.
    with page.expect_download() as info:
        page.click("#job-chart-toolbar [data-ctl=csv]")
    saved = tmp_path / info.value.suggested_filename
    info.value.save_as(saved)
    with saved.open(newline="") as f:
        table = list(csv.DictReader(f))
    assert saved.name == f"{job_id}-metrics.csv" and len(table) == len(rows)
    assert [int(t["step"]) for t in table] == [r["step"] for r in rows]
    assert float(table[-1]["entropy"]) == rows[-1]["entropy"] and table[0]["run"] == job_id


def test_job_view_shows_seed_config_with_tuned_values_average_speed_and_collapsed_checkpoints(page, api):
    job_id = JOBS["long"]
    page.goto(page.url.split("#")[0] + f"#/jobs/{job_id}")
    page.wait_for_selector("#job-status.stopped")
    job = api.get(f"/jobs/{job_id}").json()
    assert "seed 0" in page.inner_text("#job-env")
    page.wait_for_selector("#job-config div[data-field='a2c.learning_rate']")
    tuned = set(page.eval_on_selector_all("#job-config div.tuned", "ds => ds.map(d => d.dataset.field)"))
    assert tuned == set(job["spec"]["tuned"]) and tuned
    assert page.inner_text("#job-config div[data-field='a2c.steps_per_batch'] dd") == "512"  # set in the form
    assert "a2c.steps_per_batch" not in tuned
    assert page.inner_text("#job-config div[data-field='seed'] dd") == "0"
    # Env steps/s is the run's average, the same as the summary's, not the last row's.
    speed = page.inner_text("#job-stats div[data-stat='Env steps/s (avg)'] dd")
    assert speed == f"{math.floor(job['summary']['env_steps_per_s'] + 0.5):,}"  # JavaScript's Math.round
    evaluation = job["evaluation"]
    assert page.inner_text("#job-stats div[data-stat='Best eval'] dd") == to_fixed(evaluation["best"], 1)
    # Checkpoint events: one line that opens to list them all.
    checkpoints = sum(e["kind"] == "checkpoint" for e in job["events"])
    assert checkpoints >= 2
    groups = page.locator("#job-events li.ev-group")
    assert groups.count() >= 1
    listed = sum(int(t.split()[0]) for t in groups.locator("summary > span:last-child").all_inner_texts())
    assert listed + page.locator("#job-events > li:not(.ev-group) .ev-kind:text-is('checkpoint')").count() == checkpoints
    assert page.locator("#job-events > li").count() < len(job["events"])
    assert page.locator("#job-view .chart.no-data").count() == 0


def test_runs_table_shows_config_columns_eval_and_duration_and_compares_runs(page, api):
    short = api.post("/jobs", json={"env": "CartPole-v1", "total_steps": 4096, "seed": 5, "workers": 1,
                                    "envs_per_worker": 4, "eval_every": 2, "a2c": {"steps_per_batch": 512}}).json()["id"]
    JOBS["short"] = short
    page.goto(page.url.split("#")[0] + "#/")
    row = page.locator(f"tr[data-job='{short}']")
    row.locator(".badge.succeeded").wait_for(timeout=WAIT_MS)
    job = api.get(f"/jobs/{short}").json()
    page.wait_for_function(f"document.querySelector(\"tr[data-job='{short}'] .eval_best\").textContent !== '—'")
    assert row.locator(".eval_final").inner_text() == to_fixed(job["evaluation"]["final"], 1)
    assert row.locator(".eval_best").inner_text() == to_fixed(job["evaluation"]["best"], 1)
    assert row.locator("td[data-column='seed']").inner_text() == "5"
    assert row.locator("td[data-column='a2c.learning_rate']").inner_text() == str(job["spec"]["a2c"]["learning_rate"])
    assert row.locator(".duration").inner_text().endswith("s")
    # A config column picked by the user appears, and stays after a reload.
    page.click("#columns summary")
    page.check("#column-picker input[data-column='a2c.steps_per_batch']")
    assert row.locator("td[data-column='a2c.steps_per_batch']").inner_text() == "512"
    page.reload()
    page.locator(f"tr[data-job='{short}'] td[data-column='a2c.steps_per_batch']").wait_for()
    assert "N_STEPS" in page.inner_text("#jobs-table thead").upper()
    shot(page, "08-runs-table")

    # Select two runs and overlay their curves.
    long = JOBS["long"]
    page.check(f"input[data-select='{short}']")
    page.check(f"input[data-select='{long}']")
    page.click("#compare")
    page.wait_for_url("**/#/compare/*")
    rows = {j: api.get(f"/jobs/{j}/metrics", params={"limit": 10_000}).json()["rows"] for j in (short, long)}
    returns = sum(r.get("episode_return_mean") is not None for rs in rows.values() for r in rs)
    evals = sum(r.get("eval_return_mean") is not None for rs in rows.values() for r in rs)
    page.wait_for_function(f"Number(document.querySelector('#cmp-return').dataset.points) === {returns}",
                           timeout=60_000)
    assert int(page.get_attribute("#cmp-eval", "data-points")) == evals
    legend = page.inner_text("#cmp-return .u-legend")
    assert short in legend and long in legend and "seed 5" in legend
    assert float(page.get_attribute("#cmp-return", "data-x-max")) == max(r["step"] for rs in rows.values() for r in rs)
    shot(page, "09-compare")


SWEEP = {"base": {"env": "CartPole-v1", "total_steps": 4096, "workers": 1, "envs_per_worker": 4,
                  "a2c": {"steps_per_batch": 256}, "eval_every": 4, "eval_episodes": 2, "checkpoint_every": 8},
         "space": {"a2c.learning_rate": {"choice": [1e-6, 7e-3]}}, "num_samples": 3, "max_concurrent_trials": 2,
         "seed": 4, "scheduler": "none"}
"""Three 16-update trials run to their ends; lr 1e-6 against 7e-3 makes their evaluations differ."""


def test_sweep_view_overlays_the_trials_curves_with_the_best_highlighted(page, api):
    post = api.post("/sweeps", json=SWEEP)
    assert post.status_code == 201, post.text
    sweep_id = post.json()["id"]
    JOBS["sweep"] = sweep_id
    page.goto(page.url.split("#")[0] + "#/")
    # The runs page lists the sweep; its row opens the sweep view.
    page.locator(f"#sweeps-table tr[data-sweep='{sweep_id}']").click()
    page.wait_for_url(f"**/#/sweeps/{sweep_id}")
    page.locator("#sweep-status .badge.succeeded").wait_for(timeout=WAIT_MS)
    sweep = api.get(f"/sweeps/{sweep_id}").json()
    trials, best = sweep["trials"], sweep["best_trial"]
    assert len(trials) == 3 and best is not None, sweep
    # Every trial's every eval row is on the one chart, once the view has caught up.
    rows = {t["job_id"]: api.get(f"/jobs/{t['job_id']}/metrics", params={"limit": 10_000}).json()["rows"]
            for t in trials}
    evals = sum(r.get("eval_return_mean") is not None for rs in rows.values() for r in rs)
    page.wait_for_function(f"Number(document.querySelector('#sweep-chart').dataset.points) === {evals}",
                           timeout=60_000)
    # The best trial is drawn last (over the others), in red and thicker; the rest in grey.
    runs = page.evaluate("a2cCharts.sweep.runs.map(r => ({id: r.id, color: r.color, width: r.width}))")
    assert sorted(r["id"] for r in runs) == sorted(t["job_id"] for t in trials)
    assert runs[-1] == {"id": best["job_id"], "color": "#dc2626", "width": 3}
    assert all(r["color"] == "#94a3b8" and r["width"] < 3 for r in runs[:-1])
    legend = page.inner_text("#sweep-chart .u-legend")
    assert "★ " + best["job_id"] in legend and all(t["job_id"] in legend for t in trials)
    # The trials table: one row per trial with its value and best metric; the best one marked.
    for t in trials:
        row = page.locator(f"#trials-table tr[data-trial='{t['job_id']}']")
        assert float(row.locator("td[data-label='a2c.learning_rate']").inner_text()) == t["config"]["a2c.learning_rate"]
        assert row.locator("td[data-label='Best eval_return_mean']").inner_text() == to_fixed(t["best_metric"], 2)
        assert ("★ best" in row.inner_text()) == (t["job_id"] == best["job_id"])
    assert best["job_id"] in page.inner_text("#sweep-best")
    assert page.locator("#sweep-stop").is_hidden()  # the sweep has ended
    shot(page, "13-sweep")
    page.locator(f"#trials-table tr[data-trial='{best['job_id']}'] a").click()
    page.wait_for_url(f"**/#/jobs/{best['job_id']}")


def test_job_view_plays_the_newest_video_beside_the_curve_and_follows_newer_ones(page, api):
    job_id = JOBS["video"] = api.post("/jobs", json={
        "env": "CartPole-v1", "total_steps": 4_000_000, "workers": 1, "envs_per_worker": 4, "eval_every": 2,
        "eval_episodes": 2, "video_every": 1, "a2c": {"steps_per_batch": 512}}).raise_for_status().json()["id"]
    page.goto(page.url.split("#")[0] + f"#/jobs/{job_id}")
    page.wait_for_selector("#job-video[data-video]", timeout=WAIT_MS)
    first = page.get_attribute("#job-video", "data-video")
    # It loads and plays: frames decoded, and the clock moves.
    page.wait_for_function("document.querySelector('#job-video-player').readyState >= 2")
    start = page.evaluate("document.querySelector('#job-video-player').currentTime")
    page.wait_for_function(f"document.querySelector('#job-video-player').currentTime !== {start}", timeout=30_000)
    assert not page.evaluate("document.querySelector('#job-video-player').paused")
    assert page.evaluate("document.querySelector('#job-video-player').src").startswith("blob:")
    fetched = [auth for url, auth in page.sent if f"/jobs/{job_id}/videos/" in url]
    assert fetched and all(auth == f"Bearer {TOKEN}" for auth in fetched)
    listed = {v["id"]: v for v in api.get(f"/jobs/{job_id}/videos").json()["videos"]}
    assert f"step {listed[first]['step']:,}" in page.inner_text("#job-video figcaption")
    # Beside the learning curve, not under it, at 1400 px.
    chart, video = page.locator("#chart-return").bounding_box(), page.locator("#job-video-player").bounding_box()
    assert video["x"] >= chart["x"] + chart["width"] and video["y"] < chart["y"] + chart["height"]
    shot(page, "09b-job-video")
    # A newer video replaces it while the job runs.
    page.wait_for_function(f"(document.querySelector('#job-video').dataset.video || '') > '{first}'", timeout=WAIT_MS)
    page.wait_for_function("document.querySelector('#job-video-player').readyState >= 2")
    api.post(f"/jobs/{job_id}/stop").raise_for_status()
    page.wait_for_selector("#job-status.stopped", timeout=WAIT_MS)
    newest = api.get(f"/jobs/{job_id}/videos").json()["videos"][-1]["id"]
    page.wait_for_function(f"document.querySelector('#job-video').dataset.video === '{newest}'")


def inside(inner: dict, outer: dict, slack: float = 0.5) -> bool:
    return (inner["x"] >= outer["x"] - slack and inner["y"] >= outer["y"] - slack
            and inner["x"] + inner["width"] <= outer["x"] + outer["width"] + slack
            and inner["y"] + inner["height"] <= outer["y"] + outer["height"] + slack)


def overlap(a: dict, b: dict) -> bool:
    return not (a["x"] + a["width"] <= b["x"] or b["x"] + b["width"] <= a["x"]
                or a["y"] + a["height"] <= b["y"] or b["y"] + b["height"] <= a["y"])


@pytest.mark.parametrize("width,height", [(1366, 900), (390, 844)])
def test_layout_fits_the_window(page, api, width, height):
    page.set_viewport_size({"width": width, "height": height})
    try:
        page.goto(page.url.split("#")[0] + "#/")
        page.locator(f"tr[data-job='{JOBS['short']}']").wait_for()
        page.wait_for_timeout(300)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= width  # no sideways scroll
        table = page.locator("#jobs-table").bounding_box()
        assert inside(table, page.locator("#jobs-view .card").first.bounding_box())
        shot(page, f"10-runs-{width}")

        job_id = JOBS["long"]
        page.goto(page.url.split("#")[0] + f"#/jobs/{job_id}")
        page.wait_for_selector("#stream-state:has-text('job ended')")
        page.wait_for_selector("#ckpt-table button[data-ckpt]")
        page.wait_for_timeout(300)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= width
        # The figures (times included) do not overlap one another.
        stats = [page.locator(f"#job-stats > div:nth-child({i + 1}) dd").bounding_box()
                 for i in range(page.locator("#job-stats > div").count())]
        assert all(not overlap(a, b) for i, a in enumerate(stats) for b in stats[i + 1:])
        card = page.locator("#job-stats").bounding_box()
        assert all(inside(s, card) for s in stats)
        # Event times stay on one line (they wrapped into two at 390 px).
        # Measured in one page call: the list re-renders as events arrive, and a span seen visible
        # could be replaced before a second round trip asked for its box (None, in one run).
        heights = page.evaluate("""() => [...document.querySelectorAll(
            '#job-events li > span:first-child, #job-events summary > span:first-child')]
            .map(e => e.getBoundingClientRect()).filter(r => r.width > 0 && r.height > 0).map(r => r.height)""")
        assert heights and max(heights) < 24, heights
        # Download buttons stay inside their card; the legend inside its chart's card.
        ckpt_card = page.locator("#ckpt-table").locator("xpath=ancestor::div[contains(@class,'card')][1]").bounding_box()
        for button in page.locator("#ckpt-table button[data-ckpt]").all()[:3]:
            button.scroll_into_view_if_needed()
            ckpt_card = page.locator("#ckpt-table").locator("xpath=ancestor::div[contains(@class,'card')][1]").bounding_box()
            assert inside(button.bounding_box(), ckpt_card)
        chart_card = page.locator("#chart-return").locator("xpath=..").bounding_box()
        for entry in page.locator("#chart-return .u-legend .u-series:not(.u-hidden)").all():
            assert inside(entry.bounding_box(), chart_card)
        assert page.locator("#chart-return .u-legend .u-series:not(.u-hidden)").count() == 2
        # Each chart fits its card, and its x axis ends at the data's end.
        for chart in ("return", "entropy"):
            assert inside(page.locator(f"#chart-{chart} canvas").bounding_box(),
                          page.locator(f"#chart-{chart}").locator("xpath=..").bounding_box())
        last = api.get(f"/jobs/{job_id}").json()["progress"]["step"]
        assert float(page.get_attribute("#chart-return", "data-x-max")) == last
        shot(page, f"11-job-{width}")

        # The video fits too: inside its card, beside the curve when wide, under it when narrow.
        page.goto(page.url.split("#")[0] + f"#/jobs/{JOBS['video']}")
        page.wait_for_selector("#job-video[data-video]")
        page.wait_for_function("document.querySelector('#job-video-player').readyState >= 2")
        page.wait_for_timeout(300)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= width
        video_card = page.locator("#curve-video").locator("xpath=..").bounding_box()
        video = page.locator("#job-video").bounding_box()
        assert inside(video, video_card) and video["width"] >= min(240, width - 60)
        chart = page.locator("#chart-return").bounding_box()
        assert (video["x"] >= chart["x"] + chart["width"]) == (width >= 1000)
        shot(page, f"11b-job-video-{width}")

        page.goto(page.url.split("#")[0] + f"#/compare/{JOBS['short']},{job_id}")
        page.wait_for_function("Number(document.querySelector('#cmp-return').dataset.points) > 0")
        assert page.evaluate("document.scrollingElement.scrollWidth") <= width
        for entry in page.locator("#cmp-return .u-legend .u-series:not(.u-hidden)").all():
            assert inside(entry.bounding_box(), page.locator("#cmp-return").locator("xpath=..").bounding_box())
        shot(page, f"12-compare-{width}")

        page.goto(page.url.split("#")[0] + f"#/sweeps/{JOBS['sweep']}")
        page.wait_for_function("Number(document.querySelector('#sweep-chart').dataset.points) > 0")
        page.wait_for_timeout(300)
        assert page.evaluate("document.scrollingElement.scrollWidth") <= width
        sweep_card = page.locator("#sweep-chart").locator("xpath=..").bounding_box()
        assert inside(page.locator("#sweep-chart canvas").bounding_box(), sweep_card)
        for entry in page.locator("#sweep-chart .u-legend .u-series:not(.u-hidden)").all():
            assert inside(entry.bounding_box(), sweep_card)
        trials_card = page.locator("#trials-table").locator("xpath=ancestor::div[contains(@class,'card')][1]")
        assert inside(page.locator("#trials-table").bounding_box(), trials_card.bounding_box())
        shot(page, f"14-sweep-{width}")
    finally:
        page.set_viewport_size({"width": 1400, "height": 900})
