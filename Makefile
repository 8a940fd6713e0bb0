# pg_cep: PGXS build of a pure-SQL extension.
# The version lives only in control/pg_cep.control; the script of that version is built from
# the files named in sql/manifest.txt. Frozen versions and upgrade scripts live in extension/.

PG_CONFIG ?= pg_config
EXTVERSION := $(shell sed -n "s/^default_version *= *'\(.*\)'/\1/p" control/pg_cep.control)
SOURCES := $(addprefix sql/,$(shell grep -v '^\s*\(\#\|$$\)' sql/manifest.txt))
BUILT := build/pg_cep--$(EXTVERSION).sql
# Upgrade scripts into the current version are built from sql/upgrade/FROM--VERSION.txt.
UPGRADE_MANIFESTS := $(wildcard sql/upgrade/*--$(EXTVERSION).txt)
UPGRADES := $(patsubst sql/upgrade/%.txt,build/pg_cep--%.sql,$(UPGRADE_MANIFESTS))
FROZEN := $(filter-out extension/pg_cep--$(EXTVERSION).sql $(patsubst build/%,extension/%,$(UPGRADES)),\
	$(wildcard extension/pg_cep--*.sql))

MODULEDIR = extension
DATA = control/pg_cep.control $(FROZEN)
DATA_built = $(BUILT) $(UPGRADES)
EXTRA_CLEAN = build

PGXS := $(shell $(PG_CONFIG) --pgxs)
include $(PGXS)

.DEFAULT_GOAL := all
VENV ?= .venv
PY := $(VENV)/bin/python

$(BUILT): sql/manifest.txt $(SOURCES) control/pg_cep.control scripts/build-script
	@mkdir -p build
	scripts/build-script $(EXTVERSION) $@

build/pg_cep--%--$(EXTVERSION).sql: sql/upgrade/%--$(EXTVERSION).txt $(shell find sql -name '*.sql') \
		control/pg_cep.control scripts/build-script
	@mkdir -p build
	scripts/build-script $(EXTVERSION) $@ $< $*

.PHONY: deps venv test lint demo bench freeze
deps:
	scripts/ensure-deps

venv: $(VENV)/.installed
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test]'
	touch $@

# Everything: lint, pgTAP, isolation specs, property/fault/runner tests, all under pytest.
test: deps venv all
	$(MAKE) install
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: deps venv all
	$(MAKE) install
	$(VENV)/bin/pytest -m lint $(PYTEST_ARGS)

demo: deps venv all
	$(MAKE) install
	$(PY) demo/run_demo.py $(DEMO_ARGS)

bench: deps venv all
	$(MAKE) install
	$(PY) bench/run_bench.py $(BENCH_ARGS)

# Copy the built scripts of the current version (full and upgrades into it) into extension/,
# once per release; afterwards bump default_version and start sql/upgrade/<this>--<next>.txt.
freeze: all
	@test ! -e extension/pg_cep--$(EXTVERSION).sql || { echo "$(EXTVERSION) is already frozen"; exit 1; }
	cp $(BUILT) $(UPGRADES) extension/
