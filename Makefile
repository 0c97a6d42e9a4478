# The README's commands. `make demo` and `make test` each do all set-up on a fresh clone.
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch is pinned first: an unpinned torch pulls a multi-GB CUDA build.
TORCH_PIN ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: demo test install lint fmt clean bench

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH_PIN)"
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/longred demo --config configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check longred_pl tests benchmarks experiments
	$(BIN)/ruff format --check longred_pl tests benchmarks experiments

fmt: $(STAMP)
	$(BIN)/ruff format longred_pl tests benchmarks experiments
	$(BIN)/ruff check --fix longred_pl tests benchmarks experiments

# The step-cost benchmark at smoke sizes (checks that it runs; its figures mean nothing).
# The measured run: `$(BIN)/python -m benchmarks.step_cost` on a quiet machine (README).
bench: $(STAMP)
	$(BIN)/python -m benchmarks.step_cost --smoke

clean:
	rm -rf artifacts lightning_logs
