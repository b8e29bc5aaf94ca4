# lmc_lib: `make test` (what CI runs) and `make book` (the HTML book in _build/html).
#
# Chapters are notebooks/NN_name.md (jupytext MyST, the source of truth) paired with
# notebooks/NN_name.ipynb (no outputs). papermill executes the .ipynb at a scale into
# _build/<scale>/src/notebooks/, next to copies of book/, _config.yml and _toc.yml, and
# jupyter-book renders that folder (it executes nothing itself). Each chapter writes the numbers
# the appendix needs to _build/<scale>/results/ (JSON); the appendix pages that read them
# (book/reproduction.md, book/speed.md: MyST notebooks) are executed after the chapters.

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DELETE_ON_ERROR:
.SECONDEXPANSION:
.DEFAULT_GOAL := help

VENV := .venv
PYTHON := $(VENV)/bin/python
STAMP := $(VENV)/.installed
CHAPTERS := $(basename $(notdir $(wildcard notebooks/[0-9]*.md)))
# appendix pages that are notebooks: executed after the chapters, they read the results files
PAGES := reproduction speed
LIBRARY := $(wildcard lmc_lib/*.py lmc_lib/*/*.py)
BOOK_FILES := _config.yml _toc.yml $(wildcard book/*)
# what .ci/check_book.py reads for control characters, besides the built pages
SOURCES := $(wildcard notebooks/[0-9]*.md book/*.md book/*.bib) _config.yml _toc.yml README.md

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

.PHONY: help install sync check-sync lint unit-tests notebooks-ci nbval book-ci book-check test book clean

help:
	@echo "make test   unit tests, chapters at scale=ci, nbval, book build with warnings as errors, book checks"
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

# The Colab install cells take the repository from _config.yml, then the .ipynb follow the .md.
sync: | $(STAMP)
	$(PYTHON) .ci/colab_install.py --write
	jupytext --update --to ipynb $(CHAPTERS:%=notebooks/%.md)

check-sync: | $(STAMP)
	$(PYTHON) .ci/notebooks_in_sync.py
	$(PYTHON) .ci/colab_install.py

# $(call execute,SOURCE,OUTPUT,SCALE,PARAMETERS): papermill runs SOURCE into OUTPUT (its injected
# parameters cell tagged remove-cell), with the results folder of SCALE, and says how long it took.
define execute
@mkdir -p $(dir $(2))
@start=$$SECONDS; \
LMC_RESULTS_DIR=$(CURDIR)/_build/$(3)/results MPLBACKEND=$(INLINE) $(PYTHON) .ci/execute_notebook.py $(1) $(2) $(4); \
echo "$(notdir $(2)) at scale=$(3): $$((SECONDS - start)) s"
endef

# _build/<scale>/src/notebooks/NN_name.ipynb: the chapter executed with `-p scale <scale>`.
_build/%.ipynb: notebooks/$$(notdir $$*).ipynb $(LIBRARY) | $(STAMP)
	$(call execute,$<,$@,$(firstword $(subst /, ,$*)),-p scale $(firstword $(subst /, ,$*)))

# The appendix pages that are notebooks: the reproduction page after every chapter of its scale,
# the speed page from the benchmarks' results files.
chapter_notebooks = $(CHAPTERS:%=_build/$(1)/src/notebooks/%.ipynb)
_build/%/src/book/reproduction.ipynb: book/reproduction.md $$(call chapter_notebooks,$$*) | $(STAMP)
	$(call execute,$<,$@,$*)

_build/%/src/book/speed.ipynb: book/speed.md $(wildcard benchmarks/results/*.json) $(LIBRARY) | $(STAMP)
	$(call execute,$<,$@,$*)

# The book's pages and configuration beside the executed chapters (the notebook pages' sources
# stay out: their executed .ipynb stand in their place).
_build/%/src/_toc.yml: $(BOOK_FILES)
	@mkdir -p $(@D)/book
	cp -r book/. $(@D)/book/
	rm -f $(PAGES:%=$(@D)/book/%.md)
	cp _config.yml _toc.yml $(@D)/

# ruff (settings in pyproject.toml: pycodestyle and pyflakes, 120 columns) over the library, tests and scripts.
lint: | $(STAMP)
	$(VENV)/bin/ruff check lmc_lib tests benchmarks .ci

unit-tests: | $(STAMP)
	$(PYTHON) -m pytest tests

notebooks-ci: $(CHAPTERS:%=_build/ci/src/notebooks/%.ipynb)

# nbval re-executes each executed copy (scale=ci injected by papermill) and compares only the
# outputs of cells tagged `nbval-check-output` (cell metadata); a cell that raises fails it.
nbval: notebooks-ci
	LMC_RESULTS_DIR=$(CURDIR)/_build/ci/nbval-results MPLBACKEND=$(INLINE) \
	$(PYTHON) -m pytest --nbval-lax --nbval-current-env -p no:cacheprovider $(CHAPTERS:%=_build/ci/src/notebooks/%.ipynb)

# Every page re-read (--all) so that no warning hides in a cached page; warnings are errors.
# Not nit-picky (-n): a docstring's reference to a name the API page does not list stays plain text.
book-ci: notebooks-ci $(PAGES:%=_build/ci/src/book/%.ipynb) _build/ci/src/_toc.yml
	jupyter-book build _build/ci/src --path-output _build/ci --all -W --keep-going

# What a strict build lets through: unrendered tables, control characters, figures without a
# numbered caption, visible scaffolding (papermill, nbval, Colab) and math from a CDN.
book-check: book-ci
	$(PYTHON) .ci/check_book.py _build/ci/_build/html --sources $(SOURCES)

test: check-sync lint unit-tests notebooks-ci nbval book-ci book-check

book: $(CHAPTERS:%=_build/book/src/notebooks/%.ipynb) $(PAGES:%=_build/book/src/book/%.ipynb) _build/book/src/_toc.yml
	jupyter-book build _build/book/src --path-output . --all
	$(PYTHON) .ci/check_book.py _build/html --sources $(SOURCES)
	@echo "open _build/html/index.html (it works offline: MathJax is bundled)"

clean:
	rm -rf _build
