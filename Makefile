# lungkit: every target creates .venv and installs the package into it on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
# CPU TensorFlow by default; `make test EXTRAS=gpu,test` on a CUDA machine.
EXTRAS ?= cpu,test
PYTEST_ARGS ?=

.PHONY: demo test bench lint clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[$(EXTRAS)]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/lungkit demo --out runs/demo

test: $(STAMP)
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=10 $(PYTEST_ARGS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks --out benchmarks/results.md

lint: $(STAMP)
	$(BIN)/ruff check lungkit tests benchmarks

clean:
	rm -rf $(VENV) runs .pytest_cache
