"""``nimbus models card`` and ``nimbus datasets datasheet`` end to end: a real dataset
upload and a registered version on the session's registry server, the card's text set at
registration and edited through the CLI, the REST forms and their refusals checked over
HTTP."""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np

from nimbus.runtime.evaluation import evaluate
from tests.cli.conftest import Nimbus, Registry
from tests.helpers_models import insert_job

SCRIPT = "<script>alert(1)</script>"


def test_card_and_datasheet_through_cli_and_rest(
    nimbus: Nimbus, registry: Registry, tmp_path: Path
) -> None:
    server = registry.server
    cli = nimbus
    cli.env.update(NIMBUS_URL=server.url, NIMBUS_TOKEN=server.admin_token)
    rows = [f"a fine day number {i},good" for i in range(24)]
    rows += [f"a bad day number {i},bad" for i in range(16)]
    source = tmp_path / "moods.csv"
    source.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    dataset = cli.json(
        "datasets",
        "upload",
        "card-moods",
        str(source),
        "--motivation",
        f"Moods {SCRIPT}",
        "--license",
        "CC0",
    )

    truth = np.array([0, 0, 0, 1, 1, 1])
    pred = np.array([0, 0, 1, 1, 1, 1])
    probabilities = np.array(
        [[0.9, 0.1], [0.8, 0.2], [0.4, 0.6], [0.3, 0.7], [0.2, 0.8], [0.1, 0.9]]
    )
    evaluation = evaluate(truth, pred, dataset["classes"], probabilities)
    lineage = {"dataset": "card-moods", "version": 1, "content_hash": dataset["content_hash"]}
    job = insert_job(
        server.home, "default", registry.model_dir, evaluation=evaluation, dataset=lineage
    )
    cli(
        "models",
        "register",
        "card-model",
        "--from-job",
        job,
        "--description",
        f"Moods {SCRIPT}",
        "--intended-use",
        "Demos only.",
    )

    card = cli.json("models", "card", "card-model:1")
    assert card["description"] == f"Moods {SCRIPT}" and card["intended_use"] == "Demos only."
    assert card["model_details"]["dataset"]["content_hash"] == dataset["content_hash"]
    assert card["training_data"]["splits"]["train"] == dataset["splits"]["train"]
    assert card["evaluation"]["confusion_matrix"] == evaluation["confusion_matrix"]
    assert card["evaluation"]["calibration"]["ece"] == evaluation["calibration"]["ece"]
    flags = {f["kind"]: f["detail"] for f in card["limitations"]["flags"]}
    assert set(flags) == {"small_test_set", "low_recall"}  # 'bad': 2/3, mean 5/6
    assert flags["low_recall"]["class"] == "bad"

    markdown = cli("models", "card", "card-model:1", "--limitations", "Not for production.").stdout
    assert markdown.startswith("---\n") and "model-index:" in markdown
    assert "Not for production." in markdown and "Demos only." in markdown

    missing = cli("models", "card", "card-model@nosuch", "--format", "html", code=4)
    assert "nosuch" in missing.stderr
    page = cli("models", "card", "card-model", "--format", "html").stdout
    assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page

    headers = {"Authorization": f"Bearer {server.admin_token}"}
    base = f"{server.url}/api/v1"
    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        html = http.get("/models/card-model/versions/1/card", params={"format": "html"})
        assert html.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in html.headers["content-security-policy"]
        bad = http.get("/models/card-model/versions/1/card", params={"format": "pdf"})
        assert bad.status_code in (400, 422) and "format" in bad.text
        unknown = http.patch("/models/card-model/versions/1/card", json={"author": "me"})
        assert unknown.status_code in (400, 422) and "author" in unknown.text
        long = http.patch("/models/card-model/versions/1/card", json={"description": "x" * 20_001})
        assert long.status_code in (400, 422) and "description" in long.text
        cleared = http.patch("/models/card-model/versions/1/card", json={"limitations": None})
        assert cleared.status_code == 200 and cleared.json()["limitations"]["text"] is None
        events = http.get("/audit", params={"limit": 20}).json()["events"]
        assert any(
            e["action"] == "PATCH" and e["resource"].endswith("/card-model/versions/1/card")
            for e in events
        ), events

    sheet = cli.json("datasets", "datasheet", "card-moods:1")
    assert sheet["source"]["file_name"] == "moods.csv" and sheet["per_class"] == {
        "bad": 16,
        "good": 24,
    }
    assert sheet["uploaded_by"]["token"] is not None and sheet["split_method"]["stratified"]
    assert sheet["motivation"] == f"Moods {SCRIPT}" and sheet["license"] == "CC0"
    text = cli("datasets", "datasheet", "card-moods", "--uses", "Demos only.").stdout
    assert "# Datasheet for card-moods:1" in text and "moods.csv" in text
    assert "## Uses\n\nDemos only." in text and "License: CC0" in text
    page = cli("datasets", "datasheet", "card-moods:1", "--format", "html").stdout
    assert SCRIPT not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    refused = cli("datasets", "datasheet", "card-moods", "--license", "x" * 2_001, code=2)
    assert "license" in refused.stderr  # refused before it is sent

    with httpx.Client(base_url=base, headers=headers, timeout=30) as http:
        path = "/datasets/card-moods/versions/1/datasheet"
        html = http.get(path, params={"format": "html"})
        assert "default-src 'none'" in html.headers["content-security-policy"]
        long = http.patch(path, json={"composition": "x" * 20_001})
        assert long.status_code == 400 and "composition" in long.json()["error"]["message"]
        unknown = http.patch(path, json={"author": "me"})
        assert unknown.status_code == 400 and "author" in unknown.json()["error"]["message"]
        cleared = http.patch(path, json={"license": None})
        assert cleared.status_code == 200 and cleared.json()["license"] is None
        assert cleared.json()["uses"] == "Demos only."
        viewer = http.post("/tokens", json={"name": "sheet-reader", "role": "viewer"}).json()
        as_viewer = {"Authorization": f"Bearer {viewer['token']}"}
        assert http.get(path, headers=as_viewer).status_code == 200
        denied = http.patch(path, json={"uses": "mine"}, headers=as_viewer)
        assert denied.status_code == 403
        events = http.get("/audit", params={"limit": 20}).json()["events"]
        edits = [e for e in events if e["action"] == "PATCH" and e["resource"].endswith(path)]
        assert {e["status"] for e in edits} >= {200, 400, 403}, edits
