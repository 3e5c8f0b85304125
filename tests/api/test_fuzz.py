"""Fuzz the whole control-plane API from its own OpenAPI document with schemathesis (issue 9):
every operation, inputs that fit the schema and inputs that break it, as the admin (the job
API with a running attempt's job token), against a real server process. No answer may be a
server error: a 5xx is a bug (DESIGN.md), but for the documented 507 of a full storage quota.

The examples are derandomized, so a run is reproducible (CI sends the same requests each
time); ``NIMBUS_FUZZ_EXAMPLES=150`` explores further by hand. Each 5xx found so far has its
exact input as a regression test in ``test_fuzz_regressions.py``.

The operations are driven one by one through schemathesis's Python API
(``APIOperation.as_strategy``) rather than its pytest plugin, whose lazy ``from_fixture``
schemas break on pytest 9 (``Function`` has no ``_nodeid``).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis.core.result import Err

from tests.api.conftest import API, csv_bytes, start_attempt
from tests.helpers import ServerProcess
from tests.helpers_models import API_ONLY

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("NIMBUS_FUZZ_EXAMPLES", "6"))
# Path parameters of a dataset that exists, so that fuzzing reaches past the 404s.
KNOWN = {"name": "fuzzed", "v": "1", "file": "data.csv"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """A real server whose scheduler is off (fuzzed jobs stay queued) with a dataset."""
    proc = ServerProcess(tmp_path_factory.mktemp("fuzz") / "home", env=API_ONLY)
    proc.start()
    with proc.client() as admin:
        uploaded = admin.post(
            f"{API}/datasets/{KNOWN['name']}/versions",
            params={"filename": KNOWN["file"]},
            content=csv_bytes("fuzz"),
        )
        assert uploaded.status_code == 201, uploaded.text
    yield proc
    proc.stop()


def documented(response: Any) -> bool:
    """The one 5xx that is an answer, not a bug: 507 when the tenant's storage quota (which
    the fuzzed ``PUT /quotas`` may have set to 0) is used up (docs/api.md)."""
    if response.status_code != 507:
        return False
    return bool(response.json()["error"]["code"] == "storage_quota_exceeded")


def load_operations(server: ServerProcess) -> list[schemathesis.APIOperation[Any, Any, Any, Any]]:
    """Every operation of the server's OpenAPI document."""
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    schema.config.update(base_url=server.url)
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the document itself is wrong: no fuzzing hides that
            raise result.err()
        operations.append(result.ok())
    return operations


def unbreakable_path_parameters(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
) -> dict[str, str]:
    """Values for the path parameters that a negative case cannot break. A plain string has
    no invalid form once it is in a URL: schemathesis negates it to a number, a list or an
    object, finds that this serialises to a valid string again, and rejects the case, ~60
    times per operation (measured: 90% of the negative run's CPU for no request sent). So
    those are pinned (to the known dataset where the name fits) and the negative cases go to
    what can be wrong: typed path parameters (``step``), queries, headers and bodies."""
    return {
        p.name: KNOWN.get(p.name, "nothing")
        for p in operation.path_parameters
        if (schema := p.definition.get("schema", {})).get("type") == "string"
        and set(schema) <= {"type", "title"}  # no pattern, format or length to break
    }


def fuzz(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: schemathesis.GenerationMode,
    headers: dict[str, str],
    found: dict[str, str],
    pinned: dict[str, Any] | None = None,
) -> None:
    """Send ``EXAMPLES`` generated requests to one operation; note the first 5xx of each."""
    if mode is schemathesis.GenerationMode.NEGATIVE:
        pinned = {**unbreakable_path_parameters(operation), **(pinned or {})} or None

    @given(case=operation.as_strategy(generation_mode=mode, path_parameters=pinned))
    @settings(
        max_examples=EXAMPLES,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # every 5xx is listed, none shrunk
        suppress_health_check=list(HealthCheck),
    )
    def send(case: schemathesis.Case[Any]) -> None:
        response = case.call(headers=headers, timeout=60)
        if response.status_code >= 500 and not documented(response):
            where = f"{operation.method.upper()} {operation.path} -> {response.status_code}"
            found.setdefault(where, case.as_curl_command(headers=headers))

    # An operation with nothing to break (no parameters, no body) has no negative case.
    with contextlib.suppress(Unsatisfiable):
        send()


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_no_job_api_operation_answers_a_server_error(
    fuzz_server: ServerProcess, mode: schemathesis.GenerationMode
) -> None:
    """The job API as a job's own process calls it: with a running attempt's job token.
    First in the module: the fuzzing of the other operations cancels jobs."""
    attempt_id, token = start_attempt(fuzz_server, KNOWN["name"])
    headers = {"Authorization": f"Bearer {token}"}
    found: dict[str, str] = {}
    operations = [o for o in load_operations(fuzz_server) if "/job-api/" in o.path]
    assert len(operations) >= 9
    for operation in operations:
        fuzz(operation, mode, headers, found, {"attempt_id": attempt_id})
    assert not found, "server errors:\n" + "\n".join(f"{k}\n  {v}" for k, v in found.items())
    assert "Traceback" not in fuzz_server.log()


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_no_operation_answers_a_server_error(
    fuzz_server: ServerProcess, mode: schemathesis.GenerationMode
) -> None:
    headers = {"Authorization": f"Bearer {fuzz_server.admin_token}"}
    found: dict[str, str] = {}
    operations = load_operations(fuzz_server)
    assert len(operations) > 40  # every route of the document, not a part of it
    for operation in operations:
        fuzz(operation, mode, headers, found)
        params = {p.name for p in operation.path_parameters}
        pinned_already = mode is schemathesis.GenerationMode.NEGATIVE  # unbreakable_path_parameters
        if (
            operation.path.startswith(f"{API}/datasets/")
            and params <= set(KNOWN)
            and not pinned_already
        ):
            fuzz(operation, mode, headers, found, {k: KNOWN[k] for k in params})
    assert not found, "server errors:\n" + "\n".join(f"{k}\n  {v}" for k, v in found.items())
    assert "Traceback" not in fuzz_server.log()
