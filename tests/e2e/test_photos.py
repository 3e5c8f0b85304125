"""The issue's journey with a photo folder: mixed sizes and modes uploaded, a cnn job trained
in a real job process, deployed, and every photo sent to /predict (raw and as a form) gives
what /infer gives on the tensor ingest made of it. Real server, job and replica processes."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pytest

from nimbus.client import Client
from tests.helpers import ServerProcess
from tests.helpers_photos import photo_members, photo_zip

pytestmark = pytest.mark.slow


def test_photos_upload_train_deploy_and_predict_like_ingest(
    api: Client, e2e_server: ServerProcess, tmp_path: Path
) -> None:
    members = photo_members(15)
    source = photo_zip(tmp_path / "photos.zip", members)
    version = api.upload_dataset("photos", source, image_size=(28, 36))
    assert version.data_schema["shape"] == [28, 36, 3]
    assert version.data_schema["transform"]["fit"] == "crop"

    job = api.submit_job(f"photos:{version.version}", "cnn", params={"epochs": 2})
    job = api.wait_job(job.id, timeout=300)
    assert job.state == "succeeded", job
    model = api.register_model("photos", job.id)
    spec = api.get_model_version(f"photos:{model.version}").spec
    assert spec["preprocessing"]["transform"] == version.data_schema["transform"]

    api.create_deployment("photos", f"photos:{model.version}")
    api.wait_deployment("photos", timeout=120)
    try:
        folder = tmp_path / "data"
        api.download_dataset(f"photos:{version.version}", folder)
        rows = np.concatenate([np.load(folder / f"{s}_x.npy") for s in ("train", "val", "test")])
        inferred = api.infer("photos", rows)["probabilities"].astype(np.float32)
        endpoint = api.get_deployment("photos").endpoint
        url = f"{endpoint}/v2/models/photos/predict"
        auth = {"Authorization": f"Bearer {e2e_server.admin_token}"}
        with httpx.Client(headers=auth) as http:
            for name, data in members.items():
                raw = api.predict("photos", data=data)
                form = http.post(url, files={"file": (Path(name).name, data)})
                assert form.status_code == 200, form.text
                assert form.json() == raw
                got = np.asarray(list(raw["probabilities"].values()), np.float32)
                # the photo's tensor is one of the dataset's rows: its scores are one of theirs
                assert (inferred == got).all(axis=1).any(), name
    finally:
        api.delete_deployment("photos")
