"""/docs, /redoc and their assets work offline (no CDN); POST /jobs has request examples;
GET /envs/{env}/defaults gives the effective spec before submitting. In-process, without Ray."""

from __future__ import annotations

import re

import pytest
from fastapi.testclient import TestClient

from api.app import create_app
from api.config import Settings


@pytest.fixture
def client(tmp_path):
    return TestClient(create_app(Settings(data_dir=tmp_path)), raise_server_exceptions=False)


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_load_every_asset_from_this_server(client, page):
    html = client.get(page)
    assert html.status_code == 200
    urls = re.findall(r"""(?:src|href)=["']([^"']+)["']|url: ['"]([^'"]+)['"]""", html.text)
    urls = [a or b for a, b in urls]
    assert urls and not [u for u in urls if u.startswith(("http:", "https:", "//"))], urls
    assert "cdn" not in html.text and "fonts.googleapis" not in html.text
    for url in urls:
        if url.endswith((".js", ".css", ".png")):
            asset = client.get(url)
            assert asset.status_code == 200 and len(asset.content) > 500, url


def test_swagger_ui_is_a_version_that_renders_openapi_3_1(client):
    """FastAPI writes OpenAPI 3.1, which Swagger UI renders from version 5 on."""
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    js = client.get("/docs-static/swagger-ui-bundle.js").text
    assert re.search(r'version:"5\.\d+\.\d+"', js) or "5.35.0" in js


def test_post_jobs_documents_request_examples(client):
    op = client.get("/openapi.json").json()["paths"]["/jobs"]["post"]
    examples = op["requestBody"]["content"]["application/json"]["examples"]
    assert examples["cartpole"]["value"]["env"] == "CartPole-v1"
    assert "resume_from" in examples["resume"]["value"]


def test_env_defaults_give_the_effective_spec_with_the_tuned_values_marked(client):
    r = client.get("/envs/CartPole-v1/defaults")
    assert r.status_code == 200, r.text
    body = r.json()
    from service.run.tuned import tuned_for
    table = tuned_for("CartPole-v1")
    assert body["spec"]["a2c"]["steps_per_batch"] == table["a2c"]["steps_per_batch"] != 2048
    assert "a2c.steps_per_batch" in body["tuned"] and "a2c.learning_rate" in body["tuned"]
    assert body["spec"]["total_steps"] == 100_000 and "total_steps" not in body["tuned"]


def test_env_defaults_of_an_id_with_a_slash_and_of_an_unknown_id(client):
    assert client.get("/envs/NoSuch-v0/defaults").status_code == 422
    assert client.get("/envs/cartpole-v1/defaults").json()["detail"][0]["loc"] == ["path", "env"]
    assert "did you mean 'CartPole-v1'" in client.get("/envs/cartpole-v1/defaults").json()["detail"][0]["msg"]
    assert client.get("/envs/ALE/Pong-v5/defaults").status_code in (200, 422)  # 422 without ale-py
