"""The whole journey through the browser, as a person: sign in, upload a zip of digits, see
its samples, start CNN jobs from the form, watch a curve grow without reloading, see the
confusion matrix, compare two jobs, register, move an alias, deploy, try it with a PNG and
get the right label, delete the deployment; then a text classifier, tried with typed text
(its label and highlighted words).

Data: scikit-learn's bundled digits (nimbus.demo_data), no download.
"""

from __future__ import annotations

import re
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Dialog, Page, expect

from nimbus.demo_data import write_digits_zip
from tests.api.conftest import csv_bytes
from tests.console.conftest import sign_in
from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def journey_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The jobs run one after another here, each with the two cores.
    home = tmp_path_factory.mktemp("journey") / "home"
    with ServerProcess(home, env={"NIMBUS_CAPACITY_CPUS": "2"}) as server:
        yield server
        # A server run by a program leaves its replicas serving when it stops (for the next
        # start to adopt): the deployments go first, or their replicas outlive the test.
        with server.client() as admin:
            for deployment in admin.get("/api/v1/deployments").json()["deployments"]:
                assert admin.delete(f"/api/v1/deployments/{deployment['name']}").is_success


def digit_png(archive: Path, label: str) -> bytes:
    """One PNG of class ``label`` from the uploaded zip."""
    with zipfile.ZipFile(archive) as zf:
        name = sorted(n for n in zf.namelist() if n.startswith(f"{label}/"))[0]
        return zf.read(name)


def upload(page: Page, server: ServerProcess, name: str, path: Path) -> None:
    """Through the upload form with its progress bar, then to the new version's page."""
    page.goto(f"{server.url}/datasets")
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_label("File").set_input_files(str(path))
    page.get_by_role("button", name="Upload").click()
    page.get_by_role("link", name=re.compile(f"{name}:1")).click()
    expect(page.get_by_role("heading", level=1)).to_contain_text(name)


def start_job(
    page: Page,
    server: ServerProcess,
    epochs: int,
    lr: str,
    dataset: str = "digits:1",
    model: str = "cnn",
) -> str:
    page.goto(f"{server.url}/jobs/new")
    page.get_by_label("Dataset").select_option(label=dataset)
    page.get_by_label("Model").select_option(model)
    page.get_by_label("Epochs").fill(str(epochs))
    page.get_by_label("Learning rate").fill(lr)
    page.get_by_role("button", name="Start job").click()
    expect(page).to_have_url(re.compile(r"/jobs/job_[0-9a-f]+$"))
    return page.url.rsplit("/", 1)[1]


