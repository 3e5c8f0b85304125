"""What an attempt's resources do inside the job process: its torch threads follow its CPUs,
even when forked from a zygote that imported torch before they were known; the C allocator
keeps freed tensor memory; its dataset is read into memory as far as a share of its memory
limit allows."""

from __future__ import annotations

import json
import platform
import textwrap
import time
from typing import Any

import numpy as np
import pytest

from nimbus.jobs.domain import Resources
from nimbus.jobs.executors.base import AttemptLaunch, Executor, Program
from nimbus.jobs.executors.forkserver import ForkServerExecutor
from nimbus.jobs.executors.local import LocalExecutor
from nimbus.runtime import allocator, entry
from nimbus.runtime.data import DataSplits, gather
from tests.runtime import synthetic
from tests.runtime.helpers import Harness, npy_bytes

REPORT = textwrap.dedent(
    """
    import json
    import resource
    import numpy as np
    import torch
    from nimbus import runtime as nr

    data = nr.dataset()
    # steps of the built-in cnn: a few MB of activations and gradients made and freed
    from nimbus.runtime.architectures import ImageCNN, ImagePreprocess
    torch.manual_seed(0)
    net = ImageCNN(1, 28, 28, 10, ImagePreprocess([0.5], [0.25]))
    optimizer = torch.optim.Adam(net.parameters())
    x = torch.randint(0, 256, (64, 28, 28, 1), dtype=torch.uint8)
    y = torch.randint(0, 10, (64,))
    def step():
        loss = torch.nn.functional.cross_entropy(net(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    for _ in range(3):
        step()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step()
    faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
    print("REPORT " + json.dumps({
        "threads": torch.get_num_threads(),
        "mapped": {s: isinstance(getattr(data, s).x, np.memmap) for s in ("train", "val", "test")},
        "faults_per_step": faults,
    }), flush=True)
    """
).encode()


def run_attempt(harness: Harness, executor: Executor, cpus: float) -> dict[str, Any]:
    """Run the REPORT script as a real attempt asking for ``cpus`` on ``executor``; what it
    printed."""
    harness.job_api.job(synthetic.digits(limit=60), code=REPORT, cpus=cpus)
    resources = Resources(cpus=cpus, memory_bytes=0)
    env = harness.env()
    chunks: list[str] = []
    launch = AttemptLaunch(
        job_id="job_1",
        attempt_id=env["NIMBUS_ATTEMPT_ID"],
        attempt_number=1,
        token=env["NIMBUS_JOB_TOKEN"],
        program=Program(module="nimbus.runtime.entry"),
        workdir=harness.root / "jobs" / f"job_1-{time.monotonic_ns()}",
        nimbus_url=env["NIMBUS_URL"],
        resources=resources,
        extra_env={k: env[k] for k in ("NIMBUS_CACHE_DIR", "NIMBUS_HEARTBEAT_SECONDS")},
        output=chunks.append,
    )
    handle = executor.start(launch)
    deadline = time.monotonic() + 120
    while (status := executor.poll(handle)) is None:
        assert time.monotonic() < deadline, "".join(chunks)
        time.sleep(0.05)
    output = "".join(chunks)
    assert status.ok, output
    line = next(ln for ln in output.splitlines() if ln.startswith("REPORT "))
    found: dict[str, Any] = json.loads(line.removeprefix("REPORT "))
    return found


@pytest.mark.parametrize("kind", ["forkserver", "local"])
def test_an_attempts_torch_threads_are_its_cpus(harness: Harness, kind: str) -> None:
    """The zygote imported torch with the machine's thread count; each forked attempt gets
    its own CPUs' worth, two attempts in a row from one zygote included."""
    root = harness.root / kind
    executor: Executor = (
        ForkServerExecutor(root, preload=["torch", "nimbus.runtime.entry"], grace_seconds=1)
        if kind == "forkserver"
        else LocalExecutor(root, grace_seconds=1)
    )
    try:
        one = run_attempt(harness, executor, 1)
        two = run_attempt(harness, executor, 2)
        fraction = run_attempt(harness, executor, 0.5)
    finally:
        executor.close()
    assert (two["threads"], one["threads"], fraction["threads"]) == (2, 1, 1)
    # freed tensor memory is kept for the next step, not faulted in again (~4,000 page
    # faults a step when glibc returns it to the system each time; ~100-200 with it kept,
    # the rest being first touches that vary with the machine's load: the bound sits between)
    assert max(r["faults_per_step"] for r in (one, two, fraction)) < 1000


def test_keeping_freed_memory_is_applied_where_glibc_is() -> None:
    assert allocator.keep_freed_memory() is (platform.libc_ver()[0] == "glibc")


def test_splits_are_read_into_memory_as_far_as_the_limit_allows(harness: Harness) -> None:
    data = synthetic.digits(limit=300)
    version = harness.job_api.use_dataset(data)
    train_bytes = data.train.x.nbytes
    with harness.client() as client:
        loaded = {
            limit: entry.load_data(client, version, harness.root / f"data-{limit}", limit)
            for limit in (1 << 30, int(train_bytes / entry.IN_MEMORY_SHARE), 1)
        }
    roomy, train_only, tight = loaded.values()
    mapped = {
        name: [isinstance(getattr(d, s).x, np.memmap) for s in ("train", "val", "test")]
        for name, d in (("roomy", roomy), ("train_only", train_only), ("tight", tight))
    }
    assert mapped == {
        "roomy": [False, False, False],
        "train_only": [False, True, True],  # train first: it is read every step
        "tight": [True, True, True],
    }
    for d in loaded.values():
        np.testing.assert_array_equal(d.train.x, data.train.x)
        np.testing.assert_array_equal(d.test.y, data.test.y)


def test_gather_reads_the_same_rows_from_memory_and_from_a_mapped_file(tmp_path: Any) -> None:
    x = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    (tmp_path / "x.npy").write_bytes(npy_bytes(x))
    mapped = np.load(tmp_path / "x.npy", mmap_mode="r")
    idx = np.array([7, 3, 49, 0, 3, 12])
    assert isinstance(mapped, np.memmap)
    for source in (x, mapped):
        rows = gather(source, idx)
        assert type(rows) is np.ndarray and rows.flags.c_contiguous
        np.testing.assert_array_equal(rows, x[idx])


def test_an_unlimited_worker_reads_splits_up_to_the_fixed_budget(harness: Harness) -> None:
    data = synthetic.digits(limit=120)
    version = harness.job_api.use_dataset(data)
    with harness.client() as client:
        found = entry.load_data(client, version, harness.root / "unlimited", 0)
    assert isinstance(found, DataSplits) and not isinstance(found.train.x, np.memmap)
    assert data.train.x.nbytes <= entry.IN_MEMORY_UNLIMITED
