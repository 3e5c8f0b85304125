"""Notebook jobs against the fake control plane: a failing cell fails the job with its
error (the notebook that runs through is tests/e2e/test_notebooks.py, on a real server)."""

from __future__ import annotations

import json
from typing import Any

import nbformat

from nimbus.jobs.domain import USER_ERROR_EXIT_CODE
from nimbus.runtime.notebook import EXECUTED_ARTIFACT, cell_failure
from tests.runtime import synthetic
from tests.runtime.helpers import Harness, run_main


def notebook(*cells: str, parameters: str = "epochs = 1\n") -> bytes:
    """An nbformat 4 notebook: a cell tagged ``parameters``, then ``cells``."""
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "language": "python", "display_name": "Py"}
    nb.cells = [
        nbformat.v4.new_code_cell(parameters, metadata={"tags": ["parameters"]}),
        *(nbformat.v4.new_code_cell(cell) for cell in cells),
    ]
    text: str = nbformat.writes(nb)
    return text.encode()


def use_notebook(harness: Harness, code: bytes, params: dict[str, Any]) -> None:
    harness.job_api.job(synthetic.tiny_images(n=40), code=code, params=params)
    harness.job_api.spec["code"].update(format="ipynb", entry="main.ipynb")


def test_a_failing_cell_fails_the_job_with_its_error(harness: Harness, capsys: Any) -> None:
    code = notebook("x = 1\n", "def f():\n    raise ValueError('no such column')\n\nf()\n")
    use_notebook(harness, code, {})
    assert run_main(harness) == USER_ERROR_EXIT_CODE

    err = capsys.readouterr().err
    assert "the notebook failed in cell [3]: ValueError: no such column" in err
    assert "\x1b[" not in err  # IPython's colours are left out of the job log
    assert "without encryption" not in err  # the kernel talks over unix sockets, not TCP
    assert harness.job_api.results == []
    executed = json.loads(harness.job_api.artifacts[EXECUTED_ARTIFACT])
    assert executed["cells"][-1]["outputs"][0]["ename"] == "ValueError"


def test_cell_failure_text() -> None:
    text = cell_failure(None, "KeyError", "'x'", ["\x1b[0;31mKeyError\x1b[0m: 'x'"])
    assert text.splitlines() == ["the notebook failed in a cell: KeyError: 'x'", "KeyError: 'x'"]


def test_an_executed_notebook_over_the_artifact_limit_is_reported(
    harness: Harness, capsys: Any
) -> None:
    use_notebook(harness, notebook("print('ran')\n"), {})
    harness.job_api.max_artifact_bytes = 100
    assert run_main(harness) == 0  # the notebook ran: the job succeeds without its copy

    assert harness.job_api.artifacts == {}
    err = capsys.readouterr().err
    assert "the executed notebook (" in err and "was not stored: an artifact of" in err
