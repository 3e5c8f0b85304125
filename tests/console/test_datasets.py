"""The console's datasets: uploading through the browser (with and without scripts), a
version's page (histograms, sample images and rows, the jobs that read it), deleting a
version, and what viewers and other tenants may see."""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Dialog, Page, expect

from tests.api.conftest import csv_bytes, make_token
from tests.console.conftest import csrf_of, session_cookie, sign_in
from tests.helpers import ServerProcess
from tests.helpers_photos import photo_members, photo_zip

API = "/api/v1"
LIMIT = 1024 * 1024  # the module's server takes uploads up to 1 MiB
HOSTILE = ["<script>alert(1)</script>", '"><img src=x onerror=alert(1)>']


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the module; jobs stay queued (nothing trains)."""
    proc = ServerProcess(
        tmp_path_factory.mktemp("console-datasets") / "home",
        env={"NIMBUS_SCHEDULER_ENABLED": "false", "NIMBUS_MAX_UPLOAD_BYTES": str(LIMIT)},
    )
    proc.start()
    yield proc
    proc.stop()


def browser_client(server: ServerProcess, context: BrowserContext) -> httpx.Client:
    """An HTTP client holding the browser's session cookie: posts a page could forge."""
    cookie = str(session_cookie(context)["value"])
    return httpx.Client(
        base_url=server.url, cookies={"nimbus_session": cookie}, follow_redirects=False
    )


def upload_csv(server: ServerProcess, name: str, data: bytes, token: str | None = None) -> None:
    with server.client(token) as client:
        response = client.post(
            f"{API}/datasets/{name}/versions", params={"filename": "data.csv"}, content=data
        )
    assert response.status_code == 201, response.text


def hostile_csv() -> bytes:
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["text", "label"])
    for i in range(40):
        writer.writerow([f"{HOSTILE[i % 2]} number {i}", HOSTILE[i % 2]])
    return out.getvalue().encode()


def test_a_zip_uploaded_through_the_form_shows_its_samples_histograms_and_jobs(
    server: ServerProcess, page: Page, tmp_path: Path, shot: Callable[[Page, str], Path]
) -> None:
    sign_in(page, server, server.admin_token)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Datasets").click()
    expect(page.get_by_role("heading", name="Datasets", exact=True)).to_be_visible()
    page.get_by_label("Name").fill("photos")
    page.get_by_label("File").set_input_files(photo_zip(tmp_path / "photos.zip", photo_members(6)))
    page.get_by_role("button", name="Upload").click()
    status = page.get_by_role("status")
    expect(status).to_contain_text("Uploaded as photos:1")
    bar = page.get_by_label("Upload progress")
    done = bar.evaluate("el => [el.value, el.max]")
    assert done[0] == done[1] > 1000  # the whole zip went up

    with server.client() as admin:
        job = admin.post(f"{API}/jobs", json={"dataset": "photos", "model": "cnn"})
        assert job.status_code == 201, job.text
    job_id = job.json()["id"]

    status.get_by_role("link", name="photos:1").click()
    expect(page.get_by_role("heading", name="photos:1")).to_be_visible()
    train = page.get_by_role("table", name="Classes in train")
    expect(train.get_by_role("row")).to_have_count(3)  # the header, red, blue
    expect(train.get_by_role("cell", name="blue", exact=True)).to_be_visible()
    images = page.locator(".samples img")
    expect(images).to_have_count(10)  # the 5 of each class in the train split's head
    images.last.scroll_into_view_if_needed()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.samples img')].every(i => i.complete)"
    )
    widths = images.evaluate_all("els => els.map(e => e.naturalWidth)")
    assert all(w > 0 for w in widths), widths
    expect(page.locator(".samples figcaption", has_text="red")).to_have_count(5)
    served = page.request.get(f"{server.url}/datasets/photos/1/samples/0.png")
    assert served.status == 200 and served.headers["content-type"] == "image/png"
    assert served.body().startswith(b"\x89PNG")
    jobs = page.get_by_role("region", name="Jobs that used this version")
    expect(jobs.get_by_role("link", name=job_id)).to_have_attribute("href", f"/jobs/{job_id}")
    shot(page, "dataset-version")

    page.get_by_role("link", name="Datasets", exact=True).first.click()
    row = page.get_by_role("row", name=re.compile(r"^photos "))
    for text in ("photos:1", "image-classification", "image-folder"):
        expect(row).to_contain_text(text)
    shot(page, "datasets")
    row.get_by_role("link", name="photos", exact=True).click()
    expect(page.get_by_role("heading", name="photos", exact=True)).to_be_visible()
    expect(page.get_by_role("link", name="Delete version 1")).to_have_attribute(
        "href", "/datasets/photos/1/delete"
    )
    page.go_back()

    # A zip without images: the service's message on the page, and no dataset made.
    (tmp_path / "empty.zip").write_bytes(zipped({"notes/readme.txt": b"no pictures here"}))
    page.get_by_label("Name").fill("empty")
    page.get_by_label("File").set_input_files(tmp_path / "empty.zip")
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("alert")).to_contain_text("it holds no images")
    expect(page.get_by_role("status")).to_be_empty()
    # Over the size limit: refused before the body is read, the limit on the page.
    (tmp_path / "big.zip").write_bytes(b"\0" * (LIMIT + 1))
    page.get_by_label("Name").fill("big")
    page.get_by_label("File").set_input_files(tmp_path / "big.zip")
    page.get_by_role("button", name="Upload").click()
    expect(page.get_by_role("alert")).to_contain_text(f"over the limit of {LIMIT} bytes")
    with server.client() as admin:
        assert admin.get(f"{API}/datasets/empty").status_code == 404
        assert admin.get(f"{API}/datasets/big").status_code == 404


