# `make demo` and `make test` each create .venv when missing and install vq3d into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo
DEMO_MINUTES ?= 14

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# The whole pipeline on synthetic data within DEMO_MINUTES (14: 15 with start-up) -> $(DEMO)/index.html.
# Rerunning skips finished phases and resumes a killed training run.
demo: $(STAMP)
	$(BIN)/vq3d demo --out $(DEMO) --minutes $(DEMO_MINUTES)

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	for b in synth render loader sample viewer; do $(BIN)/vq3d bench $$b --json; done

clean:
	rm -rf runs
