"""Signing in and out of the console, sessions, CSRF, and what a page may never show."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import BrowserContext, Page, expect

from tests.api.conftest import make_token
from tests.console.conftest import csrf_of, session_cookie, sign_in
from tests.helpers import ServerProcess

NAV = ["Datasets", "Jobs", "Studies", "Models", "Deployments"]


def browser_client(server: ServerProcess, context: BrowserContext) -> httpx.Client:
    """An HTTP client holding the browser's session cookie: posts a page could forge."""
    cookie = session_cookie(context)
    return httpx.Client(
        base_url=server.url,
        cookies={"nimbus_session": str(cookie["value"])},
        follow_redirects=False,
        timeout=30,
    )


def test_sign_in_shows_the_overview_and_navigation(
    shared_server: ServerProcess, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    page.goto(f"{shared_server.url}/?from=test")
    expect(page).to_have_url(re.compile(r"/login\?next=%2F%3Ffrom%3Dtest$"))
    shot(page, "sign-in")
    page.get_by_label("Token").fill(shared_server.admin_token)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/\?from=test$"))  # back where it was going
    nav = page.get_by_role("navigation", name="Main")
    for name in [*NAV, "Tokens", "Audit"]:
        expect(nav.get_by_role("link", name=name, exact=True)).to_be_visible()
    nav.get_by_role("link", name="Overview").click()
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    shot(page, "overview")


def test_the_session_cookie_is_httponly_and_same_site_strict(
    shared_server: ServerProcess, page: Page, context: BrowserContext
) -> None:
    sign_in(page, shared_server, shared_server.admin_token)
    cookie = session_cookie(context)
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert page.evaluate("document.cookie") == ""  # scripts cannot read it
    # The cookie is a session's secret, not the API token.
    assert shared_server.admin_token not in str(cookie["value"])


def test_a_wrong_token_is_refused_with_a_message(shared_server: ServerProcess, page: Page) -> None:
    page.goto(f"{shared_server.url}/login")
    page.get_by_label("Token").fill("nbt_" + "x" * 43)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_role("alert")).to_contain_text("invalid token")
    expect(page.get_by_role("navigation", name="Main")).to_have_count(0)


def test_sign_out_ends_the_session(
    shared_server: ServerProcess, page: Page, context: BrowserContext
) -> None:
    sign_in(page, shared_server, shared_server.admin_token)
    cookie = str(session_cookie(context)["value"])
    page.get_by_role("button", name="Sign out").click()
    expect(page.get_by_label("Token")).to_be_visible()
    # The old cookie, replayed, no longer opens anything.
    with httpx.Client(base_url=shared_server.url, cookies={"nimbus_session": cookie}) as raw:
        response = raw.get("/", follow_redirects=False)
    assert response.status_code == 303 and response.headers["location"] == "/login"


def test_a_revoked_token_signs_its_browsers_out(shared_server: ServerProcess, page: Page) -> None:
    token = make_token(shared_server, "member")
    sign_in(page, shared_server, token)
    with shared_server.client() as admin:
        listed = admin.get("/api/v1/tokens").json()["tokens"]
        token_id = next(t["id"] for t in listed if t["name"] == "member-default")
        assert admin.delete(f"/api/v1/tokens/{token_id}").status_code == 200
    page.goto(f"{shared_server.url}/")
    expect(page.get_by_label("Token")).to_be_visible()


def test_a_one_time_link_signs_in_once(shared_server: ServerProcess, page: Page) -> None:
    with shared_server.client() as admin:
        created = admin.post("/api/v1/console/links")
    assert created.status_code == 201, created.text
    path = created.json()["path"]
    assert path.startswith("/login/link?code=ncl_")
    page.goto(shared_server.url + path)
    expect(page.get_by_role("heading", name="Overview")).to_be_visible()
    # Used once; a second browser with the same link is turned away.
    with httpx.Client(base_url=shared_server.url) as other:
        again = other.get(path)
    assert again.status_code == 401
    assert "has been used or has expired" in again.text
    assert "nimbus_session" not in again.headers.get("set-cookie", "")


def test_a_post_without_the_csrf_token_is_refused(
    shared_server: ServerProcess, page: Page, context: BrowserContext
) -> None:
    sign_in(page, shared_server, shared_server.admin_token)
    csrf = csrf_of(page)
    with browser_client(shared_server, context) as forged:
        missing = forged.post("/logout", data={})
        wrong = forged.post("/logout", data={"csrf": "0" * 64})
        foreign = forged.post(
            "/logout", data={"csrf": csrf}, headers={"Origin": "https://evil.example"}
        )
        assert [missing.status_code, wrong.status_code, foreign.status_code] == [403, 403, 403]
        assert "CSRF token is missing or wrong" in missing.text
        assert "another site" in foreign.text
        # The session still works: nothing was done.
        assert forged.get("/").status_code == 200
        assert forged.post("/logout", data={"csrf": csrf}).status_code == 303


def test_the_sign_in_form_refuses_a_post_from_another_site(shared_server: ServerProcess) -> None:
    # Login CSRF: a foreign page posting the attacker's token has no matching form cookie.
    with httpx.Client(base_url=shared_server.url) as raw:
        response = raw.post("/login", data={"token": shared_server.admin_token, "nonce": "x"})
    assert response.status_code == 403
    assert "nimbus_session" not in response.headers.get("set-cookie", "")


def test_sign_in_never_redirects_to_another_site(shared_server: ServerProcess, page: Page) -> None:
    for target in ("//evil.example/x", "https://evil.example/", "/\\evil.example"):
        page.goto(f"{shared_server.url}/login?next={httpx.URL(target)}")
        page.get_by_label("Token").fill(shared_server.admin_token)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("heading", name="Overview")).to_be_visible()
        assert page.url.startswith(shared_server.url)
        page.context.clear_cookies()


def test_a_viewer_sees_no_admin_navigation(shared_server: ServerProcess, page: Page) -> None:
    sign_in(page, shared_server, make_token(shared_server, "viewer"))
    nav = page.get_by_role("navigation", name="Main")
    for name in NAV:
        expect(nav.get_by_role("link", name=name, exact=True)).to_be_visible()
    expect(nav.get_by_role("link", name="Tokens")).to_have_count(0)
    expect(nav.get_by_role("link", name="Audit")).to_have_count(0)
    expect(page.get_by_role("link", name="Start a job")).to_have_count(0)


def test_pages_carry_security_headers_and_no_inline_script(shared_server: ServerProcess) -> None:
    with httpx.Client(base_url=shared_server.url) as raw:
        response = raw.get("/login")
    policy = response.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert response.headers["x-frame-options"] == "DENY"
    # Every script is a file of the console's own (the policy forbids inline ones).
    scripts = re.findall(r"<script([^>]*)>(.*?)</script>", response.text, re.S)
    assert scripts and all('src="/static/' in attrs and not body for attrs, body in scripts)
