# The two commands a newcomer needs: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: venv run test lint demo openapi benchmark-data benchmark-models bench soak fuzz load clean

venv: $(STAMP)

# torch==2.14.1 / torchvision==0.29.1 install from this machine's local wheels (see README).
$(STAMP): pyproject.toml tools/openapi-lint/package-lock.json
	@command -v $(PYTHON) >/dev/null 2>&1 || { echo "need $(PYTHON) on PATH"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@# Test reference only: TorchCAM 0.3.2, the version the paper's authors used. Its metadata caps torch
	@# below 2.0, but the pure-Python code runs on 2.14, so it is installed without its dependencies.
	$(PY) -m pip install -q --no-deps 'torchcam==0.3.2'
	@# Test reference only: Quantus 0.6.0, the anchor of the sanity, robustness, localisation and faithfulness
	@# measures (tests/etm/test_quantus_anchors.py). Its metadata asks for opencv-python (GUI build, libGL);
	@# scikit-image's opencv-python-headless already provides cv2, so it is installed without dependencies.
	$(PY) -m pip install -q --no-deps 'quantus==0.6.0'
	@# Spectral, the OpenAPI linter of make test (tools/openapi-lint, pinned by its package-lock.json).
	@if command -v npm >/dev/null 2>&1; then npm ci --prefix tools/openapi-lint --no-audit --no-fund --silent; \
	else echo "npm not found: the OpenAPI lint test will fail until Node.js is installed"; fi
	touch $(STAMP)

run: venv
	$(PY) -m api.devserver

demo: venv
	$(PY) -m api.demo

test: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports
	$(PY) -m pytest

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/lint-imports

openapi: venv
	$(PY) -m api.export_openapi

benchmark-data: venv
	$(PY) -m benchdata.generate

benchmark-models: venv
	$(PY) -m benchdata.train

bench: venv
	$(PY) -m pip install -q -e '.[bench]'
	$(PY) -m bench.run

# Faults, longer and randomised (kills, Redis and API restarts, duplicates); a few minutes. Exit 1 if anything
# was lost or differed. Options: make soak SOAK_ARGS='--jobs 60 --seed 2'
soak: venv
	$(PY) -m tests.soak $(SOAK_ARGS)

# Schemathesis on every operation (with and without an API key), many more examples than make test's
# bounded run; prints what each operation answered. FUZZ_EXAMPLES per operation (default 300).
FUZZ_EXAMPLES ?= 300
fuzz: venv
	ETM_FUZZ_EXAMPLES=$(FUZZ_EXAMPLES) ETM_FUZZ_SUMMARY=1 $(PY) -m pytest tests/api/test_api_fuzz.py -q -s

# 100 clients polling and submitting for 60 s against a fresh service on loopback (bench/load.py):
# requests/s, p50/p99 per operation, errors and jobs lost (both must be 0). Options: LOAD_ARGS='--clients 50'
load: venv
	$(PY) -m bench.load $(LOAD_ARGS)

clean:
	rm -rf var/ .pytest_cache
