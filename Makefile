# Thin wrappers: every target is one command a human or CI can run. `make` alone lists them.
PY ?= .venv/bin/python
ARGS ?=
.DEFAULT_GOAL := help

.PHONY: help
help:  ## list the targets with what they do (this text)
	@echo "ssimlayer: make <target> [ARGS=\"hydra overrides\"]; README.md says where to start."
	@grep -hE '^[a-zA-Z0-9_-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/^([^:]+):[^#]*## (.*)/  \1\t\2/' | expand -t 26

.PHONY: install test test-all check lint bench gpu-check gpu-check-train bench-train train reproduce-table1 reproduce-table1-packed reproduce-shallow reproduce-nonlinearity reproduce-table2 robustness

install:  ## create .venv and install the package with every dependency (about 6 GB: torch's CUDA build; no pip cache kept)
	python3.11 -m venv .venv
	.venv/bin/pip install --no-cache-dir --upgrade pip
	.venv/bin/pip install --no-cache-dir torch==2.14.1 torchvision==0.29.1
	.venv/bin/pip uninstall -y -q torchattacks  # an older .venv's: it pins requests~=2.25.1 (docs/dependencies.md)
	.venv/bin/pip install --no-cache-dir -e ".[pipeline,dev]"
	.venv/bin/pip check

test:  ## the default suite: no slow, no GPU tests
	$(PY) -m pytest -q

test-all:  ## everything, slow tests included
	$(PY) -m pytest -q -m "not gpu"

check:  ## property tests of ssim_conv2d with many more examples (hypothesis profile "thorough")
	HYPOTHESIS_PROFILE=thorough $(PY) -m pytest -q tests/test_property_ssim.py

lint:  ## ruff on src and tests
	$(PY) -m ruff check src tests

bench:  ## layer speed/memory vs nn.Conv2d -> outputs/bench/layer.json
	$(PY) experiments/bench/layer.py $(ARGS)

# On a CUDA machine, what the layer's GPU path needs checked and measured, with full logs, in one
# command (experiments/bench/gpu_session.sh: each part under a time limit, one lease's worth).
gpu-check:  ## CUDA layer bench, GPU tests (compiled Triton kernels) -> outputs/gpu_check/
	OUT=outputs/gpu_check PY=$(PY) bash experiments/bench/gpu_session.sh layer

# On a CUDA machine: Lightning vs the bare loop at batch 32 and 128 for the paper's three main models,
# with k=1 and k=8 optimiser steps per Lightning iteration (CIFAR-size synthetic data on the GPU).
gpu-check-train:  ## issue-6 GPU bench, steps_per_execution 1 and 8 -> outputs/gpu_check/train.json
	OUT=outputs/gpu_check PY=$(PY) bash experiments/bench/gpu_session.sh train

# Reproduction pipeline (conf/, src/ssimlayer/train.py). Each reproduce-* target trains both models of
# its pair in one Hydra multirun, then runs the FGSM sweep; runs land in outputs/<experiment>/multirun/.
# ARGS takes Hydra overrides, e.g. ARGS="debug=smoke" or ARGS="seed=0,1,2 trainer.max_epochs=100".
train:  ## one training run: make train ARGS="experiment=table1 model=fig4_plain"
	$(PY) -m ssimlayer.train $(ARGS)

reproduce-table1:  ## Table 1 / Fig. 5 / Fig. 9: Fig. 4 plain vs SSIM on CIFAR-10, FGSM sweep
	$(PY) -m ssimlayer.train -m experiment=table1 $(ARGS)

reproduce-shallow:  ## §3.2 / Fig. 6: shallow 7x7 SSIM vs 7x7 Conv, first-layer filters
	$(PY) -m ssimlayer.train -m experiment=shallow $(ARGS)

reproduce-nonlinearity:  ## Fig. 7 / Fig. 8: SSIM network with vs without ReLU after the SSIMLayer
	$(PY) -m ssimlayer.train -m experiment=nonlinearity $(ARGS)

# Table 2 / Fig. 10 on the 7-class Tiny ImageNet stand-in (conf/data/imagenet_cifar7.yaml), 3 seeds per
# model, on the 2-core CPU schedule conf/schedule/cpu_table2.yaml; ARGS overrides it, e.g. the paper's
# schedule on a GPU: make reproduce-table2 ARGS="schedule=paper trainer=gpu".
reproduce-table1-packed:  ## Table 1 with each model's 3 seeds trained at once as one packed network, for a GPU (ARGS="trainer=gpu speed=gpu_graphs")
	$(PY) -m ssimlayer.pack -m experiment=table1 seeds=[0,1,2] $(ARGS)

reproduce-table2:  ## Table 2 / Fig. 10: Fig. 4 pair, 3 seeds, Tiny ImageNet (7 CIFAR-10 classes)
	$(PY) -m ssimlayer.train -m experiment=table2 schedule=cpu_table2 seed=0,1,2 $(ARGS)

# Robustness beyond FGSM (conf/eval.yaml, src/ssimlayer/eval.py): PGD, Square, PGD transfer, Fig. 1
# corruptions and gradient-masking checks of trained runs; results go into each run dir and
# outputs/robustness/<timestamp>/. See experiments/robustness/README.md.
robustness:  ## make robustness ARGS="runs=[outputs/table1/multirun/<ts>]" (or ARGS="debug=smoke")
	$(PY) -m ssimlayer.eval $(ARGS)

.PHONY: report reproduce-all reproduce-cpu
report:  ## paper vs measured: outputs/report/report.md (+ PNG, CSV) from the run dirs in outputs/
	$(PY) -m ssimlayer.report $(ARGS)

reproduce-all:  ## the paper's protocol (500 epochs, 3 seeds) for every experiment: a GPU job (ARGS="trainer=gpu")
	$(PY) -m ssimlayer.train -m experiment=table1 seed=0,1,2 $(ARGS)
	$(PY) -m ssimlayer.train -m experiment=shallow seed=0,1,2 $(ARGS)
	$(PY) -m ssimlayer.train -m experiment=nonlinearity model=fig4_ssim_norelu seed=0,1,2 $(ARGS)
	$(PY) -m ssimlayer.report

reproduce-cpu:  ## every experiment on the CPU-sized schedule (cpu_short, 3 seeds; about 40 min on 2 cores), then the report
	$(PY) -m ssimlayer.train -m experiment=table1 schedule=cpu_short seed=0,1,2 $(ARGS)
	$(PY) -m ssimlayer.train -m experiment=shallow schedule=cpu_short seed=0,1,2 $(ARGS)
	$(PY) -m ssimlayer.train -m experiment=nonlinearity model=fig4_ssim_norelu schedule=cpu_short seed=0,1,2 $(ARGS)
	$(PY) -m ssimlayer.report

bench-train:  ## training throughput, Lightning vs a bare loop -> outputs/bench/train.json (ARGS="debug=smoke")
	$(PY) experiments/bench/train.py $(ARGS)

.PHONY: prune
prune:  ## accuracy and FGSM accuracy after SSIM filter pruning: ARGS="<run or multirun dirs>"
	$(PY) -m ssimlayer.prune $(ARGS)
