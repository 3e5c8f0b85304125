"""The Studies pages in a real browser: the list, a study's trials (a pruned one marked where
it stopped), best trial, optimisation history chart, parameter importances (or why there are
none yet), cancel; a viewer sees no button and is refused, another tenant sees nothing, and a
parameter's value shows as text."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from playwright.sync_api import BrowserContext, Dialog, Page, expect

from nimbus.db import jobs as jobs_repo
from nimbus.db import studies as repo
from nimbus.db import tenants
from nimbus.db.engine import Database
from nimbus.jobs.domain import JobSpec
from nimbus.studies.search import TrialState
from tests.api.conftest import API, make_token
from tests.console.conftest import csrf_of, session_cookie, sign_in
from tests.helpers import ServerProcess
from tests.helpers_models import API_ONLY

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
SPACE = {
    "lr": {"type": "float", "low": 1e-4, "high": 0.1, "log": True},
    "optimizer": {"type": "choice", "options": ["adam", SCRIPT, IMG]},
    "epochs": 3,
}
# (state, lr, optimizer, value, pruned step): five complete trials, one pruned, one running.
TRIALS: list[tuple[TrialState, float, str, float | None, int | None]] = [
    (TrialState.COMPLETE, 0.001, "adam", 0.62, None),
    (TrialState.COMPLETE, 0.01, SCRIPT, 0.81, None),
    (TrialState.PRUNED, 0.0002, IMG, 0.31, 2),
    (TrialState.COMPLETE, 0.05, "adam", 0.74, None),
    (TrialState.COMPLETE, 0.003, IMG, 0.69, None),
    (TrialState.COMPLETE, 0.02, SCRIPT, 0.78, None),
    (TrialState.RUNNING, 0.008, "adam", None, None),
]


def insert_study(home: Path, tenant: str, trials: list[Any], *, at: datetime) -> str:
    """A study (maximising val_accuracy over SPACE) with ``trials`` and a job for each,
    written into the store of the server at ``home``, as the study loop leaves one."""
    db = Database(f"sqlite:///{home / 'nimbus.db'}")
    search = {
        "space": SPACE,
        "metric": "val_accuracy",
        "direction": "maximize",
        "sampler": "tpe",
        "pruner": "asha",
        "seed": 1,
        "trials": 8,
        "parallel": 2,
        "timeout_seconds": None,
        "register": None,
    }
    try:
        with db.session(write=True) as s:
            tenant_id = tenants.get_or_create(s, tenant).id
            job = {"model": "mlp", "dataset": "iris:1"}
            study = repo.create(
                s, tenant_id=tenant_id, search=search, job=job, created_by=None, now=at
            )
            for number, (state, lr, optimizer, value, step) in enumerate(trials):
                params = {"lr": lr, "optimizer": optimizer, "epochs": 3}
                spec = JobSpec(model="mlp", dataset="iris:1", params=params)
                job_id = jobs_repo.submit(s, tenant_id, spec, at).id
                row = repo.add_trial(
                    s, study.id, number, job_id=job_id, params=params, system_attrs={}, now=at
                )
                assert row is not None
                if state is not TrialState.RUNNING:
                    ended = at + timedelta(minutes=number + 1)
                    repo.end_trial(row, state, ended, value=value, pruned_step=step)
            return study.id
    finally:
        db.dispose()


@dataclass
class Env:
    server: ServerProcess
    member: str
    viewer: str
    other: str  # a member of tenant "acme"
    study: str  # seven trials: importances can be computed
    few: str  # one complete trial: too few for importances


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    server = ServerProcess(tmp_path_factory.mktemp("console-studies") / "home", env=API_ONLY)
    server.start()
    try:
        member, viewer, other = (
            make_token(server, role, tenant)
            for role, tenant in (("member", None), ("viewer", None), ("member", "acme"))
        )
        t0 = datetime.now(UTC) - timedelta(hours=1)
        study = insert_study(server.home, "default", TRIALS, at=t0)
        few = insert_study(server.home, "default", TRIALS[:1], at=t0 + timedelta(minutes=30))
        yield Env(server, member, viewer, other, study, few)
    finally:
        server.stop()


def test_a_study_shows_its_trials_history_importances_and_cancels(
    env: Env, page: Page, shot: Callable[[Page, str], Path]
) -> None:
    dialogs: list[Dialog] = []
    page.on("dialog", lambda dialog: dialogs.append(dialog))
    sign_in(page, env.server, env.member)
    page.get_by_role("navigation", name="Main").get_by_role("link", name="Studies").click()
    rows = page.get_by_role("row")
    expect(rows).to_have_count(3)
    expect(rows.nth(1)).to_contain_text(env.few)  # newest first
    row = page.get_by_role("row", name=re.compile(env.study))
    expect(row).to_contain_text("val_accuracy (maximize)")
    expect(row).to_contain_text("6/8")  # ended trials of the trials asked for
    expect(row).to_contain_text("0.81")  # the best value
    row.get_by_role("link", name=env.study).click()

    expect(page.get_by_role("heading", name=f"Study {env.study}")).to_be_visible()
    trials = page.get_by_role("region", name="Trials")
    expect(trials.get_by_role("row")).to_have_count(1 + len(TRIALS))
    pruned = trials.get_by_role("row").nth(3)
    expect(pruned).to_contain_text("pruned at step 2 (0.31)")
    expect(pruned.get_by_role("link", name=re.compile("^job_"))).to_be_visible()
    best = trials.get_by_role("row").nth(2)
    expect(best).to_contain_text("best")
    expect(best).to_contain_text(f"optimizer={SCRIPT}")  # a parameter's value, as text
    expect(trials.get_by_role("row").nth(7)).to_contain_text("running")
    expect(page.get_by_role("region", name="Best trial")).to_contain_text("0.81")
    importances = page.get_by_role("region", name="Parameter importances")
    # fANOVA runs once the page shows (seconds on a loaded machine), then from a cache.
    expect(importances.get_by_role("img", name=re.compile(r"^lr: "))).to_be_visible(timeout=30_000)
    expect(importances.get_by_role("img", name=re.compile(r"^optimizer: "))).to_be_visible()
    # The history: five complete trials' values and the best so far, drawn.
    chart = page.locator("#history-chart")
    expect(chart).to_have_attribute("data-points", "10")
    expect(chart.locator("canvas")).to_have_count(1)
    expect(page.locator("img[src=x]")).to_have_count(0)
    shot(page, "study")

    page.get_by_role("button", name="Cancel study").click()
    expect(page.get_by_text("cancelled by")).to_be_visible()
    expect(trials.get_by_role("row").nth(7)).to_contain_text("failed")
    expect(page.get_by_role("button", name="Cancel study")).to_have_count(0)

    page.goto(f"{env.server.url}/studies/{env.few}")
    too_few = page.get_by_text("Too few complete trials for importances: 1 of the 4")
    expect(too_few).to_be_visible(timeout=30_000)
    assert dialogs == []


def test_a_viewer_sees_no_button_and_a_forged_cancel_is_refused(
    env: Env, page: Page, context: BrowserContext
) -> None:
    sign_in(page, env.server, env.viewer)
    page.goto(f"{env.server.url}/studies/{env.few}")
    expect(page.get_by_role("heading", name="Optimisation history")).to_be_visible()
    expect(page.get_by_role("button", name="Cancel study")).to_have_count(0)
    csrf = csrf_of(page)
    cookie = str(session_cookie(context)["value"])
    with httpx.Client(base_url=env.server.url, cookies={"nimbus_session": cookie}) as raw:
        refused = raw.post(f"/studies/{env.few}/cancel", data={"csrf": csrf})
    assert refused.status_code == 403, refused.text
    with env.server.client(env.member) as api:
        assert api.get(f"{API}/studies/{env.few}").json()["state"] == "running"


def test_another_tenant_sees_none_of_the_studies(env: Env, page: Page) -> None:
    sign_in(page, env.server, env.other)
    page.goto(f"{env.server.url}/studies")
    expect(page.get_by_text("No study yet.")).to_be_visible()
    response = page.goto(f"{env.server.url}/studies/{env.study}")
    assert response is not None and response.status == 404
    expect(page.get_by_text(f"no study {env.study}")).to_be_visible()
