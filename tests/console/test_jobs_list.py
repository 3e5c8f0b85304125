"""The jobs list (filters, a metric's best value as the sort, paging) and the form that starts
a job, in a real browser against a real server whose scheduler is off (jobs stay queued);
metric points go straight into its store, as a running job's reports would."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import BrowserContext, Dialog, Page, expect
from sqlalchemy import insert

from nimbus.db import jobs as repo
from nimbus.db import tenants
from nimbus.db.engine import Database
from nimbus.db.tables import JobMetricRow
from nimbus.jobs.domain import JobSpec
from tests.api.conftest import API, csv_bytes, make_token
from tests.console.conftest import csrf_of, session_cookie, sign_in
from tests.helpers import ServerProcess

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(
        tmp_path_factory.mktemp("jobs-list") / "home", env={"NIMBUS_SCHEDULER_ENABLED": "false"}
    )
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def jobs(server: ServerProcess) -> dict[str, str]:
    """Three text jobs on ``reviews`` (one cancelled) with val_accuracy series, and a cnn
    job whose params hold markup (put in through the store: the API refuses such params)."""
    ids: dict[str, str] = {}
    with server.client() as admin:
        uploaded = admin.post(
            f"{API}/datasets/reviews/versions", params={"filename": "r.csv"}, content=csv_bytes()
        )
        assert uploaded.status_code == 201, uploaded.text
        for name in ("low", "high", "gone"):
            body = {"dataset": "reviews", "model": "text", "params": {"epochs": 2}}
            created = admin.post(f"{API}/jobs", json=body)
            assert created.status_code == 201, created.text
            ids[name] = created.json()["id"]
        assert admin.post(f"{API}/jobs/{ids['gone']}/cancel").status_code == 200
    db = Database(f"sqlite:///{server.home / 'nimbus.db'}")
    try:
        with db.session(write=True) as session:
            tenant = tenants.get_by_name(session, "default")
            assert tenant is not None
            spec = JobSpec(model="cnn", dataset="photos:1", params={"note": SCRIPT, "tag": IMG})
            ids["markup"] = repo.submit(session, tenant.id, spec, datetime.now(UTC)).id
            points = {"low": [0.4, 0.6], "high": [0.9, 0.5], "gone": [0.3]}
            session.execute(
                insert(JobMetricRow),
                [
                    {
                        "job_id": ids[name],
                        "attempt_number": 1,
                        "step": step,
                        "name": "val_accuracy",
                        "value": value,
                        "created_at": datetime.now(UTC),
                    }
                    for name, values in points.items()
                    for step, value in enumerate(values, start=1)
                ],
            )
    finally:
        db.dispose()
    return ids


def watch_dialogs(page: Page) -> list[str]:
    """The messages of any dialog a script opens (none must: markup is shown as text)."""
    seen: list[str] = []

    def record(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", record)
    return seen


def rows(page: Page) -> list[str]:
    """The job ids of the table's rows, top to bottom."""
    return page.locator("#jobs-table tbody tr td:nth-child(2) a").all_inner_texts()


def test_filter_sort_by_a_metric_and_page(
    server: ServerProcess, jobs: dict[str, str], page: Page, shot: Callable[[Page, str], Path]
) -> None:
    dialogs = watch_dialogs(page)
    sign_in(page, server, server.admin_token)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Jobs").click()
    expect(page.get_by_role("heading", name="Jobs", exact=True)).to_be_visible()
    assert rows(page) == [jobs["markup"], jobs["gone"], jobs["high"], jobs["low"]]
    # The markup in a job's params is text: no element made of it, no script ran.
    expect(page.get_by_text(f"note={SCRIPT}")).to_be_visible()
    expect(page.locator("img[src=x]")).to_have_count(0)
    shot(page, "jobs-list")

    # Sort by the metric's best value: "high" (0.9 at its first epoch) first; its column
    # shows best values, the job without the metric last.
    page.get_by_label("Sort by").select_option("metric")
    expect(page).to_have_url(
        re.compile(r"/jobs\?metric=best%3Aval_accuracy&sort=metric&order=desc$")
    )
    expect(page.locator("#jobs-table tbody tr").first).to_contain_text(jobs["high"])
    assert rows(page) == [jobs["high"], jobs["low"], jobs["gone"], jobs["markup"]]
    expect(page.locator("#jobs-table tbody tr").first).to_contain_text("0.9")
    settled(page)
    page.get_by_label("Metric").select_option("last:val_accuracy")
    expect(page).to_have_url(re.compile(r"metric=last%3Aval_accuracy"))
    expect(page.locator("#jobs-table tbody tr").first).to_contain_text(jobs["low"])

    # Filters: by state, then by model; the address keeps them (a bookmark opens the same).
    settled(page)
    page.get_by_label("State").select_option("cancelled")
    expect(page).to_have_url(re.compile(r"state=cancelled"))
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    assert rows(page) == [jobs["gone"]]
    settled(page)
    page.get_by_label("State").select_option("")
    expect(page).not_to_have_url(re.compile(r"state="))
    settled(page)
    page.get_by_label("Model").fill("cnn")
    page.get_by_role("button", name="Apply").click()
    expect(page.locator("#jobs-table tbody tr")).to_have_count(1)
    assert rows(page) == [jobs["markup"]]
    expect(page).to_have_url(re.compile(r"model=cnn"))
    page.goto(page.url)  # without htmx: the whole page, the same rows
    assert rows(page) == [jobs["markup"]]

    assert not dialogs


