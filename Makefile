# Two commands a new machine needs: `make demo` and `make test`. Both build .venv when missing.
PY_SYS  ?= python3.11
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.installed
export RAY_AUTH_MODE ?= disabled
export HF_HUB_OFFLINE ?= 1
export RAY_USAGE_STATS_ENABLED ?= 0
export PYTHONDONTWRITEBYTECODE ?=

.PHONY: venv demo test test-fast bench clean

venv: $(STAMP)

# requirements.lock pins every transitive version; taming goes in without deps
# because its declared torchvision pulls a CUDA torch (docs/pitfalls.md).
# pip runs without -q so a first build (~2.5 GB) shows what it is doing.
$(STAMP): pyproject.toml requirements.lock
	@echo "[venv 1/4] creating $(VENV) ($(PY_SYS)); a first build takes ~3 min idle, up to ~15 min on busy cores"
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	@echo "[venv 2/4] pip"
	$(PY) -m pip install -q --upgrade "pip>=24"
	@echo "[venv 3/4] the pinned packages of requirements.lock (torch, ray, transformers, ...)"
	$(PY) -m pip install --progress-bar on -c requirements.lock -e ".[dev]"
	@echo "[venv 4/4] taming-transformers, without its declared dependencies"
	$(PY) -m pip install -q --no-deps taming-transformers-rom1504==0.0.6
	touch $(STAMP)
	@echo "[venv] ready: $(VENV)"

demo: $(STAMP)
	$(PY) -m pipeline.cli demo --out demo-out

test: $(STAMP)
	$(PY) -m pytest -q -n 2 --dist loadfile --no-loadscope-reorder tests

test-fast: $(STAMP)
	$(PY) -m pytest -q -x -m "not slow" tests

bench: $(STAMP)
	$(PY) -m bench.run --out bench-out

clean:
	rm -rf demo-out bench-out .pytest_cache .hypothesis
