# make demo                 export the embedded demo XP end to end (creates .venv on first use)
# make test                 the whole test suite (what .ci/run runs)
# make test-fast            the tests not marked slow: feedback in about a minute
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

test: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: venv
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy
	$(VENV)/bin/shellcheck .ci/run scripts/*.sh
