# `make demo` and `make test` each create .venv when missing and install vq3d into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev
DEMO := runs/demo
DEMO_MINUTES ?= 15
# When make started: the demo's minutes count from here, so the install is part of them.
STARTED := $(shell date +%s)

.PHONY: demo test install bench clean

# What vq3d runs on, not byte-compiled: pip compiling every module of torch, transformers,
# scikit-image... took most of a fresh install's time (docs/results.md, "The demo's clock");
# Python compiles what a command imports when it imports it.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q --no-compile -c constraints.txt -e .
	touch $(STAMP)

# The test extras, then every installed module byte-compiled, since the suite starts many
# Python processes (pip skips files that do not compile, and so does this).
$(DEV_STAMP): $(STAMP)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	-$(BIN)/python -m compileall -q -j 0 "$$($(BIN)/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" > /dev/null
	touch $(DEV_STAMP)

install: $(DEV_STAMP)

# The whole pipeline on synthetic data within DEMO_MINUTES of make's start, install included
# -> $(DEMO)/index.html. Rerunning skips finished phases and resumes a killed training run.
demo: $(STAMP)
	$(BIN)/vq3d demo --out $(DEMO) --minutes $(DEMO_MINUTES) --started-at $(STARTED)

test: $(DEV_STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	for b in synth render loader sample viewer; do $(BIN)/vq3d bench $$b --json; done

clean:
	rm -rf runs
