"""Killing the control plane (SIGKILL of its process group) loses no job and runs none twice."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nimbus.jobs.domain import AttemptState, JobState
from nimbus.wire.jobs import LogChunk, LogEnd, LogEvent
from tests.e2e.conftest import (
    Store,
    client_for,
    job_processes,
    start_server,
    upload_digits,
    wait_for,
)

JOBS = 3  # two run (two CPUs), one waits in the queue
PARAMS = {"epochs": "5", "batch_size": "16"}


@pytest.mark.slow
def test_every_job_finishes_exactly_once_after_a_server_crash(tmp_path: Path) -> None:
    home = tmp_path / "home"
    server = start_server(home)
    store = Store(home)
    try:
        with client_for(server) as api:
            dataset = upload_digits(api, tmp_path)
            ids = [api.submit_job(dataset, "cnn", params=PARAMS, seed=i).id for i in range(JOBS)]

            def running_with_checkpoint() -> bool:
                states = [api.get_job(job_id).state for job_id in ids]
                running = [i for i, s in zip(ids, states, strict=True) if s == "running"]
                return (
                    len(running) == 2
                    and "queued" in states
                    and any(store.checkpoint_step(job_id) for job_id in running)
                )

            wait_for(
                "two running jobs, one checkpointed, and a queue", running_with_checkpoint, 120
            )
            was_running = {job_id for job_id in ids if api.get_job(job_id).state == "running"}

        # A follower that lives through the crash: the SDK resumes the stream after a restart.
        events: list[LogEvent] = []
        follower_api = client_for(server)
        follower = threading.Thread(target=lambda: events.extend(follower_api.follow_logs(ids[0])))
        follower.start()
        server.kill()
        server = start_server(home, port=server.port)  # same NIMBUS_HOME, same address

        with client_for(server) as api:
            jobs = [api.wait_job(job_id, timeout=240) for job_id in ids]
        follower.join(60)
        follower_api.close()
        end = events[-1] if events else None
        assert isinstance(end, LogEnd) and end.state is JobState.SUCCEEDED, events[-1:]
        seqs = [e.seq for e in events if isinstance(e, LogChunk)]
        assert seqs == sorted(set(seqs))  # resumed where it left off: nothing twice
        for job in jobs:
            assert job.state == "succeeded", job
            assert job.evaluation and job.evaluation["accuracy"] > 0.5, job
            attempts = store.attempts(job.id)
            succeeded = [a for a in attempts if a.state is AttemptState.SUCCEEDED]
            assert len(succeeded) == 1, attempts
            assert attempts[-1] == succeeded[0]
            assert store.result(job.id) is not None
            if job.id in was_running:
                assert len(attempts) >= 2, attempts  # the crash cost an attempt, not the job
            assert job_processes(home, job.id) == []
    finally:
        store.close()
        server.stop()
