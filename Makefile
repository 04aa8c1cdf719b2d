# make demo                 export the embedded demo XP end to end (creates .venv on first use)
# make test                 the whole test suite (what .ci/run runs), with line coverage
# make test-fast            the tests not marked slow, in two processes: feedback in a minute
# make lint                 ruff, mypy and shellcheck: zero findings expected
# make test STACK=pinned    the same on audiocraft's own torch 2.1 stack (.venv-pinned)
# ARGS="..." passes Hydra overrides to `make demo`; PYTEST_ARGS="..." passes options to pytest.
STACK ?= modern
VENV ?= $(if $(filter pinned,$(STACK)),.venv-pinned,.venv)
export STACK VENV
export OMP_NUM_THREADS ?= 1

.PHONY: venv demo test test-fast lint
venv:
	@bash scripts/setup_venv.sh

demo: venv
	$(VENV)/bin/python export_app.py $(ARGS)

# Line coverage of the package by the tests' own processes (pytest-cov): the table, then the
# total on one line. The data file is the venv's, one per stack (.ci/run tests both at once).
# `make test-fast` runs in FAST_WORKERS processes (pytest-xdist; 0: in pytest's own process).
COVERAGE_FILE ?= $(VENV)/.coverage
COVERAGE = --cov=audiocraft_ext --cov-report=term
TOTAL = $(VENV)/bin/coverage report --format=total
FAST_WORKERS ?= 2

test: venv
	COVERAGE_FILE=$(COVERAGE_FILE) $(VENV)/bin/python -m pytest $(COVERAGE) $(PYTEST_ARGS)
	@echo "line coverage of audiocraft_ext: $$(COVERAGE_FILE=$(COVERAGE_FILE) $(TOTAL))%"

test-fast: venv
	COVERAGE_FILE=$(COVERAGE_FILE) $(VENV)/bin/python -m pytest -m "not slow" \
		-n $(FAST_WORKERS) $(COVERAGE) $(PYTEST_ARGS)
	@echo "line coverage of audiocraft_ext: $$(COVERAGE_FILE=$(COVERAGE_FILE) $(TOTAL))%"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/shellcheck .ci/run scripts/*.sh
