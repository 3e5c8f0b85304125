"""The right to erasure end to end: a dataset version, a real job trained on it and a model
registered from that job; purging the version is listed and confirmed first, refused while
the model is deployed, a job on it is unfinished, or the confirmation is stale; then the
version's, the job's and the model's bytes are gone from storage (the blob store listed),
the job's logs too, and what remains is the job's row, its figures, and the audit entry."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimbus.client import Client
from nimbus.errors import Conflict, NotFound
from tests.api.conftest import blob_files
from tests.cli.conftest import Nimbus
from tests.e2e.test_fairness import loans_csv
from tests.helpers import ServerProcess


def names(paths: set[Path]) -> set[str]:
    return {p.name for p in paths}


@pytest.mark.slow
def test_a_purged_version_takes_what_was_made_from_it(
    api: Client, e2e_server: ServerProcess, tmp_path: Path
) -> None:
    home = e2e_server.home
    before = names(blob_files(home))
    version = api.upload_dataset("erase-me", loans_csv(tmp_path / "loans.csv"))
    other = api.upload_dataset("kept", loans_csv(tmp_path / "loans.csv"))  # same bytes
    job = api.wait_job(api.submit_job("erase-me:1", "mlp", params={"epochs": 2}).id, timeout=240)
    assert job.state == "succeeded" and job.artifacts
    model = api.register_model("erased-model", job.id)
    made = {f.key.split("/")[-1] for f in version.files.values()}
    made |= {a.key.split("/")[-1] for a in job.artifacts}
    made |= {f.key.split("/")[-1] for f in model.files.values()}
    assert made <= names(blob_files(home))

    listed = api.derived_from("erase-me:1")
    assert listed.jobs == [job.id] and listed.model_versions == ["erased-model:1"]
    with pytest.raises(Conflict, match="not what was confirmed"):
        api.purge_dataset_version("erase-me:1", "0" * 16)

    api.create_deployment("erased-serving", "erased-model:1")
    served = api.derived_from("erase-me:1")
    assert served.deployments == ["erased-serving"]
    with pytest.raises(Conflict, match="served by deployment"):
        api.purge_dataset_version("erase-me:1", served.fingerprint)
    api.delete_deployment("erased-serving")

    running = api.submit_job("erase-me:1", "mlp", params={"epochs": 5000, "batch_size": 1})
    busy = api.derived_from("erase-me:1")
    with pytest.raises(Conflict, match="still queued or running"):
        api.purge_dataset_version("erase-me:1", busy.fingerprint)
    api.cancel_job(running.id)
    api.wait_job(running.id, timeout=120)

    # The CLI lists what goes and asks first; --yes confirms.
    nimbus = Nimbus(
        {
            "NIMBUS_HOME": str(tmp_path / "cli"),
            "NIMBUS_URL": e2e_server.url,
            "NIMBUS_TOKEN": e2e_server.admin_token,
        }
    )
    asked = nimbus("datasets", "delete", "erase-me:1", "--purge", code=1, input="n\n")
    assert "model versions: erased-model:1" in asked.stdout and job.id in asked.stdout
    purged = nimbus.json("datasets", "delete", "erase-me:1", "--purge", "--yes")
    assert purged["model_versions"] == ["erased-model:1"] and purged["deleted_blobs"] > 0

    left = names(blob_files(home))
    kept_keys = {f.key.split("/")[-1] for f in other.files.values()}
    assert not (made - kept_keys) & left  # nothing made from it is left in storage...
    assert kept_keys <= left  # ...but the other dataset's identical bytes are kept
    assert left - before - kept_keys == set()
    with pytest.raises(NotFound):
        api.get_version("erase-me:1")
    with pytest.raises(NotFound):
        api.get_model_version("erased-model:1")
    after = api.get_job(job.id)
    assert after.artifacts == [] and after.evaluation == job.evaluation
    assert api.job_logs(job.id).chunks == []
    with e2e_server.client() as http:
        events = http.get("/api/v1/audit", params={"limit": 50}).json()["events"]
    assert any(e["resource"].endswith("/datasets/erase-me/versions/1/purge") for e in events)
