# Two commands: `make run` brings the whole system up, `make test` runs every test.
# Both create .venv and install the project first; nothing else needs to be installed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint services-stop clean prometheus-tools

run: $(STAMP)
	$(BIN)/backend up

test: $(STAMP) prometheus-tools
	$(BIN)/pytest

# promtool and prometheus (Debian's `prometheus` package): the alert-rule and real-scrape tests.
APT := $(if $(filter 0,$(shell id -u)),,sudo) env DEBIAN_FRONTEND=noninteractive apt-get -q
prometheus-tools:
	@command -v promtool >/dev/null && command -v prometheus >/dev/null || \
		$(APT) install -y --no-install-recommends prometheus >/dev/null 2>&1 || \
		{ $(APT) update >/dev/null && \
			$(APT) install -y --no-install-recommends prometheus >/dev/null; } || \
		{ echo "the tests need promtool and prometheus: apt-get install prometheus"; exit 1; }

bench: $(STAMP)
	@command -v wrk >/dev/null || apt-get install -y -q wrk >/dev/null || \
		{ echo "bench needs wrk: apt-get install wrk"; exit 1; }
	$(BIN)/python -m bench

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

services-stop: $(STAMP)
	$(BIN)/backend services stop

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	-$(BIN)/backend services stop
	rm -rf $(VENV) .run .pytest_cache .ruff_cache *.egg-info
