"""Fuzz the whole control-plane API from its own OpenAPI document with schemathesis: every
operation, inputs that fit the schema and inputs that break it, as the admin, against a real
server process. No answer may be a server error (a 5xx is a bug, DESIGN.md).

The examples are derandomized, so a run is reproducible (CI sees the same requests each time);
``NIMBUS_FUZZ_EXAMPLES=200`` explores further by hand. Each 5xx found so far has its exact
input as a regression test in ``test_fuzz_regressions.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.core.result import Err

from tests.api.conftest import API, csv_bytes
from tests.helpers import ServerProcess

pytestmark = pytest.mark.slow

EXAMPLES = int(os.environ.get("NIMBUS_FUZZ_EXAMPLES", "8"))
# Path parameters of a dataset that exists, so that fuzzing reaches past the 404s.
KNOWN = {"name": "fuzzed", "v": "1", "file": "data.csv"}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("fuzz") / "home")
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


def fuzz(
    operation: schemathesis.APIOperation[Any, Any, Any, Any],
    mode: schemathesis.GenerationMode,
    headers: dict[str, str],
    found: dict[str, str],
    pinned: dict[str, Any] | None = None,
) -> None:
    """Send ``EXAMPLES`` generated requests to one operation; note the first 5xx of each."""

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
        if response.status_code >= 500:
            where = f"{operation.method.upper()} {operation.path} -> {response.status_code}"
            found.setdefault(where, case.as_curl_command(headers=headers))

    try:
        send()
    except Exception as exc:
        # An operation with nothing to break (no parameters, no body) has no negative case.
        if type(exc).__name__ != "Unsatisfiable":
            raise


@pytest.mark.parametrize("mode", list(schemathesis.GenerationMode), ids=str)
def test_no_operation_answers_a_server_error(
    fuzz_server: ServerProcess, mode: schemathesis.GenerationMode
) -> None:
    headers = {"Authorization": f"Bearer {fuzz_server.admin_token}"}
    schema = schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")
    schema.config.update(base_url=fuzz_server.url)
    found: dict[str, str] = {}
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):  # the document itself is wrong: no fuzzing hides that
            raise result.err()
        operations.append(result.ok())
    assert len(operations) > 40  # every route of the document, not a part of it
    for operation in operations:
        fuzz(operation, mode, headers, found)
        params = {p.name for p in operation.path_parameters}
        if operation.path.startswith(f"{API}/datasets/") and params <= set(KNOWN):
            fuzz(operation, mode, headers, found, {k: KNOWN[k] for k in params})
    assert not found, "server errors:\n" + "\n".join(f"{k}\n  {v}" for k, v in found.items())
    assert "Traceback" not in fuzz_server.log()
