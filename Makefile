# Two commands from a fresh machine: `make demo` and `make test`.
PYTHON ?= python3.11
VENV := .venv
TRL_VENV := .venv-trl
TRL16_VENV := .venv-trl16
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test lint browser bench bench-lm bench-rl bench-serve clean

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

# The chat page's test drives Debian's headless Chromium through its chromedriver (nothing downloads a browser).
browser:
	@if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then exit 0; fi; \
	if ! command -v apt-get >/dev/null 2>&1; then \
		echo "make test needs Chromium at /usr/bin/chromium and its driver at /usr/bin/chromedriver" \
		     "(Debian: apt-get install chromium chromium-driver)" >&2; exit 1; fi; \
	if [ "$$(id -u)" -eq 0 ]; then sudo=""; \
	elif command -v sudo >/dev/null 2>&1; then sudo="sudo"; \
	else echo "make test needs Debian's chromium and chromium-driver: as root, run" \
		      "apt-get update && apt-get install -y chromium chromium-driver" >&2; exit 1; fi; \
	echo "installing Debian's chromium and chromium-driver (for tests/serve/test_page.py)"; \
	$$sudo apt-get update && $$sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver

test: lint browser
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) bench/classic.py --seeds 10

bench-lm: $(STAMP)
	$(PY) bench/lm.py --repeats 7

# lmpo serve under 32 concurrent clients: batching on and off, int8 beside float32 (needs runs/support: make demo)
bench-serve: $(STAMP)
	$(PY) bench/serve.py --run runs/support

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
