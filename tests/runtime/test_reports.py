"""Reports leave the training thread: a slow control plane does not hold training, every
metric arrives in order, progress is coalesced, and a job stores what it logged before it
ends (success, failure, cancel)."""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Callable

import pytest

from nimbus.jobs.domain import USER_ERROR_EXIT_CODE
from nimbus.runtime.job_api import CANCELLED_EXIT_CODE, AttemptFenced, HttpReporter
from nimbus.runtime.sender import ReportSender
from tests.runtime import synthetic
from tests.runtime.helpers import PYTHON, Harness, run_main, spawn_entry_until

LOG_40 = (
    "from nimbus import runtime as nr\nfor step in range(1, 41):\n    nr.log(step, loss=step)\n"
)


def _wait_for(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_held_progress_post_does_not_hold_the_training_loop(harness: Harness) -> None:
    job_api = harness.job_api
    job_api.progress_gate = gate = threading.Event()  # the control plane sits on progress
    lines: list[str] = []
    with harness.client(progress_interval=0.0) as client:
        reporter = HttpReporter(client, echo=lines.append)
        reporter.progress(1, 2, 1, 50)
        _wait_for(lambda: ("POST", "progress") in job_api.requests)  # held by the server
        for batch in range(2, 51):
            reporter.progress(1, 2, batch, 50)
        for step in range(1, 21):
            reporter.log(step, loss=float(step))
        # every call returned while the first post is still held: nothing stored yet
        assert job_api.progress == [] and job_api.metrics == []
        assert len(lines) == 20  # the job log lines are printed at once
        gate.set()
        reporter.flush()
    assert [p["batch"] for p in job_api.progress] == [1, 50]  # 2..49 replaced by 50
    assert job_api.series("loss") == [(step, float(step)) for step in range(1, 21)]


def test_metrics_wait_for_room_and_are_never_dropped() -> None:
    posted: list[int] = []
    started, release = threading.Event(), threading.Event()

    def post(step: int, values: dict[str, float]) -> None:
        started.set()
        release.wait()
        posted.append(step)

    sender = ReportSender(post, lambda body: None, max_pending=2)
    sender.metrics(1, {"loss": 1.0})
    started.wait(10)  # 1 is in flight, 2 and 3 fill the queue
    sender.metrics(2, {"loss": 2.0})
    sender.metrics(3, {"loss": 3.0})
    fourth = threading.Thread(target=sender.metrics, args=(4, {"loss": 4.0}))
    fourth.start()
    fourth.join(0.3)
    assert fourth.is_alive() and sender.pending() == 3  # waits for room
    assert sender.flush(timeout=0.05) is False
    release.set()
    fourth.join(10)
    assert sender.flush(timeout=10) is True
    assert posted == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="max_pending"):
        ReportSender(post, lambda body: None, max_pending=0)


def test_an_error_posting_surfaces_in_the_training_thread(harness: Harness) -> None:
    with harness.client() as client:
        reporter = HttpReporter(client, echo=lambda line: None)
        harness.job_api.new_attempt()  # this attempt is replaced
        reporter.log(1, loss=1.0)  # returns: posted behind
        with pytest.raises(AttemptFenced):
            reporter.flush()
        reporter.flush()  # raised once
        _wait_for(lambda: client.reports.pending() == 0)
        with pytest.raises(AttemptFenced):  # or at the next report
            reporter.log(2, loss=1.0)
            _wait_for(lambda: client.reports.pending() == 0)
            reporter.progress(1, 1, 1, 1)


def test_metrics_are_stored_before_the_model_and_result(harness: Harness) -> None:
    job_api = harness.job_api
    job_api.metrics_delay = 0.05  # a slow control plane: the posts queue up
    job_api.job(synthetic.digits(limit=200), "cnn", {"epochs": 3, "batch_size": 64})
    assert run_main(harness) == 0
    routes = [route for method, route in job_api.requests if method != "GET"]
    last_metric = max(i for i, route in enumerate(routes) if route == "metrics")
    assert last_metric < routes.index("result")
    assert last_metric < min(i for i, r in enumerate(routes) if r.startswith("artifacts/"))
    assert [step for step, _ in job_api.series("train_loss")] == [1, 2, 3]


def test_a_failing_script_stores_what_it_logged_before_it_exits(harness: Harness) -> None:
    job_api = harness.job_api
    job_api.metrics_delay = 0.02
    script = LOG_40 + "raise ValueError('the script fails')\n"
    job_api.job(synthetic.tiny_images(), code=script.encode())
    proc = subprocess.run(
        [PYTHON, "-m", "nimbus.runtime.entry"],
        env=harness.process_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == USER_ERROR_EXIT_CODE, proc.stderr
    assert "the script fails" in proc.stderr
    assert job_api.series("loss") == [(step, float(step)) for step in range(1, 41)]


def test_a_cancelled_script_stores_what_it_logged_before_it_exits(harness: Harness) -> None:
    job_api = harness.job_api
    job_api.metrics_delay = 0.02
    script = LOG_40 + "import time\nprint('logged', flush=True)\ntime.sleep(60)\n"
    job_api.job(synthetic.tiny_images(), code=script.encode())
    proc = spawn_entry_until(harness, "logged")
    try:
        job_api.cancel = True
        code = proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.communicate()
    assert code == CANCELLED_EXIT_CODE
    assert job_api.series("loss") == [(step, float(step)) for step in range(1, 41)]
