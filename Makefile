# pm_lightning: every target sets itself up (`make setup`, idempotent) first.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-stamp
# torch/torchvision pins: the releases that lie on this workplace's disk (no multi-GB download).
TORCH   ?= torch==2.14.1 torchvision==0.29.1
SYNTH   := data/synth
SHARDS  := data/shards
SAMPLES ?= outputs/samples
export PYTHONUNBUFFERED := 1
export WANDB_SILENT := true

.PHONY: setup constraints lint format shards tiny-base tiny-eval train-stage1 train-stage2 train-recraft generate eval ablation demo demo-screenshots style-lora browser test test-slow bench bench-gpu bench-gpu-check bench-data bench-adaptive clean

# constraints.txt pins the exact versions CI tests (`make constraints` rewrites it from the current .venv).
setup: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[dev,judge,demo,quant]'
	touch $(STAMP)

constraints: $(STAMP)
	$(BIN)/python tools/pins.py --write

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python tools/pins.py --check

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

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

# Embedded tiny evaluators (open_clip CLIP + patch tokens) on the synthetic corpus; committed in data/tiny-eval.
tiny-eval: $(STAMP)
	$(BIN)/python -m pm_lightning.tiny_eval --out data/tiny-eval

# Score generated samples (SAMPLES=dir): per-domain table as markdown + JSON (add --judge for the GPT-4o rubric).
eval: $(STAMP)
	$(BIN)/python -m pm_lightning.evaluate --samples $(SAMPLES)

# Text -> process sequence on the tiny model (PROMPT=, DOMAIN=, OUT=, ADAPTIVE=1 adds the adaptive steps).
generate: $(STAMP)
	$(BIN)/python -m pm_lightning.generate --prompt "$(or $(PROMPT),a lego tower of eight red bricks on a green baseplate)" --domain $(or $(DOMAIN),lego) --out $(or $(OUT),outputs/generate) $(if $(ADAPTIVE),--adaptive)

# One torch thread: about 1 s per step here; two threads next to any other busy process
# oversubscribe the 2 cores and ran several times slower.
train-stage1: shards
	OMP_NUM_THREADS=1 $(BIN)/python -m pm_lightning.fit --config experiments/tiny.yaml

# Stage 2 / ReCraft fuse stage 1's domain-free LoRA: train stage 1 first when it is missing.
train-stage2: shards
	test -f runs/tiny/lora/final/unseen.safetensors || $(MAKE) train-stage1
	$(BIN)/python -m pm_lightning.fit --config experiments/tiny_stage2.yaml

train-recraft: shards
	test -f runs/tiny/lora/final/unseen.safetensors || $(MAKE) train-stage1
	$(BIN)/python -m pm_lightning.fit --config experiments/tiny_recraft.yaml

# The ablations side by side (docs/ABLATIONS.md): ProcessMaker Table 3, MakeAnything's ablation, unseen domains, 3 seeds,
# about an hour on 2 cores; QUICK=1: 2 steps per row, 1 seed (under 5 minutes); ROWS=, SEEDS=, JOBS=, OUT= select.
# Resumable: rerun to continue. W&B offline without credentials: `wandb sync` the offline-run folders it names.
ablation: shards
	OMP_NUM_THREADS=1 $(BIN)/python -m pm_lightning.ablate $(if $(QUICK),--quick) $(if $(ROWS),--rows $(ROWS)) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(JOBS),--jobs $(JOBS)) $(if $(OUT),--out $(OUT))

# The fast tier (the README's test command) and the slow tier (multi-process, subprocess, long runs).
test: $(STAMP)
	$(BIN)/python -m pytest -q -x --timeout 600

# The slow tier runs the quick ablation on the default shards (built when missing: about a minute).
test-slow: $(STAMP) browser shards
	$(BIN)/python -m pytest -q -x -m slow --timeout 1800

# The web demo on http://127.0.0.1:7860 (PORT=): the tiny model on CPU, LoRA folders from runs/.
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pm_lightning.app --port $(or $(PORT),7860)

# Headless Chromium + ChromeDriver (Debian's packages) for the browser test; installed when missing (needs root).
browser:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

# The README's demo screenshots (docs/demo*.png), taken by the browser test against the trained tiny LoRA.
demo-screenshots: $(STAMP) browser
	test -f runs/tiny/lora/final/unseen.safetensors || $(MAKE) train-stage1
	PM_DEMO_SCREENSHOTS=docs PM_DEMO_RUNS=runs $(BIN)/python -m pytest -q -m slow tests/test_demo.py -k browser -s

# A style LoRA on single pictures of one domain (DOMAIN=, default origami), for generate --extra-lora.
style-lora: $(STAMP)
	$(BIN)/python -m pm_lightning.style_lora --domain $(or $(DOMAIN),origami) --out runs/style/$(or $(DOMAIN),origami).safetensors

# Every benchmark prints its table and rewrites its own section of docs/BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/python bench/data.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/stage1.py --write-docs
	$(BIN)/python bench/eval.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/flux_step.py --write-docs
	$(MAKE) browser
	$(BIN)/python bench/demo.py

# On a GPU (no download): FLUX.1-dev-shaped inference, step caches, torch.compile; writes docs/BENCHMARKS.md.
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu_inference.py --write-docs

# Adaptive steps against ground truth (damaged synthetic sequences), calibrated for the tiny evaluators:
# writes data/tiny-eval/adaptive_calibration.json and docs/ADAPTIVE.md's table.
bench-adaptive: $(STAMP)
	$(BIN)/python -m pm_lightning.calibrate_adaptive --write-docs

# One H100 / H200, under 8 minutes, no download: FLUX.1-dev step (time, MFU, peak vs the memory plan), FSDP2,
# 28-step 1024-px grid, then the gpu test tier. TINY=1: the scaled-down shape on CPU.
bench-gpu-check: $(STAMP)
	PY=$(BIN)/python bash bench/gpu_check.sh $(if $(TINY),--tiny)

bench-data: $(STAMP)
	$(BIN)/python bench/data.py

clean:
	rm -rf $(SYNTH) $(SHARDS) runs outputs wandb lightning_logs
