"""The admins' pages in a real browser: Tokens (a new secret shown once and never again,
revoke) and Audit (the console's own posts, newest first, filtered and paged); members and
viewers refused; another tenant's tokens out of sight; names shown as text."""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

import httpx
from playwright.sync_api import Dialog, Page, expect

from tests.api.conftest import API, make_token
from tests.console.conftest import csrf_of, session_cookie, sign_in
from tests.helpers import ServerProcess

HOSTILE = '<script>alert(1)</script> "><img src=x onerror=alert(1)>'


def forge(server: ServerProcess, page: Page, path: str, data: dict[str, str]) -> httpx.Response:
    """A post with the browser's cookie and its valid CSRF token, made outside the page."""
    cookie = str(session_cookie(page.context)["value"])
    with httpx.Client(base_url=server.url, cookies={"nimbus_session": cookie}) as raw:
        return raw.post(path, data={"csrf": csrf_of(page), **data})


def test_a_new_token_is_shown_once_then_revoked(
    shared_server: ServerProcess, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    dialogs: list[str] = []

    def seen(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", seen)
    sign_in(page, shared_server, shared_server.admin_token)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Tokens").click()
    page.get_by_label("Name").fill(HOSTILE)
    page.get_by_label("Role").select_option("viewer")
    page.get_by_label("Expires in (days)").fill("7")
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_role("heading", name=re.compile("created"))).to_contain_text(HOSTILE)
    secret = page.get_by_label("Secret").input_value()
    assert secret.startswith("nbt_")
    expect(page.get_by_text("shown only this once")).to_be_visible()
    with shared_server.client(secret) as made:  # the secret works, as a viewer
        assert made.get(f"{API}/whoami").json()["role"] == "viewer"
    shot(page, "token-created")
    # Never again: the list, a reload of it, the audit log, the overview.
    page.goto(f"{shared_server.url}/tokens")
    row = page.get_by_role("row").filter(has_text=HOSTILE)
    expect(row).to_contain_text("viewer")
    expect(row).not_to_contain_text("never")  # it expires
    for path in ("/tokens", "/audit", "/"):
        page.goto(f"{shared_server.url}{path}")
        assert secret not in page.content(), path
    expect(page.locator("img[src=x]")).to_have_count(0)
    # Revoke, confirmed on a page of its own.
    page.goto(f"{shared_server.url}/tokens")
    shot(page, "tokens")
    page.get_by_role("link", name=f"Revoke {HOSTILE}").click()
    page.get_by_role("button", name=f"Revoke {HOSTILE}").click()
    expect(page).to_have_url(re.compile(r"/tokens$"))
    expect(page.get_by_role("row").filter(has_text=HOSTILE)).not_to_contain_text("Revoke")
    with shared_server.client(secret) as made:
        assert made.get(f"{API}/whoami").status_code == 401
    # A bad expiry or role is a 400 that names it.
    assert (
        forge(shared_server, page, "/tokens", {"name": "x", "expires_days": "0"}).status_code == 400
    )
    answer = forge(shared_server, page, "/tokens", {"name": "x", "role": "root"})
    assert answer.status_code == 400 and "invalid role" in answer.text
    assert dialogs == []


def test_the_audit_log_lists_the_consoles_posts_filtered_and_paged(
    shared_server: ServerProcess, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    sign_in(page, shared_server, shared_server.admin_token)
    page.goto(f"{shared_server.url}/tokens")
    page.get_by_label("Name").fill("audited")
    page.get_by_role("button", name="Create token").click()
    expect(page.get_by_label("Secret")).to_be_visible()
    with shared_server.client() as admin:  # 60 refused calls: more than a page
        for i in range(60):
            assert admin.delete(f"{API}/tokens/gone{i}").status_code == 404
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Audit").click()
    table = page.get_by_role("table")
    expect(table.get_by_role("row").nth(1)).to_contain_text("/tokens/gone59")
    expect(table.get_by_role("row").nth(1)).to_contain_text("404")
    # Only the console's own token creation (its answer a page: 200), by action and status.
    page.get_by_label("Action").select_option("POST")
    page.get_by_label("Status").fill("200")
    page.get_by_role("button", name="Filter").click()
    first = table.get_by_role("row").nth(1)
    expect(first).to_contain_text("/tokens")
    expect(first).to_contain_text("200")
    expect(first).to_contain_text("admin")  # who: the bootstrap admin token's name
    shot(page, "audit")
    # Paging: 50 a page, newest first; the next page goes on with older events.
    page.goto(f"{shared_server.url}/audit")
    expect(table.get_by_role("row")).to_have_count(51)
    expect(table.get_by_role("row").nth(50)).to_contain_text("/tokens/gone10")
    page.get_by_role("link", name="Older").click()
    expect(page).to_have_url(re.compile(r"before=\d+"))
    expect(table.get_by_role("row").nth(1)).to_contain_text("/tokens/gone9")
    page.get_by_role("link", name="Newest").click()
    expect(table.get_by_role("row").nth(1)).to_contain_text("/tokens/gone59")
    assert page.goto(f"{shared_server.url}/audit?status=abc").status == 400  # type: ignore[union-attr]


def test_members_and_viewers_are_refused_and_tenants_kept_apart(
    shared_server: ServerProcess, page: Page
) -> None:
    for role in ("member", "viewer"):
        page.context.clear_cookies()
        sign_in(page, shared_server, make_token(shared_server, role))
        nav = page.get_by_role("navigation", name="Main")
        expect(nav.get_by_role("link", name="Tokens")).to_have_count(0)
        expect(nav.get_by_role("link", name="Audit")).to_have_count(0)
        for path in ("/tokens", "/audit"):
            assert page.goto(f"{shared_server.url}{path}").status == 403  # type: ignore[union-attr]
        assert (
            forge(shared_server, page, "/tokens", {"name": "mine", "role": "admin"}).status_code
            == 403
        )
    # Tenant B's admin sees only B's tokens, and A's are not found.
    with shared_server.client() as admin:
        a_token = admin.post(f"{API}/tokens", json={"name": "a-only"}).json()
    page.context.clear_cookies()
    sign_in(page, shared_server, make_token(shared_server, "admin", "bravo"))
    page.goto(f"{shared_server.url}/tokens")
    expect(page.get_by_role("cell", name="admin-bravo (this session's)")).to_be_visible()
    expect(page.get_by_text("a-only")).to_have_count(0)
    response = page.goto(f"{shared_server.url}/tokens/{a_token['id']}/revoke")
    assert response is not None and response.status == 404
    assert forge(shared_server, page, f"/tokens/{a_token['id']}/revoke", {}).status_code == 404
    page.goto(f"{shared_server.url}/audit")
    expect(page.get_by_text("a-only")).to_have_count(0)
    with shared_server.client(a_token["token"]) as still:
        assert still.get(f"{API}/whoami").status_code == 200
