"""Fills an MLflow tracking store with the runs ``bench/console_peer.py`` exported: run by the
PEER's Python (the venv that has ``mlflow``), never by Nimbus's.

    PEER_PYTHON bench/_mlflow_fill.py RUNS.json sqlite:///PATH/mlflow.db ARTIFACT_ROOT

MLflow's own ``SqlAlchemyStore`` creates the schema (its Alembic migrations) and the
experiment ``console-bench``; the runs then go in as bulk inserts through the store's ORM
models (``SqlRun``, ``SqlTag``, ``SqlParam``, ``SqlMetric``, ``SqlLatestMetric``) in one
session: the rows ``create_run`` + ``log_batch`` would write (``latest_metrics`` holding each
key's highest step), without 10,000 REST round trips. Prints the experiment id.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from mlflow.store.tracking.dbmodels.models import (
    SqlLatestMetric,
    SqlMetric,
    SqlParam,
    SqlRun,
    SqlTag,
)
from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore
from sqlalchemy import insert


def main() -> None:
    source, uri, artifacts = sys.argv[1:4]
    started = time.perf_counter()
    store = SqlAlchemyStore(uri, artifacts)
    experiment = store.create_experiment("console-bench")
    runs = json.loads(Path(source).read_text())
    rows, tags, params, metrics, latest = [], [], [], [], []
    for run in runs:
        run_id = run["run_id"]
        rows.append(
            {
                "run_uuid": run_id,
                "name": run["name"],
                "source_type": "UNKNOWN",
                "source_name": "",
                "entry_point_name": "",
                "user_id": "bench",
                "status": run["status"],
                "start_time": run["start_time"],
                "end_time": run["end_time"],
                "source_version": "",
                "lifecycle_stage": "active",
                "artifact_uri": f"{artifacts}/{experiment}/{run_id}/artifacts",
                "experiment_id": int(experiment),
            }
        )
        tags.append({"key": "mlflow.runName", "value": run["name"], "run_uuid": run_id})
        tags.append({"key": "mlflow.user", "value": "bench", "run_uuid": run_id})
        params.extend(
            {"key": key, "value": value, "run_uuid": run_id} for key, value in run["params"].items()
        )
        last: dict[str, tuple[int, dict[str, object]]] = {}
        for key, step, timestamp, value in run["metrics"]:
            row = {
                "key": key,
                "value": value,
                "timestamp": timestamp,
                "step": step,
                "is_nan": False,
                "run_uuid": run_id,
            }
            metrics.append(row)
            if key not in last or step >= last[key][0]:
                last[key] = (step, row)
        latest.extend(row for _, row in last.values())
    with store.ManagedSessionMaker() as session:
        for model, values in (
            (SqlRun, rows),
            (SqlTag, tags),
            (SqlParam, params),
            (SqlMetric, metrics),
            (SqlLatestMetric, latest),
        ):
            for at in range(0, len(values), 50_000):
                session.execute(insert(model), values[at : at + 50_000])
    print(
        json.dumps(
            {
                "experiment_id": experiment,
                "runs": len(rows),
                "metrics": len(metrics),
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
    )


if __name__ == "__main__":
    main()
