# dxf.py: tests, lint, coverage and the README demo.  GNU make.
#
#   make test       refuses merge conflict markers, then the whole suite on .venv (python3) and on
#                   pyenv's CPython 3.6 and 3.13, and its portable part (-m portable: tar headers,
#                   http.client, argparse, ssl, syntax, the CLI end to end) on 3.7..3.12, each in
#                   its own .venv-3.X, 2 at a time; make pydxf-test beside them
#                   (PYTEST_ARGS='-k alias', TEST_JOBS=2, TEST_TIMEOUT=600, TEST_FULL='6 13' or all)
#   make quick      the suite on .venv only
#   make pydxf-test python-dxf's own tests against dxf.py (part of make test)
#   make tox        the same matrix through tox
#   make lint       ../shared/tools/check_module.py and ruff
#   make coverage   coverage of dxf.py by the suite, on .venv
#   make demo       the README's command-line example against a throwaway registry
#   make bench      bench/bench.py, when there is one
#   make clean      build outputs and caches; `make distclean` also the venvs

SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PYTEST_ARGS ?= -q
export PYTEST_ARGS

PYENV_ROOT_DIR := $(shell pyenv root 2>/dev/null || echo $$HOME/.pyenv)
PYENV_BINS := $(subst $(eval) ,:,$(wildcard $(PYENV_ROOT_DIR)/versions/3.*/bin))

.PHONY: test quick pydxf-test tox lint coverage demo bench clean distclean registry no-conflicts

# python-dxf's suite runs beside the matrix (its output follows the matrix's):
# its venv and its registries' starts fill the matrix's idle moments.
test: no-conflicts registry .venv-oras/bin/python
	@mkdir -p build; .ci/pydxf-test >build/pydxf-test.log 2>&1 & pydxf=$$!; \
	.ci/test-matrix; matrix=$$?; \
	wait $$pydxf; status=$$?; \
	echo "== python-dxf's own suite (make pydxf-test; build/pydxf-test.log)"; \
	tail -n 40 build/pydxf-test.log; \
	[ $$status -eq 0 ] || echo "python-dxf's suite FAILED (exit $$status)"; \
	[ $$matrix -eq 0 ] && [ $$status -eq 0 ]

pydxf-test: registry
	@.ci/pydxf-test

quick: registry $(VENV)/bin/pytest
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

# An unfinished merge must not land: its markers reached the README once, and
# pip copies the README into the package's description.
no-conflicts:
	@if git grep -n -I -E '^(<<<<<<<|>>>>>>>)( |$$)|^=======$$' -- . 2>/dev/null; then \
	    echo "merge conflict markers in tracked files (above): finish the merge"; exit 1; fi

# What the tests and the demo run: the registry (Debian package docker-registry),
# skopeo (the interop tests), openssl (test certificates and tokens), and Go
# with oras-go (the directory round trip through oras-go's file store, built
# offline in GOPATH mode from /usr/share/gocode).
# apt-get update only when the plain install fails: the lists may be stale or absent.
registry:
	@missing=; \
	if [ -z "$$DXF_TEST_REGISTRY" ] && ! command -v docker-registry >/dev/null 2>&1; then \
	    missing=" docker-registry"; fi; \
	command -v skopeo >/dev/null 2>&1 || missing="$$missing skopeo"; \
	command -v openssl >/dev/null 2>&1 || missing="$$missing openssl"; \
	command -v go >/dev/null 2>&1 || missing="$$missing golang-go"; \
	[ -d /usr/share/gocode/src/oras.land/oras-go ] || missing="$$missing golang-oras-oras-go-dev"; \
	if [ -n "$$missing" ]; then \
	    sudo=; [ "$$(id -u)" = 0 ] || sudo=sudo; \
	    export DEBIAN_FRONTEND=noninteractive; \
	    echo "installing:$$missing"; \
	    $$sudo apt-get install -y -q $$missing >/dev/null \
	    || { $$sudo apt-get update -q >/dev/null && $$sudo apt-get install -y -q $$missing >/dev/null; }; \
	fi

# oras-py 0.2.43, whose annotation-file manifests the referrers tests compare
# with dxf's (test_dxf.py's oras_py fixture; DXF_TEST_ORAS_PY names another).
.venv-oras/bin/python:
	$(PYTHON) -m venv .venv-oras
	.venv-oras/bin/python -m pip install -q oras==0.2.43

$(VENV)/bin/pytest:
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q pytest

tox: registry $(VENV)/bin/pytest
	$(VENV)/bin/python -m pip install -q tox
	PATH="$(PYENV_BINS):$$PATH" $(VENV)/bin/tox $(if $(TOX_ARGS),$(TOX_ARGS),-p 2)

lint: $(VENV)/bin/pytest
	@if [ -f ../shared/tools/check_module.py ]; then \
	    echo "$(PYTHON) ../shared/tools/check_module.py dxf.py"; \
	    $(PYTHON) ../shared/tools/check_module.py dxf.py; \
	fi
	@[ -x $(VENV)/bin/ruff ] || $(VENV)/bin/python -m pip install -q ruff
	$(VENV)/bin/ruff check --select E4,E7,E9,F,W,E501 --line-length 99 dxf.py test_dxf.py setup.py

coverage: registry $(VENV)/bin/pytest
	@[ -x $(VENV)/bin/coverage ] || $(VENV)/bin/python -m pip install -q coverage
	$(VENV)/bin/coverage run --include=dxf.py -m pytest $(PYTEST_ARGS)
	$(VENV)/bin/coverage report -m

demo: registry
	@.ci/demo.sh

bench:
	@if [ -f bench/bench.py ]; then $(PYTHON) bench/bench.py; else echo "no bench/bench.py yet"; fi

clean:
	rm -rf build dist *.egg-info .coverage htmlcov .pytest_cache __pycache__ bench/__pycache__

distclean: clean
	rm -rf .venv .venv-3.* .venv-pydxf .venv-oras .tox
