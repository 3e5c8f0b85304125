"""The SDK's jobs methods against in-memory transports: bodies, paths, code upload, SSE
following (with reconnects), waiting."""

from __future__ import annotations

import io
import json
import tarfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from nimbus.client import Client, Event, WaitTimeout
from nimbus.client.sse import parse_events
from nimbus.config import Settings
from nimbus.errors import InvalidInput, NotFound, Unavailable
from nimbus.jobs.domain import JobState
from nimbus.wire.base import dump
from nimbus.wire.code import CodeArtifact
from nimbus.wire.jobs import (
    Job,
    LogChunk,
    LogEnd,
    LogPage,
    MetricPoint,
    Progress,
)

URL = "http://nimbus.test"
Handler = Callable[[httpx.Request], httpx.Response]
CODE_REF = "code:sha256/" + "c" * 64


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    for key in ("NIMBUS_URL", "NIMBUS_TOKEN", "NIMBUS_HOME"):
        monkeypatch.delenv(key, raising=False)
    return Settings(home=tmp_path / "home")


class FakeTime:
    """A clock that only moves when the code under test sleeps."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(handler: Handler, settings: Settings, clock: FakeTime | None = None) -> Client:
    client = Client(URL, "nbt_secret", settings=settings, transport=httpx.MockTransport(handler))
    if clock is not None:
        client._clock = clock.clock
        client._sleep = clock.sleep
    return client


def job(state: str = "queued", **extra: Any) -> dict[str, Any]:
    """A job object as the server sends it (docs/api.md)."""
    return {
        "id": "job_1",
        "state": state,
        "model": "cnn",
        "dataset": {"name": "digits", "version": 2, "content_hash": "ab" * 32},
        "params": {"epochs": 3},
        "resources": {
            "cpus": 1.0,
            "gpus": 0,
            "memory": 1 << 30,
            "workers": 1,
            "custom": {},
            "spread": False,
        },
        "priority": 0,
        "max_retries": 2,
        "attempts": 0,
        "deadline_at": None,
        "created_at": "2026-01-02T03:04:05.123456Z",
        "started_at": None,
        "finished_at": None,
        "exit_reason": None,
        "cancel_requested": False,
        "progress": None,
        "evaluation": None,
        "artifacts": [],
        "seed": 0,
        "isolation": None,
        "environment": None,
        "workers": [],
        **extra,
    }


def code_artifact(size: int) -> dict[str, Any]:
    return {
        "ref": CODE_REF,
        "sha256": "c" * 64,
        "size": size,
        "format": "py",
        "entry": "main.py",
        "created_at": "2026-01-02T03:04:05Z",
    }


def test_submit_a_builtin_model_sends_the_documented_body(settings: Settings) -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(201, json=job())

    with make(handler, settings) as client:
        assert client.submit_job("digits:2", "cnn", params={"epochs": "3"}).id == "job_1"
        client.submit_job(
            "digits",
            "mlp",
            cpus=2,
            gpus=1,
            memory="4G",
            workers=2,
            priority=5,
            max_retries=0,
            deadline="2h",
            seed=7,
            requirements=["tomli==2.0.1", "# checked by the server"],
        )
    assert [(r.method, r.url.path) for r in seen] == [("POST", "/api/v1/jobs")] * 2
    assert json.loads(seen[0].content) == {
        "dataset": "digits:2",
        "model": "cnn",
        "params": {"epochs": "3"},
        "cpus": 1,
        "gpus": 0,
        "workers": 1,
        "priority": 0,
    }
    assert json.loads(seen[1].content) == {
        "dataset": "digits",
        "model": "mlp",
        "params": {},
        "cpus": 2,
        "gpus": 1,
        "memory": "4G",
        "workers": 2,
        "priority": 5,
        "max_retries": 0,
        "deadline": "2h",
        "seed": 7,
        "environment": {"requirements": ["tomli==2.0.1", "# checked by the server"]},
    }
    assert {r.headers["authorization"] for r in seen} == {"Bearer nbt_secret"}


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"dataset": "Digits"}, "dataset name"),
        ({"dataset": "digits:0"}, "dataset reference"),
        ({"memory": "lots"}, "memory size"),
        ({"deadline": "soon"}, "duration"),
        ({"deadline": "-5"}, "positive"),
        ({"model": "missing/train.py"}, "no such file"),
        ({"model": ""}, "needs a model"),
    ],
)
def test_submit_checks_what_it_can_before_sending(
    settings: Settings, kwargs: dict[str, Any], match: str
) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    args: dict[str, Any] = {"dataset": "digits", "model": "cnn", **kwargs}
    with make(handler, settings) as client, pytest.raises(InvalidInput, match=match):
        client.submit_job(**args)


def code_server(uploads: list[httpx.Request], submits: list[dict[str, Any]]) -> Handler:
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/api/v1/code":
            uploads.append(request)
            return httpx.Response(201, json=code_artifact(len(request.content)))
        submits.append(json.loads(request.content))
        return httpx.Response(201, json=job(model=submits[-1]["model"]))

    return handler


def test_a_script_is_uploaded_then_submitted_by_ref(settings: Settings, tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text("print('hello')\n")
    uploads: list[httpx.Request] = []
    submits: list[dict[str, Any]] = []
    with make(code_server(uploads, submits), settings) as client:
        submitted = client.submit_job("digits", script)
        client.submit_job("digits", CODE_REF)  # an existing ref is not uploaded again
    assert submitted.model == CODE_REF
    assert len(uploads) == 1
    assert uploads[0].url.params["filename"] == "train.py"
    assert uploads[0].content == b"print('hello')\n"
    assert [s["model"] for s in submits] == [CODE_REF, CODE_REF]


def test_a_code_directory_is_sent_as_a_reproducible_tar(settings: Settings, tmp_path: Path) -> None:
    folder = tmp_path / "project"
    (folder / "pkg" / "__pycache__").mkdir(parents=True)
    (folder / "main.py").write_text("import pkg.util\n")
    (folder / "pkg" / "util.py").write_text("X = 1\n")
    (folder / "pkg" / "__pycache__" / "util.cpython-311.pyc").write_bytes(b"\0junk")
    uploads: list[httpx.Request] = []
    with make(code_server(uploads, []), settings) as client:
        client.submit_job("digits", str(folder))
        (folder / "main.py").touch()  # a new mtime must not change the bytes
        client.upload_code(folder)
    assert uploads[0].url.params["filename"] == "project.tar"
    assert uploads[0].content == uploads[1].content
    with tarfile.open(fileobj=io.BytesIO(uploads[0].content)) as tar:
        assert tar.getnames() == ["main.py", "pkg", "pkg/util.py"]


def test_code_that_cannot_run_is_refused_locally(settings: Settings, tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("x")
    with make(code_server([], []), settings) as client:
        with pytest.raises(InvalidInput, match=r"has no main\.py"):
            client.submit_job("digits", str(tmp_path / "empty"))
        with pytest.raises(InvalidInput, match="not a Python file"):
            client.upload_code(tmp_path / "notes.txt")


def test_reading_routes_hit_the_documented_paths(settings: Settings) -> None:
    seen: list[tuple[str, str, dict[str, str]]] = []

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.raw_path.decode().partition("?")[0]
        seen.append((request.method, path, dict(request.url.params)))
        if path == "/api/v1/jobs" or path == "/api/v1/jobs/compare":
            return httpx.Response(200, json={"jobs": [job()]})
        if path.endswith("/logs"):
            return httpx.Response(200, json={"chunks": [], "next": 0, "done": False})
        if path.endswith("/metrics"):
            return httpx.Response(200, json={"metrics": {"train_loss": []}})
        return httpx.Response(200, json=job())

    with make(handler, settings) as client:
        assert client.list_jobs() == [Job.model_validate(job())]
        client.list_jobs(state="running", limit=5)
        client.get_job("job_1")
        client.cancel_job("job_1")
        assert client.job_logs("job_1", after=4).done is False
        assert client.job_metrics("job_1") == {"train_loss": []}
        assert client.compare_jobs(["job_1", "job_2"]) == [Job.model_validate(job())]
        client.get_job("a/b")  # ids are quoted, never path traversal
    assert seen == [
        ("GET", "/api/v1/jobs", {}),
        ("GET", "/api/v1/jobs", {"state": "running", "limit": "5"}),
        ("GET", "/api/v1/jobs/job_1", {}),
        ("POST", "/api/v1/jobs/job_1/cancel", {}),
        ("GET", "/api/v1/jobs/job_1/logs", {"after": "4", "follow": "false"}),
        ("GET", "/api/v1/jobs/job_1/metrics", {}),
        ("GET", "/api/v1/jobs/compare", {"ids": "job_1,job_2"}),
        ("GET", "/api/v1/jobs/a%2Fb", {}),
    ]


def test_the_sdk_returns_wire_models(settings: Settings) -> None:
    running = job(
        "running",
        progress={"epoch": 1, "epochs": 3, "batch": 4, "batches": 10},
        artifacts=[{"name": "model.onnx", "key": "sha256/ab/" + "ab" * 32, "size": 10}],
    )

    def handler(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        if path == "/api/v1/code":
            return httpx.Response(201, json=code_artifact(len(request.content)))
        if path in ("/api/v1/jobs/compare", "/api/v1/jobs") and request.method == "GET":
            return httpx.Response(200, json={"jobs": [job(), job(id="job_2")]})
        if path.endswith("/logs"):
            chunk = {"seq": 7, "attempt": 2, "data": "epoch 1/3\n"}
            return httpx.Response(200, json={"chunks": [chunk], "next": 7, "done": True})
        if path.endswith("/metrics"):
            points = [
                {"step": 1, "value": 0.5, "attempt": 1},
                {"step": 2, "value": None, "attempt": 2},
            ]
            return httpx.Response(200, json={"metrics": {"train_loss": points}})
        return httpx.Response(200, json=running)

    with make(handler, settings) as client:
        code = client.upload_code(Path(__file__))
        got = client.get_job("job_1")
        listed = client.list_jobs()
        compared = client.compare_jobs(["job_1", "job_2"])
        page = client.job_logs("job_1")
        metrics = client.job_metrics("job_1")
    assert isinstance(code, CodeArtifact) and code.ref == CODE_REF
    assert isinstance(got, Job) and got.state is JobState.RUNNING
    assert got.created_at == datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)
    assert got.dataset is not None and got.dataset.version == 2
    assert got.progress == Progress(epoch=1, epochs=3, batch=4, batches=10)
    assert got.artifacts[0].name == "model.onnx" and got.resources.memory == 1 << 30
    assert [j.id for j in listed] == [j.id for j in compared] == ["job_1", "job_2"]
    assert page == LogPage(
        chunks=[LogChunk(seq=7, attempt=2, data="epoch 1/3\n")], next=7, done=True
    )
    assert metrics == {
        "train_loss": [
            MetricPoint(step=1, value=0.5, attempt=1),
            MetricPoint(step=2, value=None, attempt=2),
        ]
    }
    assert dump(got) == running  # as the server sent it (what `--json` prints)


def test_a_newer_server_s_extra_fields_are_ignored(settings: Settings) -> None:
    handler: Handler = lambda r: httpx.Response(200, json=job(queue_position=3))  # noqa: E731
    with make(handler, settings) as client:
        assert client.get_job("job_1").id == "job_1"


@pytest.mark.parametrize(
    "call",
    [
        lambda c: c.submit_job("digits", "cnn", {"epochs": "3"}),
        lambda c: c.list_jobs(None, 5),
        lambda c: c.job_logs("job_1", 4),
        lambda c: c.iter_logs("job_1", 4),
        lambda c: c.follow_logs("job_1", 4),
        lambda c: c.wait_job("job_1", 3),
    ],
)
def test_options_are_keyword_only(settings: Settings, call: Callable[[Client], Any]) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise AssertionError("nothing should be sent")

    with make(handler, settings) as client, pytest.raises(TypeError, match="positional"):
        call(client)


def test_bad_job_arguments_are_invalid_input(settings: Settings) -> None:
    with make(code_server([], []), settings) as client:
        with pytest.raises(InvalidInput, match="job state"):
            client.list_jobs(state="sleeping")
        with pytest.raises(InvalidInput, match="job id"):
            client.get_job(" ")
        with pytest.raises(InvalidInput, match="at least one"):
            client.compare_jobs([])


def test_iter_logs_pages_through_everything(settings: Settings) -> None:
    pages = {0: ([1, 2], 2), 2: ([3], 3), 3: ([], 3)}

    def handler(request: httpx.Request) -> httpx.Response:
        seqs, following = pages[int(request.url.params["after"])]
        chunks = [{"seq": s, "attempt": 1, "data": f"line {s}\n"} for s in seqs]
        return httpx.Response(200, json={"chunks": chunks, "next": following, "done": False})

    with make(handler, settings) as client:
        assert [c.seq for c in client.iter_logs("job_1")] == [1, 2, 3]


# -- server-sent events ----------------------------------------------------------------------


def test_sse_parsing_follows_the_specification() -> None:
    text = (
        ": keep-alive\n"
        "event: log\n"
        'data: {"seq": 1, "attempt": 1,\n'
        'data:  "data": "hi\\n"}\n'
        "id: 1\n"
        "\n"
        "\n"  # an empty event is not an event
        "event: progress\r\n"
        'data:{"epoch": 1, "epochs": 2, "batch": 3, "batches": 4}\r\n'
        "\r\n"
        "data: plain text\n"
        "\n"
        "event: end\n"
        'data: {"state": "succeeded"}\n'  # no blank line: cut short, dropped
    )
    events = list(parse_events(text.splitlines()))
    assert events == [
        Event("log", {"seq": 1, "attempt": 1, "data": "hi\n"}, "1"),
        Event("progress", {"epoch": 1, "epochs": 2, "batch": 3, "batches": 4}, "1"),
        Event("message", {"text": "plain text"}, "1"),
    ]


def sse(*events: tuple[str, dict[str, Any]]) -> bytes:
    return "".join(f"event: {k}\ndata: {json.dumps(d)}\n\n" for k, d in events).encode()


def log(seq: int) -> tuple[str, dict[str, Any]]:
    return ("log", {"seq": seq, "attempt": 1, "data": f"line {seq}\n"})


def end(state: str) -> tuple[str, dict[str, Any]]:
    return ("end", {"state": state, "exit_reason": None})


def test_follow_yields_events_until_the_end(settings: Settings) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.url.params["follow"] == "true"
        assert request.headers["accept"] == "text/event-stream"
        body = sse(
            log(1),
            ("progress", {"epoch": 1, "epochs": 1, "batch": 1, "batches": 1}),
            ("end", {"state": "succeeded", "exit_reason": None}),
            log(99),
        )
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    with make(handler, settings) as client:
        events = list(client.follow_logs("job_1"))
    assert events == [  # nothing after the end
        LogChunk(seq=1, attempt=1, data="line 1\n"),
        Progress(epoch=1, epochs=1, batch=1, batches=1),
        LogEnd(state=JobState.SUCCEEDED, exit_reason=None),
    ]
    assert [e.event for e in events] == ["log", "progress", "end"]


def test_follow_skips_event_types_it_does_not_know(settings: Settings) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        body = sse(("note", {"text": "from a newer server"}), log(1), end("succeeded"))
        return httpx.Response(200, content=body, headers={"content-type": "text/event-stream"})

    with make(handler, settings) as client:
        assert [e.event for e in client.follow_logs("job_1")] == ["log", "end"]


class Chopped(httpx.ByteStream):
    """A body that fails part way, like a server killed mid-stream."""

    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.data = data

    def __iter__(self) -> Iterator[bytes]:
        yield self.data
        raise httpx.RemoteProtocolError("peer closed connection")


def test_a_cut_stream_resumes_after_the_last_log(settings: Settings) -> None:
    fake = FakeTime()
    afters: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        afters.append(request.url.params["after"])
        if len(afters) == 1:
            return httpx.Response(200, stream=Chopped(sse(log(1), log(2))))
        if len(afters) == 2:
            raise httpx.ConnectError("connection refused")  # the server is restarting
        if len(afters) == 3:
            return httpx.Response(200, content=sse(log(3)))  # ends without `end`
        return httpx.Response(200, content=sse(end("failed")))

    with make(handler, settings, fake) as client:
        events = list(client.follow_logs("job_1"))
    assert [e.seq for e in events if isinstance(e, LogChunk)] == [1, 2, 3]
    assert events[-1] == LogEnd(state=JobState.FAILED, exit_reason=None)
    assert afters == ["0", "2", "2", "3"]


def test_following_gives_up_when_the_server_stays_away(settings: Settings) -> None:
    fake = FakeTime()

    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused")

    with make(handler, settings, fake) as client, pytest.raises(Unavailable, match="lost the log"):
        list(client.follow_logs("job_1"))
    assert 29 <= fake.now <= 31


def test_following_an_unknown_job_fails_at_once(settings: Settings) -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(404, json={"error": {"code": "not_found", "message": "no job x"}})

    with make(handler, settings) as client, pytest.raises(NotFound, match="no job x"):
        list(client.follow_logs("x"))


# -- waiting ---------------------------------------------------------------------------------


def test_wait_polls_until_a_final_state(settings: Settings) -> None:
    fake = FakeTime()
    states = iter(["queued", "running", "unavailable", "running", "succeeded"])

    def handler(request: httpx.Request) -> httpx.Response:
        state = next(states)
        if state == "unavailable":
            raise httpx.ConnectError("restarting")
        return httpx.Response(200, json=job(state))

    with make(handler, settings, fake) as client:
        assert client.wait_job("job_1", poll=0.4).state is JobState.SUCCEEDED
    assert fake.sleeps == [0.05, 0.1, 0.2, 0.4]  # backing off up to `poll`


def test_wait_gives_up_after_its_timeout(settings: Settings) -> None:
    fake = FakeTime()
    handler: Handler = lambda r: httpx.Response(200, json=job("running"))  # noqa: E731
    client = make(handler, settings, fake)
    with client, pytest.raises(WaitTimeout, match="did not finish within 3s") as caught:
        client.wait_job("job_1", timeout=3)
    assert caught.value.exit_code == 6
    assert fake.now == pytest.approx(3)
