"""A job's page and the comparison of jobs, in a real browser against a real server that
runs real ``mlp`` jobs: the curves grow while the job runs (server-sent events, no reload),
the evaluation and the confusion matrix appear when it ends; cancel, RBAC, tenants, and
hostile labels and params shown as text."""

from __future__ import annotations

import csv
import io
import json
import re
import statistics
import time
from collections.abc import Callable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from playwright.sync_api import Browser, Dialog, Page, expect

from nimbus.api.console.job_views import chart_of
from nimbus.db.engine import Database
from nimbus.db.job_outputs import read_metrics
from tests.api.conftest import API, make_token
from tests.console.conftest import csrf_of, sign_in
from tests.helpers import ServerProcess

SCRIPT_LABEL = "<script>alert(1)</script>"
IMG_LABEL = '"><img src=x onerror=alert(1)>'
FAST = {
    "NIMBUS_SCHEDULER_TICK_SECONDS": "0.1",
    "NIMBUS_CAPACITY_CPUS": "2",
    "NIMBUS_RETRY_BASE_SECONDS": "0.2",
}
# Slow enough to watch: ~0.5-2.5 s an epoch on two busy cores (batch_size 1).
WATCHED = {"epochs": 6, "batch_size": 1, "patience": 0}
OTHER = {"epochs": 3, "batch_size": 4, "lr": 0.01, "patience": 0}
SCRIPT = b"from nimbus import runtime as nr\nprint(nr.params)\n"
# Killed in its first attempt (a signal: retried), succeeds in the second.
FLAKY = b"import os\nif os.environ['NIMBUS_ATTEMPT_NUMBER'] == '1':\n    os.kill(os.getpid(), 9)\n"


def hostile_csv(rows: int = 240) -> bytes:
    """Two informative features; the two classes are named like attacks."""
    rng = np.random.default_rng(7)
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["income", "debt", "label"])
    for _ in range(rows):
        income, debt = rng.normal(0, 1, size=2)
        writer.writerow(
            [f"{income:.4f}", f"{debt:.4f}", [SCRIPT_LABEL, IMG_LABEL][int(income > debt)]]
        )
    return out.getvalue().encode()


