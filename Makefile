# The README's two commands: `make demo` and `make test`. Each creates .venv on first use.
VENV := .venv
PY := $(VENV)/bin/python

.PHONY: demo test env
env: $(VENV)/.ready
$(VENV)/.ready: pyproject.toml tools/setup_venv.sh
	bash tools/setup_venv.sh

demo: $(VENV)/.ready
	$(VENV)/bin/repro demo

test: $(VENV)/.ready
	bash tools/setup_slurm.sh
	bash tools/setup_datasets.sh
	$(PY) -m pytest -q -n 2 --durations=15

# The lent GPU's session (docs/gpu_session.md): gather what travels, then rehearse it on this CPU.
.PHONY: gpu-session
gpu-session: $(VENV)/.ready
	$(PY) tools/gpu_session.py --prepare
	$(PY) tools/gpu_session.py --dry-run /tmp/gpu-session-rehearsal
