# pm_lightning: every target sets itself up (`make setup`, idempotent) first.
# ARGS= appends flags to a target's command: `make train-stage1 ARGS="--trainer.max_steps 50"`.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.setup-stamp
# torch/torchvision go in first, at the versions constraints.txt pins; PyPI's default Linux wheels are CUDA builds
# (torch + nvidia-* + triton: 5.3 GB of the 6.2 GB .venv). TORCH= installs other builds or versions.
TORCH   ?= torch==2.14.1 torchvision==0.29.1
EXTRAS  := dev,judge,demo,quant,tensorboard,slurm
SYNTH   := data/synth
SHARDS  := data/shards
# `make generate` writes one sample folder per domain under SAMPLES; `make eval` scores every sample under it.
SAMPLES ?= outputs/samples
DOMAIN  ?= lego
export PYTHONUNBUFFERED := 1
export WANDB_SILENT := true

.PHONY: setup constraints lint format shards tiny-base tiny-eval train-stage1 train-stage2 train-recraft generate eval ablation demo demo-screenshots style-lora browser test test-slow test-kill test-scaling bench bench-gpu bench-gpu-check bench-data bench-adaptive mutation clean

# constraints.txt pins the exact versions CI tests (`make constraints` rewrites it from the current .venv).
setup: $(STAMP)
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e '.[$(EXTRAS)]'
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
	$(BIN)/python -m pm_lightning.synth --out $(SYNTH)/train --no-held-out
	$(BIN)/python -m pm_lightning.shards --src $(SYNTH)/train --out $(SHARDS)/train
$(SHARDS)/val/index.json: | $(STAMP)
	$(BIN)/python -m pm_lightning.synth --out $(SYNTH)/val --per-domain 16 --seed 1
	$(BIN)/python -m pm_lightning.shards --src $(SYNTH)/val --out $(SHARDS)/val

tiny-base: $(STAMP)
	$(BIN)/python -m pm_lightning.tiny_base --out data/tiny-flux $(ARGS)

# Embedded tiny evaluators (open_clip CLIP + patch tokens) on the synthetic corpus; committed in data/tiny-eval.
tiny-eval: $(STAMP)
	$(BIN)/python -m pm_lightning.tiny_eval --out data/tiny-eval $(ARGS)

# Score every sample folder under SAMPLES (what `make generate` writes): the per-domain table as markdown + JSON
# in SAMPLES/results.{md,json} (ARGS=--judge adds the GPT-4o rubric).
eval: $(STAMP)
	$(BIN)/python -m pm_lightning.evaluate --samples $(SAMPLES) $(ARGS)

# Text -> process sequence on the tiny model, into SAMPLES/DOMAIN (PROMPT=, DOMAIN=, OUT=, ADAPTIVE=1: adaptive steps).
generate: $(STAMP)
	$(BIN)/python -m pm_lightning.generate --prompt "$(or $(PROMPT),a lego tower of eight red bricks on a green baseplate)" \
		--domain $(DOMAIN) --out $(or $(OUT),$(SAMPLES)/$(DOMAIN)) $(if $(ADAPTIVE),--adaptive) $(ARGS)