class World:
    """Tenant A's member (two real jobs running), A's viewer, and tenant B's member."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.member = make_token(server, "member", "acme")
        self.viewer = make_token(server, "viewer", "acme")
        self.other = make_token(server, "member", "globex")
        self.api = server.client(self.member)
        upload = self.api.post(
            f"{API}/datasets/hostile/versions",
            params={"filename": "hostile.csv"},
            content=hostile_csv(),
        )
        assert upload.status_code in (200, 201), upload.text
        code = self.api.post(f"{API}/code", params={"filename": "job.py"}, content=SCRIPT)
        assert code.status_code == 201, code.text
        self.watched = self.submit(model="mlp", params=WATCHED)
        self.other_job = self.submit(model="mlp", params=OTHER)
        # Both CPUs of the node while the two above hold one each: it waits in the queue.
        self.queued = self.submit(
            model=code.json()["ref"], params={"note": SCRIPT_LABEL, "tag": IMG_LABEL}, cpus=2
        )
        flaky = self.api.post(f"{API}/code", params={"filename": "flaky.py"}, content=FLAKY)
        assert flaky.status_code == 201, flaky.text
        self.flaky = self.submit(model=flaky.json()["ref"], cpus=0.1)

    def submit(self, **body: Any) -> str:
        response = self.api.post(f"{API}/jobs", json={"dataset": "hostile", **body})
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return dict(self.api.get(f"{API}/jobs/{job_id}").json())

    def wait(self, job_id: str, states: tuple[str, ...], timeout: float = 120) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while (job := self.job(job_id))["state"] not in states:
            assert time.monotonic() < deadline, f"{job}\n{self.server.log()[-3000:]}"
            time.sleep(0.1)
        return job


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("jobpage") / "home", env=FAST)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def world(server: ServerProcess) -> World:
    return World(server)


def never_alerts(page: Page) -> list[str]:
    """The messages of any dialog the page opens (an injected alert(1) would be one)."""
    seen: list[str] = []

    def note(dialog: Dialog) -> None:
        seen.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", note)
    return seen


def test_cancel_a_queued_job_and_hostile_params_are_text(
    world: World, page: Page, browser: Browser
) -> None:
    queued = world.queued
    alerts = never_alerts(page)
    sign_in(page, world.server, world.member)
    page.goto(f"{world.server.url}/jobs/{queued}")
    expect(page.locator("#job-state")).to_have_text("queued")
    params = page.get_by_role("table", name="Parameters")
    expect(params.get_by_role("row", name="note")).to_contain_text(SCRIPT_LABEL)
    expect(params.get_by_role("row", name="tag")).to_contain_text(IMG_LABEL)
    assert page.locator("img[src=x]").count() == 0

    # A viewer of the same tenant: no Cancel button, and a forged post is refused.
    viewing = browser.new_context()
    try:
        seen = sign_in(viewing.new_page(), world.server, world.viewer)
        seen.goto(f"{world.server.url}/jobs/{queued}")
        expect(seen.get_by_role("heading", name=f"Job {queued}")).to_be_visible()
        expect(seen.get_by_role("button", name="Cancel")).to_have_count(0)
        forged = seen.request.post(
            f"{world.server.url}/jobs/{queued}/cancel", form={"csrf": csrf_of(seen)}
        )
        assert forged.status == 403
        assert "member" in forged.text()
    finally:
        viewing.close()
    assert world.job(queued)["state"] == "queued"

    page.get_by_role("button", name="Cancel").click()
    expect(page.locator("#job-state")).to_have_text("cancelled")
    expect(page.get_by_role("button", name="Cancel")).to_have_count(0)
    assert world.job(queued)["state"] == "cancelled"
    assert alerts == []


def test_tenant_b_sees_no_page_and_no_stream_of_a_job(world: World, page: Page) -> None:
    sign_in(page, world.server, world.other)
    for path in (
        f"/jobs/{world.watched}",
        f"/jobs/{world.watched}/events",
        f"/jobs/compare?ids={world.watched}&ids={world.other_job}",
    ):
        response = page.request.get(f"{world.server.url}{path}")
        assert response.status == 404, (path, response.status)
        assert world.watched in response.text()
    shown = page.goto(f"{world.server.url}/jobs/{world.watched}")
    assert shown is not None and shown.status == 404
    expect(page.get_by_role("alert")).to_contain_text("not found")


ARRIVALS = """() => {
  window.notReloaded = true;
  window.arrivals = [];
  const el = document.getElementById("chart-loss");
  const seen = () => window.arrivals.push([Date.now(), Number(el.dataset.points || 0)]);
  seen();
  new MutationObserver(seen).observe(el, {attributes: true, attributeFilter: ["data-points"]});
}"""


def loss_points(page: Page) -> int:
    return int(page.locator("#chart-loss").get_attribute("data-points") or 0)


def test_the_curves_grow_live_and_the_evaluation_appears_at_the_end(
    world: World, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    alerts = never_alerts(page)
    sign_in(page, world.server, world.member)
    page.goto(f"{world.server.url}/jobs/{world.watched}")
    expect(page.locator("#chart-loss[data-points]")).to_have_count(1)
    page.evaluate(ARRIVALS)
    at_open = loss_points(page)
    assert json.loads(page.locator("#job-live").inner_text())["live"] is True
    # The job goes on writing: the open page's curves gain points, the log its lines.
    deadline = time.monotonic() + 90
    while loss_points(page) < at_open + 4:  # two epochs more: a train and a val loss each
        assert time.monotonic() < deadline, world.server.log()[-3000:]
        page.wait_for_timeout(100)
    assert page.evaluate("!document.body.dataset.jobEnded")
    expect(page.locator("#job-state")).to_have_text("running")
    expect(page.locator("#job-log")).not_to_be_empty()
    shot(page, "job-running")
    expect(page.locator("body[data-job-ended=true]")).to_have_count(1, timeout=120_000)
    assert page.evaluate("window.notReloaded") is True  # the same document throughout

    expect(page.locator("#job-state")).to_have_text("succeeded")
    expect(page.get_by_role("heading", name="Evaluation")).to_be_visible()
    evaluation = page.get_by_role("table", name="Scores on the test split")
    for name in ("accuracy", "precision_macro", "recall_macro", "f1_macro"):
        expect(evaluation.get_by_role("row", name=name)).to_be_visible()
    matrix = page.get_by_role("table", name="Confusion matrix")
    expect(matrix.locator("caption")).to_contain_text("rows are the true class")
    expect(matrix.get_by_role("rowheader", name=SCRIPT_LABEL)).to_be_visible()
    expect(matrix.get_by_role("columnheader", name=IMG_LABEL)).to_be_visible()
    assert matrix.locator("td[style*=background-color]").count() == 4
    per_class = page.get_by_role("table", name="Per class")
    expect(per_class.get_by_role("rowheader", name=IMG_LABEL)).to_be_visible()
    expect(page.locator("#attempts li")).to_have_count(1)
    expect(page.locator("#artifacts")).to_be_visible()
    assert page.locator("img[src=x]").count() == 0 and alerts == []
    shot(page, "job-finished")

    final = loss_points(page)
    db = Database(f"sqlite:///{world.server.home / 'nimbus.db'}")
    try:
        with db.session() as session:
            posted = [m for m in read_metrics(session, world.watched) if chart_of(m.name) == "loss"]
    finally:
        db.dispose()
    assert final == len(posted)
    report_latency(page.evaluate("window.arrivals"), posted, at_open)


def report_latency(arrivals: list[list[int]], posted: list[Any], at_open: int) -> None:
    """Seconds from a loss point's post (the server's row time) to its drawing in the open
    page (the chart's point count reaching it), for the points posted after the page opened."""
    posted = sorted(posted, key=lambda m: m.created_at)
    latencies = []
    shown = at_open
    for when, count in arrivals:
        for index in range(shown, count):
            made = posted[index].created_at.replace(tzinfo=UTC).timestamp()
            latencies.append(when / 1000 - made)
        shown = max(shown, count)
    if latencies:
        print(
            f"\nmetric post -> open page: {len(latencies)} points, median "
            f"{statistics.median(latencies):.3f} s, max {max(latencies):.3f} s"
        )
        assert max(latencies) < 30  # generous: the figure is reported, not asserted


def test_compare_two_jobs(world: World, page: Page, shot: Callable[[Page, str], Path]) -> None:
    for job_id in (world.watched, world.other_job):
        assert world.wait(job_id, ("succeeded", "failed", "cancelled"))["state"] == "succeeded"
    sign_in(page, world.server, world.member)
    page.goto(f"{world.server.url}/jobs/compare?ids={world.watched}&ids={world.other_job}")
    expect(page.get_by_role("heading", name="Compare 2 jobs")).to_be_visible()
    loss = page.locator('[data-metric="val_loss"]')
    expect(loss).to_have_attribute("data-points", str(WATCHED["epochs"] + OTHER["epochs"]))
    spec = json.loads(page.locator(f"#{loss.get_attribute('data-chart')}").inner_text())
    assert [s["label"] for s in spec["series"]] == [world.watched, world.other_job]
    params = page.get_by_role("table", name="Parameter")
    expect(params.locator("tr.differs", has_text="params.epochs")).to_have_count(1)
    expect(params.locator("tr:not(.differs)", has_text="model")).to_have_count(1)
    metrics = page.get_by_role("table", name="Metric")
    figures = metrics.locator("th[scope=row]")
    expect(figures.filter(has_text=re.compile(r"^accuracy"))).to_have_count(1)
    expect(figures.filter(has_text="val_loss (best)")).to_have_count(1)
    expect(page.locator("table.heat")).to_have_count(2)
    expect(
        page.locator("table.heat").first.get_by_role("rowheader", name=IMG_LABEL)
    ).to_be_visible()
    assert page.locator("img[src=x]").count() == 0
    shot(page, "job-compare")

    # A job retried once: its attempts timeline says why.
    flaky = world.wait(world.flaky, ("succeeded", "failed"))
    assert flaky["state"] == "succeeded", (
        flaky,
        world.api.get(f"{API}/jobs/{world.flaky}/logs").text,
    )
    page.goto(f"{world.server.url}/jobs/{world.flaky}")
    attempts = page.locator("#attempts li")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_contain_text("ended: signaled, signal 9")
    expect(attempts.nth(0)).to_contain_text("Retried because the attempt ended with signaled")
    expect(attempts.nth(1)).to_contain_text("ended: succeeded, exit code 0")

    one = page.request.get(f"{world.server.url}/jobs/compare?ids={world.watched}")
    assert one.status == 400 and "compare 2-5 jobs" in one.text()
    twice = page.request.get(
        f"{world.server.url}/jobs/compare?ids={world.watched}&ids={world.watched}"
    )
    assert twice.status == 400


def test_the_event_stream_sends_only_what_is_new(world: World, page: Page) -> None:
    """A finished job's stream, resumed from where the page stood, sends nothing old and
    ends; a bad Last-Event-ID is a 400."""
    # Its own wait: it does not lean on an earlier test having waited for the job.
    assert world.wait(world.other_job, ("succeeded", "failed", "cancelled"))["state"] == "succeeded"
    sign_in(page, world.server, world.member)
    page.goto(f"{world.server.url}/jobs/{world.other_job}")
    live = json.loads(page.locator("#job-live").inner_text())
    assert live["live"] is False and live["metric_after"] > 0
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    with httpx.Client(base_url=world.server.url, cookies=cookies, timeout=30) as raw:
        events = raw.get(live["events"], params={"log": 0, "metric": live["metric_after"]})
        assert events.status_code == 200
        assert "event: metrics" not in events.text and "event: log" in events.text
        assert events.text.rstrip().splitlines()[-2] == "event: end"
        bad = raw.get(live["events"], headers={"Last-Event-ID": "x"})
        assert bad.status_code == 400 and "Last-Event-ID" in bad.text
        took = []
        for _ in range(5):  # reported, not asserted (bench/console.py owns the budget)
            start = time.perf_counter()
            assert raw.get(f"/jobs/{world.watched}").status_code == 200
            took.append(time.perf_counter() - start)
        print(f"\nfinished job's page: median {statistics.median(took) * 1000:.0f} ms of 5")
