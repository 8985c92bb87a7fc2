VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
DEMO_DB ?= sqlite:///predictions.db

.PHONY: install demo test bench sql clean

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# the [mysql] extra (in [test]) builds against MariaDB Connector/C: install its headers where apt can
	command -v mariadb_config >/dev/null || ! command -v apt-get >/dev/null || apt-get install -y -q libmariadb-dev >/dev/null
	$(PIP) install --quiet -e '.[test]'
	touch $@

install: $(VENV)/.installed

## make demo: build the example's data and model, run it on SQLite, read the view back
demo: install
	$(PY) jobs/example_data.py --db $(DEMO_DB)
	$(VENV)/bin/pipeline run churn --db $(DEMO_DB)
	$(PY) jobs/example_data.py --db $(DEMO_DB) --show

## make test: every test, on SQLite, PostgreSQL and MariaDB ($$PIPELINE_TEST_POSTGRES_URL, $$PIPELINE_TEST_MYSQL_URL)
test: install
	$(PY) -m pytest -q

## make bench: pipeline vs a naive pandas script vs the raw limit; writes bench/results.md (an hour or more)
bench: install
	$(PY) bench/run.py $(BENCH_ARGS)

## make sql: regenerate sql/<dialect>/metadata.sql from pipeline/database/schema.py
sql: install
	$(PY) -c 'from pipeline.database.schema import write_ddl_files; print(*write_ddl_files(), sep="\n")'

clean:
	rm -rf $(VENV) predictions.db predictions.db-wal predictions.db-shm
