"""Which GPUs an attempt's workers get on the local executors: the machine's GPUs, one set
per worker, never one GPU to two attempts, and none pinned for a job that asked for none.

The machine's GPUs are given here (this machine has none): the executors' processes are
real, and each prints the environment it was started with."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimbus.jobs.domain import Resources
from nimbus.jobs.executors.base import Executor
from nimbus.jobs.gpus import GpuSlots, GpusUnavailable, machine_gpus
from tests.jobs.conftest import Run

SHOW = (
    "import json, os; print(json.dumps({k: os.environ.get(k) for k in "
    "('CUDA_VISIBLE_DEVICES', 'CUDA_DEVICE_ORDER')}))"
)


def driver(tmp_path: Path, buses: int) -> Path:
    proc = tmp_path / "gpus"
    for bus in range(buses):
        (proc / f"0000:{bus + 1:02x}:00.0").mkdir(parents=True)
    return proc


def test_the_machines_gpus_are_the_drivers_narrowed_as_cuda_reads_the_variable(
    tmp_path: Path,
) -> None:
    proc = driver(tmp_path, 4)
    assert machine_gpus(proc, {}) == ("0", "1", "2", "3")
    assert machine_gpus(tmp_path / "no-driver", {}) == ()
    assert machine_gpus(proc, {"CUDA_VISIBLE_DEVICES": "2,3"}) == ("2", "3")
    assert machine_gpus(proc, {"CUDA_VISIBLE_DEVICES": " 3 , 1"}) == ("3", "1")
    # CUDA stops at the first invalid entry: "-1" hides every GPU after it, "" all of them.
    assert machine_gpus(proc, {"CUDA_VISIBLE_DEVICES": "1,-1,2"}) == ("1",)
    assert machine_gpus(proc, {"CUDA_VISIBLE_DEVICES": ""}) == ()
    uuids = "GPU-5e0c3f2a,GPU-77a1"
    assert machine_gpus(proc, {"CUDA_VISIBLE_DEVICES": uuids}) == ("GPU-5e0c3f2a", "GPU-77a1")
    # Never more than the driver runs, whatever the variable lists.
    assert machine_gpus(driver(tmp_path / "one", 1), {"CUDA_VISIBLE_DEVICES": "0,1"}) == ("0",)


def test_slots_give_each_worker_its_own_gpus_and_never_one_gpu_twice() -> None:
    slots = GpuSlots(["0", "1", "2", "3", "4"])
    assert slots.take("a", 2, 2) == ["0,1", "2,3"]
    assert slots.take("cpu", 0, 4) is None  # asked for none: nothing pinned, nothing held
    with pytest.raises(GpusUnavailable, match="granted 2 GPUs but 1 of this machine's 5"):
        slots.take("b", 1, 2)
    assert slots.held() == {"a": ("0", "1", "2", "3")}  # the refused attempt holds nothing
    assert slots.take("c", 1, 1) == ["4"]
    slots.release("a")
    assert slots.take("b", 1, 2) == ["0", "1"]
    assert slots.held() == {"b": ("0", "1"), "c": ("4",)}
    slots.release("unknown")  # an attempt that held none
    assert GpuSlots([]).take("x", 1, 1) is None  # no driver: jobs run on the CPU


@pytest.fixture
def gpu_machine(executor: Executor) -> Iterator[Executor]:
    """The executor on a machine with three GPUs."""
    saved = executor.gpus  # type: ignore[attr-defined]
    executor.gpus = GpuSlots(["0", "1", "2"])  # type: ignore[attr-defined]
    yield executor
    executor.gpus = saved  # type: ignore[attr-defined]


def seen(run: Run) -> list[dict[str, str | None]]:
    assert run.wait().ok, run.output
    lines = sorted(run.output.splitlines())
    return [json.loads(line.split("] ", 1)[1] if line.startswith("[") else line) for line in lines]


def test_each_worker_sees_its_own_gpu_and_attempts_never_share_one(
    gpu_machine: Executor,
) -> None:
    pair = Run(
        gpu_machine,
        SHOW + "\nimport time; time.sleep(0.5)",
        resources=Resources(cpus=1, gpus=1, memory_bytes=0, workers=2),
    )
    other = Run(gpu_machine, SHOW, resources=Resources(cpus=1, gpus=1, memory_bytes=0))
    with pytest.raises(GpusUnavailable):  # all three are held: a fourth is refused
        Run(gpu_machine, SHOW, resources=Resources(cpus=1, gpus=1, memory_bytes=0))
    assert [s["CUDA_VISIBLE_DEVICES"] for s in seen(pair)] == ["0", "1"]
    assert seen(other) == [{"CUDA_VISIBLE_DEVICES": "2", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}]
    # Ended attempts gave theirs back; one asking for none sees none.
    two = Run(gpu_machine, SHOW, resources=Resources(cpus=1, gpus=2, memory_bytes=0))
    assert seen(two) == [{"CUDA_VISIBLE_DEVICES": "0,1", "CUDA_DEVICE_ORDER": "PCI_BUS_ID"}]
    none = Run(gpu_machine, SHOW, resources=Resources(cpus=1, gpus=0, memory_bytes=0))
    assert seen(none) == [{"CUDA_VISIBLE_DEVICES": "", "CUDA_DEVICE_ORDER": None}]
    assert gpu_machine.gpus.held() == {}  # type: ignore[attr-defined]
