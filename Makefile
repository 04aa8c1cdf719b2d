# make demo                 export the embedded demo XP end to end (creates .venv on first use)
# make test                 run the test suite
# make test STACK=pinned    the same on audiocraft's own torch 2.1 stack (.venv-pinned)
# ARGS="..." passes Hydra overrides to `make demo`; PYTEST_ARGS="..." passes options to pytest.
STACK ?= modern
VENV ?= $(if $(filter pinned,$(STACK)),.venv-pinned,.venv)
export STACK VENV
export OMP_NUM_THREADS ?= 1

.PHONY: venv demo test
venv:
	@bash scripts/setup_venv.sh

demo: venv
	$(VENV)/bin/python export_app.py $(ARGS)

test: venv
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)
