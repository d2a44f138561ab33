VENV ?= .venv
PY := $(VENV)/bin/python

.PHONY: install run test bench clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

run: install
	$(VENV)/bin/smsgw serve

test: install tests/node/node_modules tests/browser/node_modules
	$(PY) -m pytest -q

# The real @rails/actioncable client, for the protocol test (git-ignored folder).
tests/node/node_modules: tests/node/package-lock.json
	cd tests/node && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# playwright-core, driving Debian's /usr/bin/chromium for the dashboard test (git-ignored).
tests/browser/node_modules: tests/browser/package-lock.json
	cd tests/browser && npm ci --no-audit --no-fund --loglevel=error
	touch $@

bench: install
	$(PY) -m bench.run
	$(PY) -m bench.steady --rates 250,500,1000 --seconds 60 --results bench/RESULTS.md

clean:
	rm -rf $(VENV) var
