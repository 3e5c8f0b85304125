"""The import graph keeps its shape: no cycle between packages, one-way layers, light faces.

Packages are the first level under ``nimbus`` (api, cli, client, datasets, db, explain, jobs,
modelformat, runtime, services, serving, storage, studies, wire) and its top-level modules
(server, config, digests, errors, names, ranges, ranged_get, security, system, ticker,
demo_data, and the ``nimbus`` face itself). Imports are read from the source
(tests/helpers_imports.py), function-level ones included.

The layers, top to bottom (each may also import the wire, the domain and bottom modules)::

    cli ──> client                       (SDK; cli/server, cli/edge, cli/demo* are exceptions)
    server ──> api ──> services ──> db, storage, datasets, jobs, studies, modelformat,
                                    serving.fleet
    serving (a replica) ──> modelformat, runtime.architectures, explain
    runtime (a job) ──> modelformat, datasets

The *bottom* modules (errors, names, ranges, ranged_get, security, system, config, ticker,
digests, and ``__version__`` from the ``nimbus`` face) import nothing of Nimbus but each
other; the *domain* modules (datasets.domain, jobs.domain: plain enums and dataclasses, the
words the wire uses) import nothing of Nimbus but the bottom modules. Both may be imported
from anywhere.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field

import pytest

from tests.helpers_imports import (
    ROOT,
    SRC,
    Import,
    cycles,
    imports,
    modules,
    package_graph,
    package_of,
    third_party,
)

BOTTOM = (
    "nimbus.errors",
    "nimbus.names",
    "nimbus.ranges",
    "nimbus.ranged_get",
    "nimbus.security",
    "nimbus.system",
    "nimbus.config",
    "nimbus.ticker",
    "nimbus.digests",
)
DOMAIN = ("nimbus.datasets.domain", "nimbus.jobs.domain")
ANYWHERE = (*BOTTOM, *DOMAIN)
EVERY_PACKAGE = (
    "api",
    "cli",
    "client",
    "datasets",
    "db",
    "explain",
    "jobs",
    "modelformat",
    "runtime",
    "services",
    "serving",
    "storage",
    "studies",
    "wire",
)


@dataclass(frozen=True)
class Rule:
    """Modules under ``source`` may import only ``allowed`` (and anything under those), or
    may import anything but ``forbidden``; ``ANYWHERE`` and ``source`` itself always."""

    source: str
    why: str
    allowed: tuple[str, ...] | None = None
    forbidden: tuple[str, ...] = ()
    exceptions: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def breaks(self, imp: Import) -> bool:
        if not _under(imp.source, [self.source]) or _under(imp.target, [self.source]):
            return False
        extra = self.exceptions.get(imp.source, ())
        if imp.target == ROOT or _under(imp.target, [*ANYWHERE, *extra]):
            return False  # ``from nimbus import __version__`` is a bottom import
        if self.allowed is not None and not _under(imp.target, self.allowed):
            return True
        return _under(imp.target, self.forbidden)


def _under(module: str, prefixes: Iterable[str]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in prefixes)


RULES = [
    Rule(
        "nimbus.cli",
        "the CLI reaches the control plane over HTTP, through the SDK",
        allowed=("nimbus.client", "nimbus.wire"),
        exceptions={
            # `nimbus server` starts the control plane in this process.
            "nimbus.cli.server": ("nimbus.server",),
            # `nimbus admin rotate-key` re-wraps the data keys in the server's own database.
            "nimbus.cli.admin": ("nimbus.server",),
            # `nimbus serve MODEL_DIR` runs the inference server here, without a control plane.
            "nimbus.cli.edge": ("nimbus.serving", "nimbus.modelformat"),
            # `nimbus demo` embeds a server (a child process: cli/embedded.py) and makes
            # the demo's data locally.
            "nimbus.cli.demo": ("nimbus.demo_data",),
            "nimbus.cli.demo_serving": ("nimbus.demo_data",),
        },
    ),
    Rule(
        "nimbus.client",
        "the SDK talks HTTP and runs anywhere: no server-side code",
        # The built-in models' parameter schemas name the built-ins the SDK accepts; a
        # study's --param words are read as the server reads their JSON form.
        allowed=("nimbus.wire", "nimbus.runtime.hyperparams", "nimbus.studies.space"),
    ),
    Rule(
        "nimbus.wire",
        "the wire format is shared by the SDK and the server: pydantic and the words only",
        allowed=(),
    ),
    Rule(
        "nimbus.server",
        "the control plane does not go through its own SDK or CLI",
        forbidden=("nimbus.cli", "nimbus.client"),
    ),
    Rule(
        "nimbus.api",
        "routes call services; models, serving and jobs' processes are the services' business",
        forbidden=(
            "nimbus.server",
            "nimbus.cli",
            "nimbus.client",
            "nimbus.runtime",
            "nimbus.serving",
            "nimbus.modelformat",
        ),
    ),
    Rule(
        "nimbus.services",
        "use cases sit over the stores, the domain and the fleet, below the HTTP layer",
        allowed=(
            "nimbus.db",
            "nimbus.storage",
            "nimbus.datasets",
            "nimbus.jobs",
            "nimbus.modelformat",
            "nimbus.serving.fleet",
            "nimbus.studies",
            "nimbus.wire",
            # Submitted params are validated against the built-ins' schemas (no torch).
            "nimbus.runtime.hyperparams",
        ),
    ),
    Rule(
        "nimbus.db",
        "the metadata store knows the queue's pure parts, not the scheduler or executors",
        allowed=(
            "nimbus.jobs.domain",
            "nimbus.jobs.policy",
            "nimbus.jobs.capacity",
            "nimbus.jobs.queue",
            "nimbus.jobs.tokens",
            # A trial row becomes the record the study's decisions read.
            "nimbus.studies.search",
        ),
    ),
    Rule(
        "nimbus.jobs",
        "the scheduler reaches the queue through jobs.queue.JobQueue, never the database",
        allowed=(),
    ),
    Rule("nimbus.storage", "the blob store is a bottom layer", allowed=()),
    Rule(
        "nimbus.studies",
        "a study's spaces, sampling and pruning are pure: their trials are the services' jobs",
        # A space is checked against the built-ins' parameter schemas (no torch).
        allowed=("nimbus.runtime.hyperparams",),
    ),
    Rule("nimbus.datasets", "ingest is plain Python over files", allowed=()),
    Rule(
        "nimbus.explain",
        "attributions are computed over a module and tensors: a replica runs them",
        # A text's slots are traced to its words by the encoder serving uses.
        allowed=("nimbus.modelformat",),
    ),
    Rule(
        "nimbus.modelformat",
        "the model format is read by serving and written by runtime: it imports neither",
        allowed=(),
    ),
    Rule(
        "nimbus.runtime",
        "a job's process holds only its job token: no server-side code",
        allowed=("nimbus.modelformat", "nimbus.datasets", "nimbus.wire"),
    ),
    Rule(
        "nimbus.serving",
        "replicas serve one model: no metadata store, no services, no API",
        # The PyTorch backend rebuilds a built-in architecture; /predict fits photos with
        # the very function ingest used.
        allowed=(
            "nimbus.modelformat",
            "nimbus.runtime.architectures",
            "nimbus.wire",
            "nimbus.datasets.imagefit",
            "nimbus.explain",  # the explain route's attributions
        ),
    ),
]


@pytest.fixture(scope="module")
def found() -> list[Import]:
    return imports()


def test_the_graph_is_read(found: list[Import]) -> None:
    """A guard for the guard: the parser sees the imports these rules are about."""
    pairs = {(imp.source, imp.target) for imp in found}
    assert ("nimbus.server", "nimbus.api.app") in pairs
    assert ("nimbus.cli.edge", "nimbus.serving.app") in pairs  # a function-level import
    assert ("nimbus", "nimbus.client") in pairs  # the lazy face (importlib.import_module)
    assert ("nimbus.runtime.entry", "nimbus.modelformat.export") in pairs
    assert set(package_graph(found)) >= {*EVERY_PACKAGE, "server", "errors", "names"}


def test_no_cycle_between_packages(found: list[Import]) -> None:
    graph = package_graph(found)
    assert cycles(graph) == [], "\n".join(
        f"{cycle}: " + ", ".join(str(i) for i in found if _inside(i, cycle))
        for cycle in cycles(graph)
    )


def _inside(imp: Import, cycle: list[str]) -> bool:
    source, target = package_of(imp.source), package_of(imp.target)
    return source != target and source in cycle and target in cycle


def test_the_layers_point_one_way(found: list[Import]) -> None:
    broken = [f"{imp}  ({rule.why})" for rule in RULES for imp in found if rule.breaks(imp)]
    assert broken == [], "\n".join(broken)


def test_bottom_and_domain_modules_import_only_bottom_modules(found: list[Import]) -> None:
    known = modules()
    assert set(ANYWHERE) <= set(known)
    broken = [
        str(imp)
        for imp in found
        if imp.source in ANYWHERE and not (imp.target in BOTTOM or imp.target == ROOT)
    ]
    assert broken == []


def test_the_nimbus_face_imports_only_the_sdk_it_re_exports(found: list[Import]) -> None:
    assert {imp.target for imp in found if imp.source == ROOT} == {"nimbus.client"}


def test_wire_imports_only_pydantic() -> None:
    outside = {imp.target for imp in third_party() if imp.source.startswith("nimbus.wire")}
    assert outside <= {"pydantic"}


def test_the_rules_catch_what_they_are_for() -> None:
    """Each rule refuses a typical wrong import (so a rule that matches nothing fails here)."""
    wrong = [
        Import("nimbus.cli.jobs", "nimbus.services.jobs", 1),
        Import("nimbus.cli.datasets", "nimbus.serving.app", 1),
        Import("nimbus.client.jobs", "nimbus.db.jobs", 1),
        Import("nimbus.wire.base", "nimbus.services.jobs", 1),
        Import("nimbus.server", "nimbus.client", 1),
        Import("nimbus.api.routes.jobs", "nimbus.server", 1),
        Import("nimbus.services.jobs", "nimbus.api.state", 1),
        Import("nimbus.services.models", "nimbus.serving.app", 1),
        Import("nimbus.db.jobs", "nimbus.jobs.scheduler", 1),
        Import("nimbus.jobs.scheduler", "nimbus.db.jobs", 1),
        Import("nimbus.storage.local", "nimbus.db.engine", 1),
        Import("nimbus.datasets.ingest", "nimbus.storage.blobs", 1),
        Import("nimbus.modelformat.export", "nimbus.runtime.architectures", 1),
        Import("nimbus.runtime.entry", "nimbus.jobs.scheduler", 1),
        Import("nimbus.serving.app", "nimbus.db.engine", 1),
    ]
    for imp in wrong:
        assert [r.source for r in RULES if r.breaks(imp)], f"no rule refuses {imp}"
    fine = [
        Import("nimbus.cli.server", "nimbus.server", 1),
        Import("nimbus.cli.jobs", "nimbus.jobs.domain", 1),
        Import("nimbus.runtime.entry", "nimbus.jobs.domain", 1),
        Import("nimbus.serving.app", "nimbus", 1),
    ]
    for imp in fine:
        assert not [r.source for r in RULES if r.breaks(imp)], f"a rule refuses {imp}"


HEAVY = ("httpx", "uvicorn", "fastapi", "torch", "prometheus_client", "PIL", "optuna")
LIGHT_FACES = [
    "nimbus",
    "nimbus.modelformat.spec",
    "nimbus.modelformat.files",
    "nimbus.serving.fleet.supervisor",
    *(f"nimbus.{package}" for package in EVERY_PACKAGE if package != "client"),
    *BOTTOM,
    *DOMAIN,
]


def loaded_by(module: str, watched: Iterable[str]) -> list[str]:
    """Which of ``watched`` a fresh interpreter has loaded after ``import module``."""
    code = (
        f"import sys; import {module}; "
        f"print(' '.join(m for m in {tuple(watched)!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    return done.stdout.split()


@pytest.mark.parametrize("module", sorted(set(LIGHT_FACES)))
def test_package_faces_stay_light(module: str) -> None:
    assert loaded_by(module, HEAVY) == []


def test_the_control_plane_does_not_load_torch() -> None:
    """Nor what serves a rare request only: its peak RSS is a target (docs/storage.md)."""
    assert loaded_by("nimbus.server", ("torch", "nbformat", "jsonschema")) == []


def test_a_job_loads_the_automl_families_only_for_automl() -> None:
    """Every job's process (and the fork server's zygote) imports the job entry: AutoML's
    learners and their ONNX converters are imported by AutoML jobs alone."""
    assert loaded_by("nimbus.runtime.entry", ("skl2onnx", "sklearn.ensemble")) == []


def test_the_cli_starts_without_numpy_or_torch() -> None:
    """Every ``nimbus`` command pays for what the CLI imports at start (a download or an
    upload too): numpy is the demo's, the predictions' and the edge server's alone."""
    assert loaded_by("nimbus.cli.app", ("numpy", "torch", "sqlalchemy", "fastapi")) == []


def test_the_lazy_face_still_gives_the_sdk() -> None:
    code = (
        "from nimbus import Client; import nimbus; "
        "print(Client.__module__, 'Client' in dir(nimbus))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(SRC)},
    )
    assert done.stdout.split() == ["nimbus.client", "True"]
