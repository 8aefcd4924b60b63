# pm_lightning: every target sets itself up (`make setup`, idempotent) first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-stamp
# torch/torchvision pins: the releases that lie on this workplace's disk (no multi-GB download).
TORCH   ?= torch==2.14.1 torchvision==0.29.1
SYNTH   := data/synth
SHARDS  := data/shards
export PYTHONUNBUFFERED := 1
export WANDB_SILENT := true

.PHONY: setup shards tiny-base tiny-eval train-stage1 train-stage2 generate eval test test-slow bench bench-data clean

setup: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Synthetic corpus + its WebDataset shards (git-ignored), built only when missing.
# Train and validation splits come from different seeds, so validation sequences are never trained on;
# the held-out domains appear in validation only (unseen-domain tests).
shards: $(SHARDS)/train/index.json $(SHARDS)/val/index.json
$(SHARDS)/train/index.json: | $(STAMP)
	$(BIN)/python -m pm_lightning.synth --out $(SYNTH)/train --per-domain 200 --seed 0 --no-held-out
	$(BIN)/python -m pm_lightning.shards --src $(SYNTH)/train --out $(SHARDS)/train
$(SHARDS)/val/index.json: | $(STAMP)
	$(BIN)/python -m pm_lightning.synth --out $(SYNTH)/val --per-domain 16 --seed 1
	$(BIN)/python -m pm_lightning.shards --src $(SYNTH)/val --out $(SHARDS)/val

tiny-base: $(STAMP)
	$(BIN)/python -m pm_lightning.tiny_base --out data/tiny-flux

train-stage1: shards
	$(BIN)/python -m pm_lightning.fit --config experiments/tiny.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -x --timeout 600

test-slow: $(STAMP)
	$(BIN)/python -m pytest -q -m slow --timeout 3600

bench: $(STAMP)
	$(BIN)/python bench/data.py
	@for b in bench/models.py bench/stage1.py; do test -f $$b && $(BIN)/python $$b || true; done

bench-data: $(STAMP)
	$(BIN)/python bench/data.py

clean:
	rm -rf $(SYNTH) $(SHARDS) runs outputs wandb lightning_logs