def test_the_whole_journey(
    journey_server: ServerProcess,
    page: Page,
    tmp_path: Path,
    shot: Callable[[Page, str], Path],
) -> None:
    server = journey_server
    dialogs: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        dialogs.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    sign_in(page, server, server.admin_token)

    # Data: a zip of image folders, through the upload form with its progress bar.
    archive = write_digits_zip(tmp_path / "digits.zip").path
    upload(page, server, "digits", archive)
    samples = page.locator(".samples img")
    expect(samples.first).to_be_visible()
    page.wait_for_function(
        "() => [...document.querySelectorAll('.samples img')]"
        ".every(i => i.complete && i.naturalWidth > 0)"
    )
    shot(page, "journey-dataset")

    # Training: a CNN job from the form lands on its page; watch its curve grow, live.
    first = start_job(page, server, epochs=15, lr="0.002")
    chart = page.locator("#chart-loss")
    marker = page.evaluate("() => (window.__journey = Math.random())")
    points = "Number(document.querySelector('#chart-loss').dataset.points || 0)"
    page.wait_for_function(f"() => {points} >= 1", timeout=120_000)
    seen = int(chart.get_attribute("data-points") or 0)
    page.wait_for_function(f"() => {points} > {seen}", timeout=120_000)
    assert page.evaluate("() => window.__journey") == marker  # no reload happened
    shot(page, "journey-job-running")
    matrix = page.get_by_role("table", name=re.compile("Confusion matrix"))
    expect(matrix).to_be_visible(timeout=180_000)
    expect(page.locator("#job-facts")).to_contain_text("succeeded")
    assert page.evaluate("() => window.__journey") == marker
    shot(page, "journey-job-finished")

    # A second job with another learning rate, to compare.
    second = start_job(page, server, epochs=4, lr="0.01")
    expect(page.get_by_role("table", name=re.compile("Confusion matrix"))).to_be_visible(
        timeout=180_000
    )

    # Compare the two jobs from the list.
    page.goto(f"{server.url}/jobs")
    page.get_by_label(f"Select {first}").check()
    page.get_by_label(f"Select {second}").check()
    page.get_by_role("button", name="Compare").click()
    expect(page.get_by_role("heading", name="Compare 2 jobs")).to_be_visible()
    expect(page.get_by_role("table", name=re.compile("Confusion matrix"))).to_have_count(2)
    shot(page, "journey-compare")

    # Register both, then move the alias production from one version to the other.
    for job in (first, second):
        page.goto(f"{server.url}/models")
        page.get_by_label("Job id").fill(job)
        page.get_by_label("Model name").fill("digits-cnn")
        page.get_by_role("button", name="Register").click()
        expect(page.get_by_role("heading", level=1)).to_contain_text("digits-cnn version")
    page.goto(f"{server.url}/models/digits-cnn")
    for version in ("2", "1"):
        page.get_by_role("combobox", name="Alias").fill("production")
        page.get_by_label("Version", exact=True).select_option(version)
        page.get_by_role("button", name="Move alias", exact=True).click()
    expect(page.get_by_text("moved 2 → 1")).to_be_visible()
    shot(page, "journey-model")

    # Deploy the production version and try it with a PNG of a 7.
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Deployments").click()
    page.get_by_label("Name", exact=True).fill("digits")
    page.get_by_label("Model version", exact=True).fill("digits-cnn@production")
    page.get_by_role("button", name="Deploy").click()
    expect(page.get_by_role("heading", name="Deployment digits")).to_be_visible()
    expect(page.locator(".state-ready").first).to_be_visible(timeout=120_000)
    seven = tmp_path / "seven.png"
    seven.write_bytes(digit_png(archive, "7"))
    page.get_by_label("Image", exact=True).set_input_files(str(seven))
    page.get_by_role("button", name="Predict").click()
    label = page.locator("#try-result output[data-label]")
    expect(label).to_have_text("7", timeout=60_000)
    expect(page.get_by_role("img", name=re.compile("Heat map"))).to_be_visible()
    shot(page, "journey-try-it")

    # And take it down.
    page.get_by_role("link", name="Delete…").click()
    page.get_by_role("button", name="Delete digits").click()
    expect(page.get_by_role("heading", name="Deployments")).to_be_visible()
    expect(page.get_by_role("link", name="digits", exact=True)).to_have_count(0)

    # A text classifier too: typed text in, the label and the highlighted words out.
    reviews = tmp_path / "reviews.csv"
    reviews.write_bytes(csv_bytes("journey", rows=80))
    upload(page, server, "reviews", reviews)
    start_job(page, server, epochs=10, lr="0.05", dataset="reviews:1", model="text")
    expect(page.locator("#job-facts")).to_contain_text("succeeded", timeout=180_000)
    text_job = page.url.rsplit("/", 1)[1]
    page.goto(f"{server.url}/models")
    page.get_by_label("Job id").fill(text_job)
    page.get_by_label("Model name").fill("reviews-text")
    page.get_by_role("button", name="Register").click()
    page.goto(f"{server.url}/deployments")
    page.get_by_label("Name", exact=True).fill("reviews")
    page.get_by_label("Model version", exact=True).fill("reviews-text:1")
    page.get_by_role("button", name="Deploy").click()
    expect(page.locator(".state-ready").first).to_be_visible(timeout=120_000)
    page.get_by_label("Text", exact=True).fill("review number 7 was great")
    page.get_by_role("button", name="Predict").click()
    expect(label).to_have_text("pos", timeout=60_000)
    expect(page.get_by_label("Highlighted tokens").locator("mark").first).to_be_visible()
    shot(page, "journey-try-it-text")
    assert dialogs == []
