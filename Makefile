# `make demo` and `make test` each create .venv when missing and install vq3d into it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO := runs/demo
DEMO_MINUTES ?= 5

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

install: $(STAMP)

# Synthetic dataset -> contact sheet -> a short Stage-1 run -> held-out evaluation (JSON).
demo: $(STAMP)
	$(BIN)/vq3d synth --out $(DEMO)/data --n 2000 --res 32 --views 4 --seed 0 --contact-sheet $(DEMO)/contact_sheet.png
	$(BIN)/vq3d train stage1 --preset demo --data $(DEMO)/data --out $(DEMO)/stage1 --max-minutes $(DEMO_MINUTES) \
		$$(test -d $(DEMO)/stage1/checkpoints && echo --resume)
	$(BIN)/vq3d eval stage1 --run $(DEMO)/stage1 --data $(DEMO)/data --json | tee $(DEMO)/stage1_eval.json

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 tests

bench: $(STAMP)
	for b in synth render loader sample; do $(BIN)/vq3d bench $$b --json; done

clean:
	rm -rf runs