def zipped(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return buffer.getvalue()


def test_the_form_works_without_scripts_and_labels_are_shown_as_text(
    server: ServerProcess, browser: Browser, page: Page, tmp_path: Path
) -> None:
    plain = browser.new_context(java_script_enabled=False)
    try:
        bare = plain.new_page()
        sign_in(bare, server, server.admin_token)
        bare.goto(f"{server.url}/datasets")
        (tmp_path / "junk.csv").write_bytes(b"just one line and no label column\n")
        bare.get_by_label("Name").fill("junk")
        bare.get_by_label("File").set_input_files(tmp_path / "junk.csv")
        with bare.expect_response(re.compile(r"/datasets$")) as answer:
            bare.get_by_role("button", name="Upload").click()
        assert answer.value.status == 400
        expect(bare.get_by_role("alert")).to_contain_text("'junk.csv' has no 'label' column")
        expect(bare.get_by_label("Name")).to_have_value("junk")  # kept for another try
        (tmp_path / "hostile.csv").write_bytes(hostile_csv())
        bare.get_by_label("File").set_input_files(tmp_path / "hostile.csv")
        bare.get_by_label("Name").fill("hostile")
        bare.get_by_role("button", name="Upload").click()
        expect(bare).to_have_url(re.compile(r"/datasets/hostile/1$"))
    finally:
        plain.close()

    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    sign_in(page, server, server.admin_token)
    page.goto(f"{server.url}/datasets/hostile/1")
    rows = page.get_by_role("table", name="Sample rows")
    for text in HOSTILE:
        expect(rows.get_by_role("cell", name=text, exact=True).first).to_be_visible()
        expect(page.get_by_role("table", name="Classes in train")).to_contain_text(text)
    expect(rows.get_by_role("row")).to_have_count(25)  # the header and 12 of each class
    assert page.locator("img[src=x]").count() == 0

    page.get_by_role("link", name="Delete this version").click()
    page.get_by_role("button", name="Delete version 1").click()
    expect(page).to_have_url(re.compile(r"/datasets$"))
    expect(page.get_by_role("link", name="hostile:1")).to_have_count(0)
    with server.client() as admin:
        assert admin.get(f"{API}/datasets/hostile/versions/1").status_code == 404
    assert dialogs == []


def test_a_viewer_sees_no_upload_or_delete_and_forged_posts_are_refused(
    server: ServerProcess, page: Page, context: BrowserContext
) -> None:
    upload_csv(server, "shared", csv_bytes("viewer"))
    sign_in(page, server, make_token(server, "viewer"))
    page.goto(f"{server.url}/datasets")
    expect(page.get_by_role("link", name="shared", exact=True)).to_be_visible()
    expect(page.get_by_role("button", name="Upload")).to_have_count(0)
    page.goto(f"{server.url}/datasets/shared/1")
    expect(page.get_by_role("table", name="Sample rows")).to_be_visible()
    expect(page.get_by_role("link", name=re.compile("Delete"))).to_have_count(0)
    jobs = page.get_by_role("region", name="Jobs that used this version")
    expect(jobs).to_contain_text("No job has used this version yet.")  # photos' job is not
    table = "height,weight,label\n" + "".join(f"{i},{i * 2.5},{i % 2}\n" for i in range(40))
    upload_csv(server, "table", table.encode())
    page.goto(f"{server.url}/datasets/table/latest")
    expect(page.get_by_role("heading", name="table:1")).to_be_visible()
    rows = page.get_by_role("table", name="Sample rows")
    expect(rows.get_by_role("columnheader", name="weight")).to_be_visible()
    expect(rows.get_by_role("row")).to_have_count(25)
    expect(page.get_by_role("region", name="Features").get_by_role("row")).to_have_count(3)
    csrf = csrf_of(page)
    with browser_client(server, context) as forged:
        deleted = forged.post("/datasets/shared/1/delete", data={"csrf": csrf})
        raw = forged.post(
            "/datasets",
            params={"name": "forged", "filename": "a.csv"},
            content=csv_bytes("forged"),
            headers={"X-CSRF-Token": csrf},
        )
        form = forged.post(
            "/datasets",
            data={"csrf": csrf, "name": "forged"},
            files={"file": ("a.csv", csv_bytes("forged"))},
        )
        confirm = forged.get("/datasets/shared/1/delete")
    assert [deleted.status_code, raw.status_code, form.status_code] == [403, 403, 403]
    assert confirm.status_code == 403
    with server.client() as admin:
        assert admin.get(f"{API}/datasets/shared/versions/1").status_code == 200
        assert admin.get(f"{API}/datasets/forged").status_code == 404


def test_another_tenant_sees_none_of_the_datasets(
    server: ServerProcess, page: Page, context: BrowserContext
) -> None:
    upload_csv(server, "private", csv_bytes("tenant-a"))
    sign_in(page, server, make_token(server, "member", "tenant-b"))
    page.goto(f"{server.url}/datasets")
    expect(page.get_by_text("No dataset yet.")).to_be_visible()
    for path in ("/datasets/private", "/datasets/private/1", "/datasets/private/1/samples/0.png"):
        response = page.goto(server.url + path)
        assert response is not None and response.status == 404, path
    with browser_client(server, context) as forged:
        deleted = forged.post("/datasets/private/1/delete", data={"csrf": csrf_of(page)})
    assert deleted.status_code == 404
    with server.client() as admin:
        assert admin.get(f"{API}/datasets/private/versions/1").status_code == 200
