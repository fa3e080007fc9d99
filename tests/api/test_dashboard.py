"""The dashboard page in a real headless Chromium (Debian's /usr/bin/chromium, driven by Playwright)
against a real `a2c serve` with an API token and real Ray: token prompt, new-job form with its
422s, live learning curves, checkpoint download, stop. Screenshots go to test-artifacts/dashboard/.

Without Chromium or Playwright the tests skip, unless A2C_REQUIRE_BROWSER=1 (as .ci/run sets),
in which case they fail.
"""

from __future__ import annotations

import math
import os
import shutil
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
    # The curve is really on the canvas: pixels of the mean-return colour (#2563eb).
    blue = page.evaluate("""() => {
        const c = document.querySelector('#chart-return'), d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
        let n = 0; for (let i = 0; i < d.length; i += 4) if (d[i] === 0x25 && d[i+1] === 0x63 && d[i+2] === 0xeb) n++;
        return n; }""")
    assert blue > 50
    for chart in ("policy_loss", "value_loss", "entropy", "env_steps_per_s"):
        assert points(page, chart) > 0
    page.wait_for_selector("#ckpt-table button[data-ckpt]", timeout=WAIT_MS)  # after 10 updates
    shot(page, "03-job-live")

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
    assert row.locator("td").nth(2).inner_text() == "CartPole-v1"
    shot(page, "05-jobs-table")
