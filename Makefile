# High-Performance AI Systems: every command a learner, instructor or CI needs.
# `make lab` and `make test` set everything up first; a second run reuses it.

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := lab,test,bench,course
KERNEL := hpai
KERNEL_DISPLAY := Python (High-Performance AI Systems)
CONSTRAINTS := requirements/constraints.txt
PORT ?= 8888
M ?=
WORKERS ?= 2
# Notebooks measure the machine (servers under load, ceilings): two at once on 2 cores would measure
# each other. They run one at a time, with all cores, and still fit the budget.
NB_WORKERS ?= 1
CELL_TIMEOUT ?= 90
# Tests run WORKERS processes at once: give each torch an equal share of the cores,
# or two 2-thread torch processes on 2 cores slow each other down many times over.
NPROC := $(shell nproc 2>/dev/null || echo 2)
threads_per = $(shell w=$(1); [ "$$w" -ge 1 ] 2>/dev/null || w=1; t=$$(( $(NPROC) / w )); echo $$(( t > 0 ? t : 1 )))
NOTEBOOK_DIRS := $(if $(M),$(wildcard modules/$(M)_*),modules notebooks)

export PYTHONHASHSEED := 0
export MPLBACKEND := Agg
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.DEFAULT_GOAL := help
.PHONY: help setup lab serve test test-unit test-notebooks html bench model perf-gate lint format strip clean lock assign grade hub

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-15s %s\n", $$1, $$2}'
	@echo "  variables: PORT=$(PORT) (lab), M=NN (test-notebooks, html: one module), WORKERS=$(WORKERS) (unit tests), NB_WORKERS=$(NB_WORKERS)"

# The stamp is older than a dependency file when that file changed: reinstall then, and only then.
$(STAMP): pyproject.toml $(CONSTRAINTS)
	@$(BIN)/python -c 'import sys' 2>/dev/null || { echo "creating $(VENV) with $$($(PYTHON) --version)"; rm -rf $(VENV); $(PYTHON) -m venv $(VENV); }
	$(BIN)/python -m pip install --quiet --constraint $(CONSTRAINTS) --editable '.[$(EXTRAS)]'
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "$(KERNEL_DISPLAY)" >/dev/null
	@touch $@
	@echo "environment ready: $(VENV) (kernel '$(KERNEL)')"

setup: $(STAMP) ## create .venv, install the course and register its Jupyter kernel

# .jupyter/ holds the course's Jupyter settings (opens on the start-here notebook, the hpai kernel, no news
# prompt, no build clutter); it is added to the learner's own configuration, not put in its place.
lab: $(STAMP) ## start JupyterLab on the course (PORT=8888); prints the URL
	JUPYTER_CONFIG_PATH=$(CURDIR)/.jupyter$${JUPYTER_CONFIG_PATH:+:$$JUPYTER_CONFIG_PATH} \
	$(BIN)/jupyter lab --no-browser --ip=127.0.0.1 --port=$(PORT) --ServerApp.root_dir=$(CURDIR) \
		$$( [ "$$(id -u)" = 0 ] && echo --allow-root )