# A rerun of a training target resumes its own run: once the run directory holds a checkpoint, fit gets
# `--ckpt_path last` (an interrupted run continues exactly; a finished one ends at once); before that it starts
# fresh. (fit's own `--ckpt_path last` on a run without a checkpoint starts fresh too once issue 20 lands; this
# check keeps the first run working either way.) ARGS="--start_over true" moves the earlier run aside instead.
resume = $(if $(findstring --start_over,$(ARGS)),,$(if $(wildcard $(1)/checkpoints/*.ckpt),--ckpt_path last))

# One torch thread: about 1 s per step here; two threads next to any other busy process
# oversubscribe the 2 cores and ran several times slower.
train-stage1: shards
	OMP_NUM_THREADS=1 $(BIN)/python -m pm_lightning.fit --config experiments/tiny.yaml $(call resume,runs/tiny) $(ARGS)

# Stage 2 / ReCraft fuse stage 1's domain-free LoRA: train (or finish) stage 1 first when it is missing.
train-stage2: shards
	test -f runs/tiny/lora/final/unseen.safetensors || $(MAKE) train-stage1
	$(BIN)/python -m pm_lightning.fit --config experiments/tiny_stage2.yaml $(call resume,runs/tiny_stage2) $(ARGS)

train-recraft: shards
	test -f runs/tiny/lora/final/unseen.safetensors || $(MAKE) train-stage1
	$(BIN)/python -m pm_lightning.fit --config experiments/tiny_recraft.yaml $(call resume,runs/tiny_recraft) $(ARGS)

# The ablations side by side (docs/ABLATIONS.md): ProcessMaker Table 3, MakeAnything's ablation, unseen domains, 5 seeds,
# 1 h 43 min on 2 cores (measured); QUICK=1: 2 steps per row, 1 seed (under 5 minutes); ROWS=, SEEDS=, JOBS=, OUT= select.
# Resumable: rerun to continue. W&B offline without credentials: `wandb sync` the offline-run folders it names.
ablation: shards
	OMP_NUM_THREADS=1 $(BIN)/python -m pm_lightning.ablate $(if $(QUICK),--quick) $(if $(ROWS),--rows $(ROWS)) \
		$(if $(SEEDS),--seeds $(SEEDS)) $(if $(JOBS),--jobs $(JOBS)) $(if $(OUT),--out $(OUT)) $(ARGS)

# The fast tier (the README's test command) and the slow tier (multi-process, subprocess, long runs).
test: $(STAMP)
	$(BIN)/python -m pytest -q -x --timeout 600 $(ARGS)

# The slow tier runs the quick ablation on the default shards (built when missing: about a minute). Its tests are
# mostly one-thread subprocesses, so SLOW_WORKERS pytest-xdist workers (a file each at a time) fill the cores.
SLOW_WORKERS ?= 2
test-slow: $(STAMP) browser shards
	$(BIN)/python -m pytest -q -x -m 'slow and not campaign' -n $(SLOW_WORKERS) --dist loadfile --timeout 1800 --durations 25 $(ARGS)

# The kill -9 campaigns, outside CI's time budget (about 25 minutes): all 12 moments of a fit (the slow tier runs 7,
# one of each kind), a quick ablation killed mid-job then rerun, and the submitit launcher's preemption + kill
# (tests marked `campaign`).
test-kill: $(STAMP) shards
	PM_KILL_MOMENTS=all $(BIN)/python -m pytest -q -x -m slow --timeout 1800 tests/test_faults_kill.py tests/test_ablate_quick.py tests/test_ablate_slurm.py $(ARGS)

# Multi-process strategy runs too long for CI's budget (tests marked `campaign` outside test_faults_kill /
# test_ablate_quick): HSDP as 2 "nodes" x 2 on 4 gloo processes against DDP on 4, on the default shards; compiled
# blocks against eager on 2 processes under DDP and FSDP2. The files run whole, so their slow-tier tests run too
# (among them FLUX.1-dev's depth, 57 narrow blocks, under DDP / FSDP2 on 2 processes and HSDP 2 x 2 / DDP on 4).
test-scaling: $(STAMP) shards
	$(BIN)/python -m pytest -q -x -m slow --timeout 1800 --durations 5 tests/test_hsdp.py tests/test_compile_blocks_2proc.py tests/test_full_depth.py $(ARGS)

# Mutation testing (mutmut) of the core modules against the fast tests that cover each (tools/mutation_targets.toml);
# not in CI. docs/TESTING.md has its scores and time. ARGS= picks modules: `make mutation ARGS=pm_lightning/training/flow.py`.
mutation: $(STAMP)
	$(BIN)/pip install -q -c constraints.txt 'mutmut>=3.8,<4'
	$(BIN)/python tools/mutation.py $(ARGS)

# The web demo on http://127.0.0.1:7860 (PORT=): the tiny model on CPU, LoRA folders from runs/.
demo: $(STAMP)
	OMP_NUM_THREADS=1 $(BIN)/python -m pm_lightning.app --port $(or $(PORT),7860) $(ARGS)

# Headless Chromium + ChromeDriver (Debian's packages) for the browser test; installed when missing (needs root).
browser:
	test -x /usr/bin/chromium -a -x /usr/bin/chromedriver || (apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null)

# The README's demo screenshots (docs/demo*.png), taken by the browser test against the trained tiny LoRA.
demo-screenshots: $(STAMP) browser
	test -f runs/tiny/lora/final/unseen.safetensors || $(MAKE) train-stage1
	PM_DEMO_SCREENSHOTS=docs PM_DEMO_RUNS=runs $(BIN)/python -m pytest -q -m slow tests/test_demo.py -k browser -s

# A style LoRA on single pictures, for generate --extra-lora: IMAGES=DIR (your pictures, same-name .txt captions;
# the domain is the folder's name unless DOMAIN= says), else the synthetic pictures of DOMAIN (default origami).
# Writes runs/style/<domain>.safetensors (OUT= elsewhere).
STYLE_DOMAIN = $(if $(filter command line,$(origin DOMAIN)),$(DOMAIN))
style-lora: $(STAMP)
	$(BIN)/python -m pm_lightning.style_lora \
		$(if $(IMAGES),--images $(IMAGES) $(if $(STYLE_DOMAIN),--domain $(STYLE_DOMAIN)),--domain $(or $(STYLE_DOMAIN),origami)) \
		$(if $(OUT),--out $(OUT)) $(ARGS)

# Every benchmark prints its table and rewrites its own section of docs/BENCHMARKS.md.
bench: $(STAMP)
	$(BIN)/python bench/data.py
	$(BIN)/python bench/models.py
	$(BIN)/python bench/stage1.py --write-docs
	$(BIN)/python bench/optim_step.py --write-docs
	$(BIN)/python bench/eval.py
	$(BIN)/python bench/generate.py
	$(BIN)/python bench/inference.py
	$(BIN)/python bench/flux_step.py --write-docs
	$(BIN)/python bench/export_size.py --write-docs
	$(MAKE) browser
	$(BIN)/python bench/demo.py

# On a GPU (no download): FLUX.1-dev-shaped inference, step caches, torch.compile; writes docs/BENCHMARKS.md.
bench-gpu: $(STAMP)
	$(BIN)/python bench/gpu_inference.py --write-docs

# Adaptive steps against ground truth (damaged synthetic sequences) and the guard sweep, tiny evaluators (~4 min):
# regenerates docs/ADAPTIVE.md's tables between <!-- adaptive:begin NAME --> markers; the stored
# data/tiny-eval/adaptive_calibration.json is written only by `python -m pm_lightning.calibrate_adaptive`.
bench-adaptive: $(STAMP)
	$(BIN)/python -m pm_lightning.calibrate_adaptive --write-docs $(ARGS)

# One H100 / H200, under 8 minutes, no download: FLUX.1-dev step (time, MFU, peak vs the memory plan), FSDP2,
# 28-step 1024-px grid, then the gpu test tier. TINY=1: the scaled-down shape on CPU.
bench-gpu-check: $(STAMP)
	PY=$(BIN)/python bash bench/gpu_check.sh $(if $(TINY),--tiny) $(ARGS)

bench-data: $(STAMP)
	$(BIN)/python bench/data.py

clean:
	rm -rf $(SYNTH) $(SHARDS) runs outputs wandb lightning_logs
