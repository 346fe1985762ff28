# The two commands are `make demo` and `make test`; `make lint` is the gate CI runs before the tests.
# Each creates .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.isacir-installed
PYTEST_ARGS ?=
# Test files run in this many pytest-xdist workers, a whole file at a time and the longest first
# (tests/conftest.py orders them). 0 runs them all in this process.
TEST_WORKERS ?= 2
PYTEST_XDIST := $(if $(filter 0,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
export NO_MKDOCS_2_WARNING := 1

.PHONY: test test-fast stack-test lint format docs demo install system-deps web clean bench-query-side

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: these builds come from local disk; anything else is a multi-GB download.
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e '.[test,lint,docs]'
	touch $(STAMP)

install: $(STAMP) web

# The operator UI's on-device query side: ONNX Runtime Web from npm (web/package-lock.json),
# copied into the Python package so the service needs no CDN and pip users get it.
VENDOR := src/isacir/serve/static/vendor/VERSION.json
$(VENDOR): web/package.json web/package-lock.json web/build.mjs
	@command -v npm >/dev/null 2>&1 || $(MAKE) system-deps
	cd web && npm ci --no-audit --no-fund --loglevel=error && node build.mjs

web: $(VENDOR)

# The browser tests drive Debian's chromium (with a Japanese font, so screenshots show what operators
# type), the metrics test scrapes with Debian's prometheus,
# the load-test check drives Debian's wrk, the feedback-store tests start Debian's postgresql, and
# `make web` needs node and npm.
# Each entry is PACKAGE:PROGRAM (PostgreSQL keeps its programs off PATH, under /usr/lib/postgresql).
# As root, install what is missing; otherwise those tests say what to install.
SYSTEM_PACKAGES := chromium:chromium prometheus:prometheus wrk:wrk postgresql:/usr/lib/postgresql/*/bin/initdb \
	nodejs:node npm:npm fonts-ipafont-gothic:/usr/share/fonts/opentype/ipafont-gothic/ipag.ttf
system-deps:
	@missing=""; for entry in $(SYSTEM_PACKAGES); do pkg=$${entry%%:*}; prog=$${entry#*:}; \
		command -v $$prog >/dev/null 2>&1 || ls $$prog >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ] && [ "$$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then \
		apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $$missing; \
	fi

# pytest exits 5 when it collects nothing; that must fail loudly rather than pass silently.
test: $(STAMP) system-deps $(VENDOR)
	$(PY) -m pytest -q $(PYTEST_XDIST) $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

test-fast: $(STAMP) $(VENDOR)
	$(PY) -m pytest -q $(PYTEST_XDIST) -m "not slow and not browser and not ddp and not bench" $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

# The on-premises compose stack (deploy/), built and exercised end to end; needs Docker (started, and
# installed from Debian, when this runs as root). Its last line is JSON; see deploy/stack_test.py.
stack-test: $(STAMP) $(VENDOR)
	$(PY) deploy/stack_test.py

lint: $(STAMP)
	$(VENV)/bin/ruff check src tests benchmarks docs deploy
	$(VENV)/bin/ruff format --check src tests benchmarks docs deploy
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache
	$(VENV)/bin/isacir-lab render --check
	$(VENV)/bin/mkdocs build --strict --quiet --site-dir build/site

format: $(STAMP)
	$(VENV)/bin/ruff check --fix src tests benchmarks docs deploy
	$(VENV)/bin/ruff format src tests benchmarks docs deploy

docs: $(STAMP)
	$(VENV)/bin/isacir-lab render
	$(VENV)/bin/mkdocs build --strict --site-dir build/site

demo: $(STAMP) $(VENDOR)
	$(VENV)/bin/isacir-lab demo

bench-query-side: $(STAMP)
	$(VENV)/bin/isacir bench query-side --foundation openclip:ViT-L-14 --backbone efficientnet_b0 --tokens 8 --threads 1 --json

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .cache build src/*.egg-info web/node_modules \
		src/isacir/serve/static/vendor
