# lmc_lib: `make test` (what CI runs) and `make book` (the HTML book in _build/html).
#
# Chapters are notebooks/NN_name.md (jupytext MyST, the source of truth) paired with
# notebooks/NN_name.ipynb (no outputs). papermill executes the .ipynb at a scale into
# _build/<scale>/src/notebooks/, next to copies of book/, _config.yml and _toc.yml, and
# jupyter-book renders that folder (it executes nothing itself).

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:
.SECONDEXPANSION:
.DEFAULT_GOAL := help

VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHAPTERS := $(basename $(notdir $(wildcard notebooks/[0-9]*.md)))
LIBRARY := $(wildcard lmc_lib/*.py lmc_lib/*/*.py)
BOOK_FILES := _config.yml _toc.yml $(wildcard book/*)

export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MPLBACKEND ?= Agg
# Idle OpenMP threads sleep instead of spinning: on a busy 2-core machine spinning threads made
# training 6x slower (measured: 6.3 s -> 1.0 s for 3 epochs of a small MLP).
export OMP_WAIT_POLICY ?= PASSIVE
# Kernels must keep the inline backend, or figures never reach the notebook (MPLBACKEND=Agg in CI).
INLINE := module://matplotlib_inline.backend_inline
# The offline data beside a clone (developers, CI); without it the loaders download.
ifeq ($(origin LMC_DATA_DIR),undefined)
ifneq ($(wildcard ../shared/data/MNIST),)
export LMC_DATA_DIR := $(abspath ../shared/data)
endif
endif

.PHONY: help install sync check-sync unit-tests notebooks-ci nbval book-ci test book clean

help:
	@echo "make test   unit tests, chapters at scale=ci, nbval, book build with warnings as errors"
	@echo "make book   chapters at scale=book, HTML book in _build/html"
	@echo "make sync   regenerate notebooks/*.ipynb from notebooks/*.md"
	@echo "make install / make clean"

# Re-installs when pyproject.toml changes; the stamp makes a second run skip it.
$(STAMP): pyproject.toml
	test -x $(PYTHON) || python3 -m venv $(VENV)
	$(PYTHON) -m pip install --upgrade pip
	$(PYTHON) -m pip install -e '.[book,dev]'
	touch $@

install: $(STAMP)

sync: | $(STAMP)
	jupytext --update --to ipynb $(CHAPTERS:%=notebooks/%.md)

check-sync: | $(STAMP)
	$(PYTHON) .ci/notebooks_in_sync.py

# _build/<scale>/src/notebooks/NN_name.ipynb: the chapter executed with `-p scale <scale>`.
_build/%.ipynb: notebooks/$$(notdir $$*).ipynb $(LIBRARY) | $(STAMP)
	@mkdir -p $(@D)
	@start=$$SECONDS; \
	MPLBACKEND=$(INLINE) papermill --no-progress-bar --log-level WARNING -k python3 -p scale $(firstword $(subst /, ,$*)) $< $@; \
	echo "$(notdir $@) at scale=$(firstword $(subst /, ,$*)): $$((SECONDS - start)) s"

# The book's pages and configuration beside the executed chapters.
_build/%/src/_toc.yml: $(BOOK_FILES)
	@mkdir -p $(@D)
	rm -rf $(@D)/book
	cp -r book _config.yml _toc.yml $(@D)/

unit-tests: | $(STAMP)
	$(PYTHON) -m pytest tests

notebooks-ci: $(CHAPTERS:%=_build/ci/src/notebooks/%.ipynb)

# nbval re-executes each executed copy (scale=ci injected by papermill) and compares only the
# outputs of cells marked `# NBVAL_CHECK_OUTPUT`.
nbval: notebooks-ci
	MPLBACKEND=$(INLINE) $(PYTHON) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider $(CHAPTERS:%=_build/ci/src/notebooks/%.ipynb)

# Every page re-read (--all) so that no warning hides in a cached page; warnings are errors.
# Not nit-picky (-n): a docstring's reference to a name the API page does not list stays plain text.
book-ci: notebooks-ci _build/ci/src/_toc.yml
	jupyter-book build _build/ci/src --path-output _build/ci --all -W --keep-going

test: check-sync unit-tests notebooks-ci nbval book-ci

book: $(CHAPTERS:%=_build/book/src/notebooks/%.ipynb) _build/book/src/_toc.yml
	jupyter-book build _build/book/src --path-output . --all
	@echo "open _build/html/index.html"

clean:
	rm -rf _build
