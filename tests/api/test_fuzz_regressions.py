"""The exact requests with which fuzzing (issue 9, ``test_fuzz.py``) once got a 500 from a real
server: each now answers a 400 that names the value it refuses."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.conftest import API, csv_bytes, error_of, start_attempt
from tests.helpers import ServerProcess
from tests.helpers_models import API_ONLY

HUGE = 5551029012657253153935658005349531648  # past any 64-bit column


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server whose scheduler is off (submitted jobs stay queued), with a dataset
    ``fuzzed``."""
    server = ServerProcess(tmp_path_factory.mktemp("fuzzed") / "home", env=API_ONLY).start()
    try:
        with server.client() as client:
            uploaded = client.post(
                f"{API}/datasets/fuzzed/versions", params={"filename": "d.csv"}, content=csv_bytes()
            )
            assert uploaded.status_code == 201, uploaded.text
        yield server
        assert "Traceback" not in server.log()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def admin(server: ServerProcess) -> httpx.Client:
    return server.client()


def refused(response: httpx.Response, *words: str) -> str:
    """The message of a 400; it must name each of ``words``."""
    assert response.status_code == 400, response.text
    message = str(error_of(response)["message"])
    for word in words:
        assert word in message, message
    return message


@pytest.mark.parametrize(
    "path",
    [
        f"{API}/datasets/%C2%B2/versions/%C2%B2",  # '²': str.isdigit() says yes, int() says no
        f"{API}/datasets/fuzzed/versions/%C2%B2",
        f"{API}/models/fuzzed/versions/%C2%B2",
    ],
)
@pytest.mark.parametrize("method", ["GET", "DELETE"])
def test_a_version_that_is_not_ascii_digits_is_a_400(
    admin: httpx.Client, method: str, path: str
) -> None:
    refused(admin.request(method, path), "invalid version")


@pytest.mark.parametrize(
    "version",
    [
        "1%0A",  # a trailing newline: the old pattern's '$' let it through, as version 1
        "%D9%A1",  # Arabic-Indic one: int() reads 1
        "%EF%BC%91",  # fullwidth one: int() reads 1 too
    ],
)
def test_a_version_written_otherwise_than_in_ascii_digits_names_no_version(
    admin: httpx.Client, version: str
) -> None:
    """Once, ``DELETE .../versions/1%0A`` deleted version 1."""
    name = f"victim{len(version)}"
    uploaded = admin.post(
        f"{API}/datasets/{name}/versions", params={"filename": "d.csv"}, content=csv_bytes(name)
    )
    assert uploaded.status_code == 201, uploaded.text
    for method in ("GET", "DELETE"):
        refused(admin.request(method, f"{API}/datasets/{name}/versions/{version}"), "version")
    assert admin.get(f"{API}/datasets/{name}/versions/1").status_code == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (f"{API}/quotas", {"replicas": HUGE}),
        (f"{API}/quotas/0", {"bytes": 2147744328155715401959866368, "jobs": 184}),
    ],
)
def test_a_quota_past_64_bits_is_a_400(admin: httpx.Client, path: str, body: Any) -> None:
    refused(admin.put(path, json=body), "less than or equal to 9223372036854775807")


def test_a_negative_split_seed_is_a_400(admin: httpx.Client) -> None:
    response = admin.post(
        f"{API}/datasets/seeded/versions",
        params={"filename": "d.csv", "seed": "-3"},
        content=csv_bytes("seed"),
    )
    refused(response, "'seed'")


@pytest.mark.parametrize(
    ("field", "value", "words"),
    [
        ("memory", "9" * 400 + "g", ["memory size", "at most"]),
        ("memory", 10**30, ["memory size", "at most"]),
        ("memory", "\u0661G", ["memory size"]),  # not ASCII digits: refused, not read as 1G
        ("deadline", 1e308, ["duration", "100 years"]),
        ("deadline", "9" * 400 + "d", ["duration", "100 years"]),
    ],
)
def test_a_size_or_duration_out_of_range_is_a_400(
    admin: httpx.Client, field: str, value: Any, words: list[str]
) -> None:
    body = {"dataset": "fuzzed", "model": "text", field: value}
    refused(admin.post(f"{API}/jobs", json=body), *words)


def test_a_script_seed_param_in_superscript_is_a_400(admin: httpx.Client) -> None:
    """A script's params are its own (not checked against a schema), but ``seed`` is the
    job's seed: ``--param seed=²`` is refused, not read."""
    code = admin.post(f"{API}/code", params={"filename": "main.py"}, content=b"print('hi')\n")
    assert code.status_code == 201, code.text
    body = {"dataset": "fuzzed", "model": code.json()["ref"], "params": {"seed": "\u00b2"}}
    refused(admin.post(f"{API}/jobs", json=body), "seed")
    body["params"] = {"seed": "7"}
    submitted = admin.post(f"{API}/jobs", json=body)
    assert submitted.status_code == 201 and submitted.json()["seed"] == 7, submitted.text


@pytest.mark.parametrize("last_event_id", [b"\xb2", b"1_000", b"99999999999999999999999"])
def test_a_last_event_id_that_is_not_a_number_is_a_400(
    admin: httpx.Client, last_event_id: bytes
) -> None:
    job = admin.post(f"{API}/jobs", json={"dataset": "fuzzed", "model": "text"})
    assert job.status_code == 201, job.text
    response = admin.get(
        f"{API}/jobs/{job.json()['id']}/logs",
        params={"follow": "true"},
        headers={b"Last-Event-ID": last_event_id},
    )
    refused(response, "Last-Event-ID header")


@pytest.mark.parametrize("after", ["99999999999999999999", "-1"])
def test_a_log_position_past_64_bits_is_a_400(admin: httpx.Client, after: str) -> None:
    job = admin.post(f"{API}/jobs", json={"dataset": "fuzzed", "model": "text"})
    assert job.status_code == 201, job.text
    response = admin.get(f"{API}/jobs/{job.json()['id']}/logs", params={"after": after})
    refused(response, "'after'")


@pytest.mark.parametrize(
    ("method", "route", "body", "words"),
    [
        ("PUT", "checkpoints/99999999999999999999", None, ["'step'"]),
        ("PUT", "checkpoints/1?epoch=99999999999999999999", None, ["'epoch'"]),
        ("POST", "metrics", {"step": 2**64, "metrics": {"loss": 1.0}}, ["'step'"]),
        ("POST", "progress", {"epoch": 2**64, "epochs": 1, "batch": 0, "batches": 1}, ["epoch"]),
    ],
)
def test_a_job_api_number_past_64_bits_is_a_400(
    server: ServerProcess, method: str, route: str, body: Any, words: list[str]
) -> None:
    attempt_id, token = start_attempt(server, "fuzzed")
    with httpx.Client(
        base_url=f"{server.url}{API}/job-api/{attempt_id}",
        headers={"Authorization": f"Bearer {token}"},
    ) as job:
        content = json.dumps(body).encode() if body is not None else b"x"
        refused(job.request(method, route, content=content), *words)
