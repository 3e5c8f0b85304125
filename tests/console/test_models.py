"""The Models pages in a real browser: register from a job through the form, versions and
aliases with their history, a version's lineage, model card and downloads, delete; a viewer
sees no form and is refused, another tenant sees nothing, card text shows as text."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Dialog, Page, expect

from tests.api.conftest import API, make_token
from tests.console.conftest import csrf_of, session_cookie, sign_in
from tests.helpers import ServerProcess
from tests.helpers_models import API_ONLY, image_model_dir, insert_job

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


@dataclass
class Env:
    server: ServerProcess
    member: str
    viewer: str
    other: str  # a member of tenant "acme"
    model_dir: Path
    jobs: list[str]  # succeeded jobs of tenant "default" with model files

    def api(self, token: str) -> httpx.Client:
        return self.server.client(token)


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A server whose "digits" model has version 1 (registered through the API) named by
    @production; one more succeeded job is left for the form."""
    root = tmp_path_factory.mktemp("console-models")
    server = ServerProcess(root / "home", env=API_ONLY).start()
    try:
        member, viewer, other = (
            make_token(server, role, tenant)
            for role, tenant in (("member", None), ("viewer", None), ("member", "acme"))
        )
        model_dir = image_model_dir(root / "model", 1)
        jobs = [
            insert_job(server.home, "default", model_dir, evaluation={"accuracy": a, "support": 8})
            for a in (0.625, 0.875)
        ]
        with server.client(member) as api:
            created = api.post(f"{API}/models/digits/versions", json={"job": jobs[0]})
            assert created.status_code == 201, created.text
            alias = api.put(f"{API}/models/digits/aliases/production", json={"version": 1})
            assert alias.status_code == 200, alias.text
        yield Env(server, member, viewer, other, model_dir, jobs)
    finally:
        server.stop()


def browser_client(server: ServerProcess, context: BrowserContext) -> httpx.Client:
    """An HTTP client holding the browser's session cookie (what a page could send)."""
    cookie = str(session_cookie(context)["value"])
    return httpx.Client(
        base_url=server.url, cookies={"nimbus_session": cookie}, follow_redirects=False
    )


def test_register_move_an_alias_read_the_card_download_and_delete(
    env: Env, page: Page, context: BrowserContext, shot: Callable[[Page, str], Path]
) -> None:
    dialogs: list[Dialog] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog))
    sign_in(page, env.server, env.member)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Models").click()
    row = page.get_by_role("row", name=re.compile(r"^digits"))
    expect(row).to_contain_text("@production → 1")
    expect(row.get_by_role("cell").nth(2)).to_have_text("1")  # versions
    shot(page, "models")

    # Register the second job's model through the form: its version page follows.
    page.get_by_label("Job id").fill(env.jobs[1])
    page.get_by_label("Model name").fill("digits")
    page.get_by_role("button", name="Register", exact=True).click()
    expect(page.get_by_role("heading", name="digits version 2")).to_be_visible()
    expect(page.get_by_role("link", name=env.jobs[1])).to_have_attribute(
        "href", f"/jobs/{env.jobs[1]}"
    )
    expect(page.get_by_role("link", name="digits:1")).to_have_attribute(
        "href", "/datasets/digits/1"
    )
    card = page.get_by_role("region", name="Model card")
    expect(card.get_by_role("heading", name="Model card for digits:2")).to_be_visible()
    expect(card).to_contain_text("cat, dog, eel")

    # A file's link answers with the file's bytes.
    href = page.get_by_role("link", name="Download model.onnx").get_attribute("href")
    assert href == "/models/digits/2/files/model.onnx"
    with browser_client(env.server, context) as raw:
        got = raw.get(href)
    assert got.status_code == 200, got.text
    assert got.content == (env.model_dir / "model.onnx").read_bytes()
    assert "attachment" in got.headers["content-disposition"]

    # Card text a person wrote shows as text.
    with env.api(env.member) as api:
        edited = api.patch(
            f"{API}/models/digits/versions/2/card",
            json={"description": f"Made by {SCRIPT} and {IMG}", "intended_use": f"[x]({IMG})"},
        )
        assert edited.status_code == 200, edited.text
    page.reload()
    expect(card).to_contain_text(f"Made by {SCRIPT} and {IMG}")
    expect(page.locator("img[src=x]")).to_have_count(0)
    expect(page.locator("main script:not([type='application/json'])")).to_have_count(0)
    shot(page, "model-version")

    # Move @production to 2 through the form; the history says who moved it when.
    page.get_by_role("link", name="digits", exact=True).click()
    expect(page.get_by_label("Model name")).to_have_value("digits")  # register another here
    page.get_by_label("Alias", exact=True).fill("production")
    page.get_by_label("Version", exact=True).select_option("2")
    page.get_by_role("button", name="Move alias", exact=True).click()
    aliases = page.get_by_role("table").filter(has_text="Remove")
    expect(aliases.get_by_role("row", name=re.compile(r"@production"))).to_contain_text("2")
    history = page.get_by_role("table", name="Alias history")
    expect(history.get_by_role("row")).to_have_count(3)  # header, moved, set (newest first)
    expect(history.get_by_role("row").nth(1)).to_contain_text("moved 1 → 2")
    expect(history.get_by_role("row").nth(1)).to_contain_text("member-default")
    expect(history.get_by_role("row").nth(2)).to_contain_text("set to 1")
    versions = page.get_by_role("region", name="Versions")
    expect(versions.get_by_role("row", name=re.compile(r"^2 "))).to_contain_text("0.875")
    shot(page, "model")

    # Remove the alias, then delete version 1 (confirmed).
    page.get_by_role("button", name="Remove alias production").click()
    expect(history.get_by_role("row").nth(1)).to_contain_text("removed (was 2)")
    page.goto(f"{env.server.url}/models/digits/1")
    page.get_by_role("button", name="Delete version").click()  # the box is required
    expect(page.get_by_role("heading", name="digits version 1")).to_be_visible()
    with browser_client(env.server, context) as raw:  # and the server checks it too
        unconfirmed = raw.post("/models/digits/1/delete", data={"csrf": csrf_of(page)})
    assert unconfirmed.status_code == 400 and "tick the box" in unconfirmed.text
    page.get_by_label("Yes, delete digits:1").check()
    page.get_by_role("button", name="Delete version").click()
    expect(page.get_by_role("heading", name="Model digits")).to_be_visible()
    expect(versions.get_by_role("link", name="1", exact=True)).to_have_count(0)
    assert dialogs == []


