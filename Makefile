# Two commands from a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
TRL_VENV := .venv-trl
TRL16_VENV := .venv-trl16
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench bench-lm bench-rl clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first and pinned: on these machines it resolves to a local CPU wheel.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/lmpo train

lint: $(STAMP)
	$(VENV)/bin/ruff check lmpo tests bench
	$(VENV)/bin/mypy lmpo

test: lint
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/classic.py --seeds 10

bench-lm: $(STAMP)
	$(PY) bench/lm.py --repeats 7

# TRL lives in its own environment: a benchmark peer, never a dependency of lmpo (its PPO trainer was
# last shipped in trl 1.12.0). Same torch and transformers as lmpo's environment.
$(TRL_VENV)/.installed:
	test -x $(TRL_VENV)/bin/python || $(PYTHON) -m venv $(TRL_VENV)
	$(TRL_VENV)/bin/python -m pip install -q torch==2.13.0
	$(TRL_VENV)/bin/python -m pip install -q trl==1.12.0 transformers==$$($(PY) -c 'import transformers; print(transformers.__version__)') requests
	touch $@

# The newest TRL, for the RLOO and GRPO pairs (trl 1.16.0 has no PPO trainer).
$(TRL16_VENV)/.installed:
	test -x $(TRL16_VENV)/bin/python || $(PYTHON) -m venv $(TRL16_VENV)
	$(TRL16_VENV)/bin/python -m pip install -q torch==2.13.0
	$(TRL16_VENV)/bin/python -m pip install -q trl==1.16.0 transformers==$$($(PY) -c 'import transformers; print(transformers.__version__)') requests
	touch $@

bench-rl: $(STAMP) $(TRL_VENV)/.installed $(TRL16_VENV)/.installed
	$(PY) bench/rl.py --trl-python $(TRL_VENV)/bin/python --trl16-python $(TRL16_VENV)/bin/python

clean:
	rm -rf $(VENV) $(TRL_VENV) $(TRL16_VENV) runs .pytest_cache .mypy_cache .ruff_cache .hypothesis
