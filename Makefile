# Thin wrappers: every target is one command a human or CI can run.
PY ?= .venv/bin/python
ARGS ?=

.PHONY: install test test-all lint bench

install:  ## create .venv and install the package with every dependency
	python3.11 -m venv .venv
	.venv/bin/pip install --upgrade pip
	.venv/bin/pip install torch==2.14.1 torchvision==0.29.1
	.venv/bin/pip install -e ".[pipeline,dev]"

test:  ## the default suite: no slow, no GPU tests
	$(PY) -m pytest -q

test-all:  ## everything, slow tests included
	$(PY) -m pytest -q -m "not gpu"

lint:
	$(PY) -m ruff check src tests

bench:  ## layer speed/memory vs nn.Conv2d -> outputs/bench/layer.json
	$(PY) -m ssimlayer.bench $(ARGS)