def test_a_viewer_sees_no_form_and_a_forged_post_is_refused(
    env: Env, page: Page, context: BrowserContext
) -> None:
    sign_in(page, env.server, env.viewer)
    page.goto(f"{env.server.url}/models")
    expect(page.get_by_role("link", name="digits", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Register", exact=True)).to_have_count(0)
    page.goto(f"{env.server.url}/models/digits")
    expect(page.get_by_role("heading", name="Alias history")).to_be_visible()
    expect(page.locator("main form")).to_have_count(0)
    page.goto(f"{env.server.url}/models/digits/latest")
    expect(page.get_by_role("heading", name="Model card", exact=True)).to_be_visible()
    expect(page.locator("main form")).to_have_count(0)
    csrf = csrf_of(page)  # the sign-out form's: a valid token of this session

    with env.api(env.member) as api:
        before = api.get(f"{API}/models/digits").json()
    with browser_client(env.server, context) as raw:
        for path, form in [
            ("/models/register", {"job": env.jobs[0], "name": "stolen"}),
            ("/models/digits/aliases", {"alias": "production", "version": "1"}),
            ("/models/digits/aliases/production/remove", {}),
            ("/models/digits/latest/delete", {"confirm": "yes"}),
        ]:
            refused = raw.post(path, data={"csrf": csrf, **form})
            assert refused.status_code == 403, (path, refused.text)
            assert "text/html" in refused.headers["content-type"]
        without = raw.post("/models/digits/latest/delete", data={"confirm": "yes"})
        assert without.status_code == 403  # and no CSRF token at all
    with env.api(env.member) as api:
        assert api.get(f"{API}/models/digits").json() == before
        assert api.get(f"{API}/models/stolen").status_code == 404


def test_another_tenant_sees_none_of_the_models(env: Env, page: Page) -> None:
    sign_in(page, env.server, env.other)
    page.goto(f"{env.server.url}/models")
    expect(page.get_by_text("No model is registered yet.")).to_be_visible()
    for path in ("/models/digits", "/models/digits/2", "/models/digits/2/files/model.onnx"):
        response = page.goto(f"{env.server.url}{path}")
        assert response is not None and response.status == 404, path
        expect(page.get_by_text("model 'digits' not found")).to_be_visible()
    # Registering tenant A's job from tenant B: the job is not found.
    page.goto(f"{env.server.url}/models")
    page.get_by_label("Job id").fill(env.jobs[0])
    page.get_by_label("Model name").fill("taken")
    page.get_by_role("button", name="Register", exact=True).click()
    expect(page.get_by_text(f"job '{env.jobs[0]}' not found")).to_be_visible()