def settled(page: Page) -> None:
    """Wait until htmx has wired up the table it last swapped in: it does so in its settle
    step, after the swap, and a field changed before then sends nothing (the run alone on a
    quiet machine changed the state filter that soon, and the list never followed)."""
    expect(page.locator(".htmx-added, .htmx-settling")).to_have_count(0)


def test_paging_moves_to_the_next_page(
    server: ServerProcess, jobs: dict[str, str], page: Page
) -> None:
    sign_in(page, server, server.admin_token)
    page.goto(f"{server.url}/jobs?per_page=2")
    expect(page.get_by_text("4 jobs · page 1 of 2")).to_be_visible()
    assert rows(page) == [jobs["markup"], jobs["gone"]]
    page.get_by_role("link", name="Next page").click()
    expect(page.get_by_text("4 jobs · page 2 of 2")).to_be_visible()
    assert rows(page) == [jobs["high"], jobs["low"]]
    expect(page).to_have_url(re.compile(r"per_page=2&page=2$"))  # pushed: a bookmark
    expect(page.get_by_role("link", name="Next page")).to_have_count(0)
    page.get_by_role("link", name="Previous page").click()
    expect(page.get_by_text("4 jobs · page 1 of 2")).to_be_visible()


def test_start_a_job_through_the_form(
    server: ServerProcess, jobs: dict[str, str], page: Page, shot: Callable[[Page, str], Path]
) -> None:
    dialogs = watch_dialogs(page)
    sign_in(page, server, make_token(server, "member"))
    page.goto(f"{server.url}/jobs")
    page.get_by_role("link", name="Start a job").first.click()
    expect(page.get_by_role("heading", name="Start a job")).to_be_visible()
    page.get_by_label("Dataset").select_option("reviews:1")
    page.get_by_label("Model").select_option("text")
    page.get_by_label("Epochs").fill("3")
    page.get_by_label("More parameters").fill(f"optimizer=sgd\nbogus={IMG}")
    page.get_by_label("Memory").fill("512M")
    shot(page, "job-new")
    page.get_by_role("button", name="Start job").click()
    # The service's 400, on the form as typed; the markup in it is text.
    expect(page.get_by_role("alert")).to_contain_text("unknown parameter 'bogus'")
    expect(page.get_by_label("More parameters")).to_have_value(f"optimizer=sgd\nbogus={IMG}")
    expect(page.get_by_label("Epochs")).to_have_value("3")
    expect(page.get_by_label("Dataset")).to_have_value("reviews:1")
    expect(page.locator("img[src=x]")).to_have_count(0)
    page.get_by_label("Epochs").fill(IMG)
    page.get_by_label("More parameters").fill("optimizer=sgd")
    page.get_by_role("button", name="Start job").click()
    expect(page.get_by_role("alert")).to_contain_text(f"invalid parameter 'epochs' = '{IMG}'")
    expect(page.locator("img[src=x]")).to_have_count(0)
    page.get_by_label("Epochs").fill("3")
    page.get_by_role("button", name="Start job").click()
    expect(page).to_have_url(re.compile(r"/jobs/job_[0-9a-f]+$"))
    job_id = page.url.rsplit("/", 1)[1]
    with server.client() as admin:
        job = admin.get(f"{API}/jobs/{job_id}").json()
    assert job["model"] == "text" and job["dataset"]["name"] == "reviews"
    assert job["params"]["epochs"] == 3 and job["params"]["optimizer"] == "sgd"
    assert job["resources"]["memory"] == 512 * 2**20
    assert not dialogs


def test_a_viewer_sees_no_form_and_a_forged_post_is_refused(
    server: ServerProcess, jobs: dict[str, str], page: Page, context: BrowserContext
) -> None:
    sign_in(page, server, make_token(server, "viewer"))
    page.goto(f"{server.url}/jobs")
    expect(page.locator("#jobs-table tbody tr").first).to_be_visible()
    expect(page.get_by_role("link", name="Start a job")).to_have_count(0)
    csrf = csrf_of(page)
    cookie = str(session_cookie(context)["value"])
    with server.client() as admin:
        before = len(admin.get(f"{API}/jobs").json()["jobs"])
    with httpx.Client(base_url=server.url, cookies={"nimbus_session": cookie}) as raw:
        assert raw.get("/jobs/new").status_code == 403
        form = {"csrf": csrf, "dataset": "reviews", "model": "text", "epochs": "1"}
        forged = raw.post("/jobs/new", data=form, follow_redirects=False)
        assert forged.status_code == 403, forged.text
        assert "viewer" in forged.text or "role" in forged.text
        no_token = raw.post("/jobs/new", data={**form, "csrf": ""}, follow_redirects=False)
        assert no_token.status_code == 403
    with server.client() as admin:
        assert len(admin.get(f"{API}/jobs").json()["jobs"]) == before


def test_another_tenant_sees_none_of_the_jobs(
    server: ServerProcess, jobs: dict[str, str], page: Page
) -> None:
    sign_in(page, server, make_token(server, "member", "globex"))
    page.goto(f"{server.url}/jobs?sort=metric&metric=best:val_accuracy")
    expect(page.get_by_text("0 jobs · page 1 of 1")).to_be_visible()
    for job_id in jobs.values():
        expect(page.get_by_text(job_id)).to_have_count(0)
    page.goto(f"{server.url}/jobs?model=text&state=queued")
    expect(page.get_by_text("No job matches.")).to_be_visible()
