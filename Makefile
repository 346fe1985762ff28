# The two commands: `make test` and `make demo`. Both create .venv on first use.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.isacir-installed
PYTEST_ARGS ?=

.PHONY: test demo install clean bench-query-side

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# torch first, pinned: these builds come from local disk; anything else is a multi-GB download.
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# pytest exits 5 when it collects nothing; that must fail loudly rather than pass silently.
test: $(STAMP)
	$(PY) -m pytest -q $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests" >&2; exit 1; fi; exit $$rc

demo: $(STAMP)
	$(VENV)/bin/isacir demo

bench-query-side: $(STAMP)
	$(VENV)/bin/isacir bench query-side --foundation openclip:ViT-L-14 --backbone efficientnet_b0 --tokens 8 --threads 1 --json

clean:
	rm -rf $(VENV) .pytest_cache .cache build src/*.egg-info
