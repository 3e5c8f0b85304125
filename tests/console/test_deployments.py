"""The Deployments pages in a real browser, against real replica processes: deploy through
the form, replicas and the metrics scraped from them, Try it (a PNG chosen or dropped: the
label, the probability bars, the heat map; the replica's refusals as messages), update,
rollback, delete; a viewer's and another tenant's view; names shown as text."""

from __future__ import annotations

import base64
import io
import re
import socket
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Dialog, Page, expect

from nimbus.api.console.replicas import (
    MAX_TRY_BYTES,
    Sample,
    Tried,
    parse,
    quantile,
    scrape,
    summarise,
)
from nimbus.api.console.web import TEMPLATES
from nimbus.wire.deployments import Deployment, Replica
from tests.api.conftest import API, make_token
from tests.console.conftest import csrf_of, session_cookie, sign_in
from tests.helpers import ServerProcess
from tests.helpers_models import image_model_dir, insert_job

HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']


@dataclass
class Env:
    server: ServerProcess
    tokens: dict[str, str]  # member, viewer, acme (a member of another tenant)
    member: httpx.Client


def wait_for(client: httpx.Client, name: str, check: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + 90
    while not check(shown := client.get(f"{API}/deployments/{name}").json()):
        assert time.monotonic() < deadline, f"timed out; last seen: {shown}"
        time.sleep(0.2)


def ready(version: int, replicas: int = 1) -> Callable[[dict[str, Any]], bool]:
    def check(d: dict[str, Any]) -> bool:
        return (
            d.get("state") == "ready"
            and len(d["replicas"]) == replicas
            and all(r["state"] == "ready" and r["model_version"] == version for r in d["replicas"])
        )

    return check


@pytest.fixture(scope="module")
def env(shared_server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """Two registered versions of model ``cnn`` and a deployment ``shapes`` of version 1
    (tests that need it ready wait for it: it starts while the first test deploys another)."""
    root = tmp_path_factory.mktemp("console-deploy")
    tokens = {
        "member": make_token(shared_server, "member"),
        "viewer": make_token(shared_server, "viewer"),
        "acme": make_token(shared_server, "member", "acme"),
    }
    member = shared_server.client(tokens["member"])
    for version in (1, 2):
        job = insert_job(
            shared_server.home, "default", image_model_dir(root / f"v{version}", version)
        )
        answer = member.post(f"{API}/models/cnn/versions", json={"job": job})
        assert answer.status_code == 201, answer.text
    answer = member.post(f"{API}/deployments", json={"name": "shapes", "model": "cnn:1"})
    assert answer.status_code == 201, answer.text  # its replica starts meanwhile
    yield Env(shared_server, tokens, member)
    for shown in member.get(f"{API}/deployments").json()["deployments"]:
        member.delete(f"{API}/deployments/{shown['name']}")


def png(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (6, 6), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels, mode="L").save(out, format="PNG")
    return out.getvalue()


def predicted(env: Env, data: bytes) -> dict[str, Any]:
    """What the deployment answers the same image directly (the member's own token)."""
    wait_for(env.member, "shapes", lambda d: d["state"] == "ready")
    endpoint = env.member.get(f"{API}/deployments/shapes").json()["endpoint"]
    answer = httpx.post(
        f"{endpoint}/v2/models/shapes/predict",
        content=data,
        headers={
            "Authorization": f"Bearer {env.tokens['member']}",
            "Content-Type": "application/octet-stream",
        },
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def browser_post(env: Env, page: Page, path: str, data: dict[str, str]) -> httpx.Response:
    cookie = str(session_cookie(page.context)["value"])
    with httpx.Client(base_url=env.server.url, cookies={"nimbus_session": cookie}) as forged:
        return forged.post(path, data={"csrf": csrf_of(page), **data}, timeout=30)


def test_deploy_through_the_form_see_it_ready_and_delete_it(
    env: Env, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    sign_in(page, env.server, env.tokens["member"])
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Deployments").click()
    form = page.get_by_role("region", name="Deploy a model version")
    form.get_by_label("Name", exact=True).fill("formed")
    form.get_by_label("Model version", exact=True).fill("cnn")
    form.get_by_label("Replicas").fill("1")
    form.get_by_role("button", name="Deploy").click()
    expect(page).to_have_url(re.compile(r"/deployments/formed$"))
    expect(page.get_by_role("heading", name="Deployment formed")).to_be_visible()
    # The live panel refreshes by itself: the replica turns ready without a reload.
    expect(page.get_by_text("1/1 replicas ready")).to_be_visible(timeout=60_000)
    replicas = page.get_by_role("table", name="Replicas")
    expect(replicas.get_by_role("row").nth(1)).to_contain_text("ready")
    expect(replicas.get_by_role("row").nth(1)).to_contain_text("2")  # cnn: the latest, version 2
    page.goto(f"{env.server.url}/deployments")
    rows = page.get_by_role("row")
    expect(rows.filter(has_text="formed")).to_contain_text("cnn:2")
    expect(rows.filter(has_text="formed")).to_contain_text("1/1")
    expect(rows.filter(has_text="shapes")).to_contain_text("cnn:1")
    shot(page, "deployments")
    # Delete, confirmed on a page of its own.
    page.get_by_role("link", name="formed").click()
    page.get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Delete formed").click()
    expect(page).to_have_url(re.compile(r"/deployments$"))
    expect(page.get_by_role("link", name="formed")).to_have_count(0)
    assert env.member.get(f"{API}/deployments/formed").status_code == 404
    # A bad model reference: the API's message, on the console's error page.
    page.get_by_label("Name", exact=True).fill("nothing")
    page.get_by_label("Model version", exact=True).fill("cnn:99")
    page.get_by_role("button", name="Deploy").click()
    expect(page.get_by_role("alert")).to_contain_text("99")


def test_try_it_shows_the_label_bars_and_heat_map_and_the_metrics_grow(
    env: Env, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    sign_in(page, env.server, env.tokens["member"])
    page.goto(f"{env.server.url}/deployments/shapes")
    image = png(3)
    expected = predicted(env, image)
    page.get_by_label("Image").set_input_files(
        {"name": "digit.png", "mimeType": "image/png", "buffer": image}
    )
    expect(page.get_by_role("img", name="The image to try")).to_be_visible()
    page.get_by_role("button", name="Predict").click()
    result = page.locator("#try-result")
    expect(result.get_by_role("heading", name=re.compile("Prediction"))).to_contain_text(
        expected["label"], timeout=30_000
    )
    bars = result.get_by_role("meter")
    expect(bars).to_have_count(len(expected["probabilities"]))
    for cls, p in expected["probabilities"].items():
        shown = float(result.get_by_role("meter", name=cls).get_attribute("aria-valuenow") or -1)
        assert abs(shown - p) < 1e-3
    heat = result.get_by_role("img", name=re.compile("Heat map"))
    expect(heat).to_be_visible(timeout=30_000)
    assert (heat.get_attribute("src") or "").startswith("data:image/png;base64,")
    assert heat.evaluate("img => img.naturalWidth") > 0  # a real PNG the browser decoded
    shot(page, "deployment-try-it")

    # Dropped rather than chosen: the drop zone puts the file into the form.
    other = png(5)
    transfer = page.evaluate_handle(
        """(b64) => {
            const bytes = Uint8Array.from(atob(b64), c => c.charCodeAt(0));
            const dt = new DataTransfer();
            dt.items.add(new File([bytes], "dropped.png", {type: "image/png"}));
            return dt;
        }""",
        base64.b64encode(other).decode(),
    )
    page.dispatch_event("#try-drop", "drop", {"dataTransfer": transfer})
    assert page.get_by_label("Image").evaluate("input => input.files[0].name") == "dropped.png"
    page.get_by_role("button", name="Predict").click()
    expect(result.get_by_role("heading", name=re.compile("Prediction"))).to_contain_text(
        predicted(env, other)["label"]
    )

    # The replica's refusals, as messages: bytes that are no image, text to an image model.
    page.get_by_label("Image").set_input_files(
        {"name": "x.png", "mimeType": "image/png", "buffer": b"not an image at all"}
    )
    page.get_by_role("button", name="Predict").click()
    expect(result.get_by_role("alert")).to_contain_text("refused")
    page.get_by_label("Image").set_input_files([])
    page.get_by_label("Text").fill(HOSTILE[1])
    page.get_by_role("button", name="Predict").click()
    expect(result.get_by_role("alert")).to_contain_text("(400)")
    expect(page.locator("img[src=x]")).to_have_count(0)

    # The metrics panel, refreshed every 3 s, counts what the replicas answered.
    live = page.get_by_role("region", name="Replicas and traffic")
    expect(live.locator("[data-metric=p50]")).to_contain_text(" ms", timeout=15_000)
    expect(live.locator("[data-metric=batch]")).to_contain_text("1")
    deadline = time.monotonic() + 15  # each refresh is a new scrape
    while int(live.locator("[data-metric=requests]").inner_text()) < 8:
        assert time.monotonic() < deadline, live.inner_text()
        time.sleep(0.5)  # 2 predictions and 2 explanations by Try it, 2 direct, 2 refused
    expect(live.locator("[data-metric=rps]")).to_have_text(re.compile(r"^[0-9.e+-]+$"))


def test_update_replicas_and_version_then_roll_back(env: Env, page: Page) -> None:
    wait_for(env.member, "shapes", ready(1))
    sign_in(page, env.server, env.tokens["member"])
    page.goto(f"{env.server.url}/deployments/shapes")
    expect(page.get_by_text("No previous version to roll back to")).to_be_visible()
    answer = browser_post(env, page, "/deployments/shapes/rollback", {})
    assert answer.status_code == 409 and "no previous version" in answer.text
    page.get_by_label("New model version").fill("cnn:2")
    page.get_by_role("button", name="Update").click()
    expect(page.get_by_text("(asked as cnn:2)")).to_be_visible()
    # Rolled back at once (the rollout is declarative: the v2 replica still starting is
    # drained), then scaled: both go through the forms, the replicas come up on version 1.
    page.get_by_role("button", name="Roll back to cnn:1").click()
    expect(page.get_by_text("(asked as cnn:1)")).to_be_visible()
    expect(page.get_by_role("button", name="Roll back to cnn:2")).to_be_visible()  # and back
    page.get_by_role("spinbutton", name="Replicas").fill("2")
    page.get_by_role("button", name="Update").click()
    expect(page.get_by_text("2/2 replicas ready")).to_be_visible(timeout=60_000)
    wait_for(env.member, "shapes", ready(1, replicas=2))
    assert env.member.get(f"{API}/deployments/shapes").json()["desired_replicas"] == 2
    # A bad number is the API's 400, named.
    answer = browser_post(env, page, "/deployments/shapes/update", {"replicas": "0"})
    assert answer.status_code == 400 and "replicas" in answer.text


def test_a_viewer_may_try_but_not_change(env: Env, page: Page) -> None:
    wait_for(env.member, "shapes", lambda d: d["state"] == "ready")
    sign_in(page, env.server, env.tokens["viewer"])
    page.goto(f"{env.server.url}/deployments")
    expect(page.get_by_role("link", name="shapes")).to_be_visible()
    expect(page.get_by_role("button", name="Deploy")).to_have_count(0)
    page.get_by_role("link", name="shapes").click()
    for name in ("Update", re.compile("Roll back"), re.compile("Delete")):
        expect(page.get_by_role("button", name=name)).to_have_count(0)
    expect(page.get_by_role("link", name=re.compile("Delete"))).to_have_count(0)
    page.get_by_label("Image").set_input_files(
        {"name": "a.png", "mimeType": "image/png", "buffer": png(1)}
    )
    page.get_by_role("button", name="Predict").click()  # a read: viewers may try
    expect(page.locator("#try-result").get_by_role("meter")).to_have_count(3)
    # Past the console's own limit: 413, named, without reaching the replica.
    cookie = str(session_cookie(page.context)["value"])
    with httpx.Client(base_url=env.server.url, cookies={"nimbus_session": cookie}) as raw:
        big = raw.post(
            "/deployments/shapes/try",
            data={"csrf": csrf_of(page)},
            files={"image": ("big.png", b"\0" * (MAX_TRY_BYTES + 1), "image/png")},
            timeout=30,
        )
        assert big.status_code == 413 and "above 8 MiB" in big.text
        # Declared past the limit: refused before a byte of the body is read.
        bigger = raw.post(
            "/deployments/shapes/try",
            content=b"\0" * (MAX_TRY_BYTES + 512 * 1024),
            headers={"X-CSRF-Token": csrf_of(page), "Content-Type": "multipart/form-data"},
            timeout=30,
        )
        assert bigger.status_code == 413 and "above 8 MiB" in bigger.text
    # The page shows that refusal where the result goes (htmx swaps only 2xx by itself).
    page.get_by_label("Image").set_input_files(
        {"name": "huge.png", "mimeType": "image/png", "buffer": b"\0" * (MAX_TRY_BYTES + 300_000)}
    )
    page.get_by_role("button", name="Predict").click()
    expect(page.locator("#try-result").get_by_role("alert")).to_contain_text("above 8 MiB")
    before = env.member.get(f"{API}/deployments/shapes").json()
    for path, data in [
        ("/deployments", {"name": "sneaky", "model": "cnn:1", "replicas": "1"}),
        ("/deployments/shapes/update", {"replicas": "3"}),
        ("/deployments/shapes/rollback", {}),
        ("/deployments/shapes/delete", {}),
    ]:
        assert browser_post(env, page, path, data).status_code == 403, path
    after = env.member.get(f"{API}/deployments/shapes").json()
    assert after["desired_replicas"] == before["desired_replicas"]
    assert after["model_ref"] == before["model_ref"]
    assert env.member.get(f"{API}/deployments/sneaky").status_code == 404


def test_another_tenant_sees_nothing_and_names_are_text(env: Env, page: Page) -> None:
    dialogs: list[str] = []

    def seen(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", seen)
    sign_in(page, env.server, env.tokens["acme"])
    page.goto(f"{env.server.url}/deployments")
    expect(page.get_by_text("Nothing is deployed.")).to_be_visible()
    for path in ("/deployments/shapes", "/deployments/shapes/live", "/deployments/shapes/delete"):
        assert page.goto(f"{env.server.url}{path}").status == 404  # type: ignore[union-attr]
    for path in ("/deployments/shapes/try", "/deployments/shapes/delete"):
        assert browser_post(env, page, path, {"text": "hi"}).status_code == 404
    # Hostile names and references come back in the API's messages, as text.
    for hostile in HOSTILE:
        page.goto(f"{env.server.url}/deployments")
        page.get_by_label("Name", exact=True).fill(hostile)
        page.get_by_label("Model version", exact=True).fill(hostile)
        page.get_by_label("Name", exact=True).evaluate("input => input.removeAttribute('pattern')")
        page.get_by_role("button", name="Deploy").click()
        expect(page.get_by_role("alert")).to_contain_text(hostile)
        expect(page.locator("img[src=x]")).to_have_count(0)
    assert dialogs == []


def test_the_metrics_figures() -> None:
    """Rates from two scrapes, quantiles interpolated within buckets, a restarted replica
    counted from zero."""
    text = "\n".join(
        [
            "# TYPE nimbus_inference_requests counter",
            'nimbus_inference_requests_total{model="m",route="predict",status="200"} 8',
            'nimbus_inference_requests_total{model="m",route="predict",status="400"} 2',
            "# TYPE nimbus_inference_request_seconds histogram",
            *(
                f'nimbus_inference_request_seconds_bucket{{route="predict",le="{le}"}} {n}'
                for le, n in [("0.001", 0), ("0.002", 5), ("0.005", 10), ("+Inf", 10)]
            ),
            "# TYPE nimbus_inference_batch_size histogram",
            *(
                f'nimbus_inference_batch_size_bucket{{model="m",le="{le}"}} {n}'
                for le, n in [("1.0", 4), ("2.0", 6), ("+Inf", 6)]
            ),
            'nimbus_inference_batch_size_sum{model="m"} 8',
            'nimbus_inference_batch_size_count{model="m"} 6',
        ]
    )
    now = parse(text, at=10.0)
    assert (now.requests, now.errors, now.batch_count) == (10, 2, 6)
    assert quantile(0.5, now.latency) == pytest.approx(0.002)
    assert quantile(0.99, now.latency) == pytest.approx(0.002 + 0.003 * 4.9 / 5)
    assert quantile(0.5, {}) is None
    first = summarise({7: now}, {})
    assert first.per_second is None and first.requests == 10
    assert first.mean_batch == pytest.approx(8 / 6)
    assert first.batch_buckets == [("\u2264 1", 4), ("\u2264 2", 2)]
    before = Sample(at=8.0, requests=4, latency={0.001: 0, 0.002: 0, 0.005: 4, float("inf"): 4})
    later = summarise({7: now}, {7: before})
    assert later.per_second == pytest.approx(3.0) and later.window_s == pytest.approx(2.0)
    assert later.p50_ms == pytest.approx(1.6)
    restarted = summarise({7: now}, {7: Sample(at=8.0, requests=50)})
    assert restarted.per_second is None and restarted.requests == 10


def test_a_texts_explanation_is_highlighted_words_shown_as_text() -> None:
    """The Try it fragment for a text model: each word marked, red towards the label and
    blue against, opacity by its share of the largest score; words are escaped."""
    tried = Tried(
        label="pos",
        probabilities=[("pos", 0.75), ("neg", 0.25)],
        words=[("great", 0.5), (HOSTILE[0], -0.25), ("", 0.0)],
        method="integrated_gradients",
    )
    html = TEMPLATES.get_template("deployment_try.html").render(tried=tried, try_error=None)
    assert 'style="background: rgba(220, 38, 38, 1.0)">great</mark>' in html
    assert 'rgba(37, 99, 235, 0.5)">&lt;script&gt;alert(1)&lt;/script&gt;</mark>' in html
    assert "<script>" not in html and html.count("<mark") == 2
    assert 'aria-label="pos" aria-valuemin="0" aria-valuemax="1" aria-valuenow="0.75"' in html


def test_a_replica_that_does_not_answer_is_named_not_waited_for() -> None:
    with socket.socket() as probe:  # a port nothing listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    replica = Replica(index=3, pid=99, port=port, state="ready", restarts=0, model_version=1)
    shown = Deployment.model_construct(
        name="gone", endpoint=f"http://127.0.0.1:{port}", replicas=[replica]
    )
    started = time.monotonic()
    figures = scrape("t", shown, "key")
    assert figures.unreachable == [3] and figures.replicas_scraped == 0
    assert figures.requests == 0 and figures.p50_ms is None
    assert time.monotonic() - started < 3