# JupyterHub for a class on this machine (docs/instructors.md). Learners log in with their own password
# (HUB_DIR/passwords, mode 0600); as root each gets a Unix account. The printed link (nbgitpuller) puts the
# course (HUB_REPO, HUB_BRANCH: this checkout and its branch by default) in each learner's home.
# configurable-http-proxy, the hub's front door, is a Node program: npm installs the versions that
# requirements/hub/package-lock.json pins, once, into build/hub.
HUB_USERS ?=
HUB_DIR ?= build/hub
HUB_IP ?= 0.0.0.0
HUB_REPO ?= $(CURDIR)
HUB_BRANCH ?=
HUB_ISOLATION ?= auto
HUB_PROXY := build/hub/node_modules/.bin/configurable-http-proxy
ifneq ($(filter hub,$(MAKECMDGOALS)),)
ifeq ($(strip $(HUB_USERS)),)
$(error make hub needs the class's user names, e.g. make hub HUB_USERS=ada,alan (each gets a password in $(HUB_DIR)/passwords))
endif
endif

$(HUB_PROXY): requirements/hub/package.json requirements/hub/package-lock.json
	@command -v npm >/dev/null || { echo "make hub needs Node.js and npm for configurable-http-proxy (Debian: apt-get install nodejs npm)" >&2; exit 1; }
	@mkdir -p build/hub
	cp requirements/hub/package.json requirements/hub/package-lock.json build/hub/
	npm ci --prefix build/hub --no-audit --no-fund --loglevel=error
	@touch $@

# (-c rather than -m common.course.hub: common.course imports the module first, and runpy would warn)
hub: $(STAMP) $(HUB_PROXY) ## JupyterHub for a class: HUB_USERS=ada,alan (PORT, HUB_IP, HUB_ISOLATION); Ctrl-C stops it
	$(BIN)/python -c 'import sys; from common.course.hub import main; main(sys.argv[1:])' \
		--users "$(HUB_USERS)" --port $(PORT) --ip $(HUB_IP) --state-dir $(HUB_DIR) --repo $(HUB_REPO) \
		--proxy $(HUB_PROXY) --isolation $(HUB_ISOLATION) $(if $(HUB_BRANCH),--branch $(HUB_BRANCH))

# TLS=1: mutual TLS with a dev CA and short-lived certificates in TLS_DIR (made or renewed first);
# only spiffe://hpai/client may call unless HPAI_ALLOWED_CLIENTS says otherwise.
TLS ?=
TLS_DIR ?= build/tls
serve: $(STAMP) ## the embeddings server on the packaged MiniLM (TLS=1: mutual TLS; flags: HPAI_* variables, see --help)
ifeq ($(TLS),1)
	$(BIN)/python -m common.secure.tls $(TLS_DIR) --client client
	@echo "try: curl --cacert $(TLS_DIR)/ca.pem --cert $(TLS_DIR)/client-client.pem --key $(TLS_DIR)/client-client.key https://localhost:8000/readyz"
	HPAI_TLS_CERT=$(TLS_DIR)/server.pem HPAI_TLS_KEY=$(TLS_DIR)/server.key HPAI_TLS_CA=$(TLS_DIR)/ca.pem \
	HPAI_ALLOWED_CLIENTS="$${HPAI_ALLOWED_CLIENTS:-[\"spiffe://hpai/client\"]}" $(BIN)/python -m common.serving
else
	$(BIN)/python -m common.serving
endif

test: $(STAMP) ## unit tests, every notebook under nbval, then the serving performance gate
	$(MAKE) --no-print-directory test-unit
	$(MAKE) --no-print-directory test-notebooks
	$(MAKE) --no-print-directory perf-gate

test-unit: $(STAMP) ## unit tests of common and the repo's conventions
	OMP_NUM_THREADS=$(call threads_per,$(WORKERS)) $(BIN)/python -m pytest -n $(WORKERS) --dist loadfile tests

test-notebooks: $(STAMP) ## execute notebooks under nbval (M=03 for one module)
	OMP_NUM_THREADS=$(call threads_per,$(NB_WORKERS)) $(BIN)/python -m pytest -n $(NB_WORKERS) --dist loadfile --nbval-lax --nbval-cell-timeout=$(CELL_TIMEOUT) $(NOTEBOOK_DIRS)

html: $(STAMP) ## execute every notebook to HTML under build/ (M=03 for one module)
	@mkdir -p build
	@for nb in $$(find $(NOTEBOOK_DIRS) -name '*.ipynb' -not -path '*/.ipynb_checkpoints/*' -not -path '*/exercises/exercises.ipynb' | sort); do \
		out=build/$$(dirname $$nb); mkdir -p $$out; \
		echo "executing $$nb"; \
		(cd $$(dirname $$nb) && $(CURDIR)/$(BIN)/jupyter nbconvert --to html --execute \
			--ExecutePreprocessor.timeout=600 --output-dir $(CURDIR)/$$out $$(basename $$nb)) || exit 1; \
	done

bench: $(STAMP) ## run the side-by-side benchmarks; results and plots in benchmarks/results/
	$(BIN)/python -m benchmarks

model: $(STAMP) ## retrain the shipped default LLM (common/llm/default_model) from the stdlib: ~5 min on 2 cores
	$(BIN)/python -m common.llm.train --force

perf-gate: $(STAMP) ## fail when batched/unbatched server throughput drops under 2x
	$(BIN)/python -m benchmarks.perf_gate

# Exercises (modules/00_design/README.md): each module's master notebook, exercises/solutions/exercises.ipynb,
# makes the student copy (committed: modules/NN_topic/exercises/) and the autograder copy with autograder.zip
# (build/exercises/NN_topic/). Grading runs each notebook in its own process, stopped after TIMEOUT seconds.
SUBMISSIONS ?=
OUT ?=
TIMEOUT ?=
EXERCISES := $(BIN)/python -c 'import sys; from common.course.exercises import main; sys.exit(main(sys.argv[1:]))'
ifneq ($(filter grade,$(MAKECMDGOALS)),)
ifeq ($(strip $(M)),)
$(error make grade needs the module and the folder of notebooks, e.g. make grade M=00 SUBMISSIONS=path/to/notebooks)
endif
ifeq ($(strip $(SUBMISSIONS)),)
$(error make grade needs SUBMISSIONS, the folder of submitted notebooks (one <learner>.ipynb each), e.g. make grade M=$(M) SUBMISSIONS=path/to/notebooks)
endif
endif

assign: $(STAMP) ## student + autograder copies of the exercises (M=00: one module); checks the solutions score 100%
	$(EXERCISES) assign $(M)

grade: $(STAMP) ## grade M=00 SUBMISSIONS=dir into scores.csv + feedback/ (OUT=build/grades/NN_topic, TIMEOUT=300 s each)
	$(EXERCISES) grade $(M) $(SUBMISSIONS) $(if $(OUT),--out $(OUT)) $(if $(TIMEOUT),--timeout $(TIMEOUT))

lint: $(STAMP) ## ruff check, format check and the type checker (mypy over common/ and benchmarks/)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

format: $(STAMP) ## ruff fix and format
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

strip: $(STAMP) ## clear outputs and execution counts from every notebook
	$(BIN)/nbstripout --keep-id $$(git ls-files "*.ipynb")

lock: ## re-resolve every dependency into $(CONSTRAINTS) (needs the registries)
	rm -rf build/lock-venv
	$(PYTHON) -m venv build/lock-venv
	build/lock-venv/bin/python -m pip install --quiet --editable '.[$(EXTRAS)]'
	{ echo "# Pinned versions for 'make setup'; regenerate with 'make lock'."; \
	  build/lock-venv/bin/python -m pip freeze --exclude-editable | sed -E 's/\+cpu$$//'; } > $(CONSTRAINTS)
	rm -rf build/lock-venv

clean: ## remove the environment, build outputs and caches
	rm -rf $(VENV) build .pytest_cache .ruff_cache .mypy_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
	find . -name .ipynb_checkpoints -type d -prune -exec rm -rf {} +
