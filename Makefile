# The two commands of the README. `make demo` sets up and runs the main job; `make test` runs the tests.
# Anything that starts Ray or a server runs inside ../shared/tools/loopback-ns when this workplace
# provides it (a private network namespace with only 127.0.0.1); elsewhere it runs as is.
VENV    ?= .venv
PY      := $(VENV)/bin/python
NS      := $(shell [ -x ../shared/tools/loopback-ns ] && echo ../shared/tools/loopback-ns)
DATA    ?= $(firstword $(VOSBATCH_DATA_ROOT) $(wildcard ../shared/data/DAVIS2016))
DEMO_SEQUENCES ?= blackswan,car-shadow,cows

export RAY_USAGE_STATS_ENABLED = 0
export OMP_WAIT_POLICY = PASSIVE

.PHONY: install demo test benchmark browser

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,crf]'  # crf: pydensecrf2 builds from source (~35 s)
	touch $@

install: $(VENV)/.installed

demo: install
	$(NS) $(VENV)/bin/vosbatch submit --dataset davis2016 $(if $(DATA),--data-root $(DATA)) \
		--sequences $(DEMO_SEQUENCES) --output runs

# Chromium for the report's browser tests: installed (apt, as root) before entering the namespace,
# which has no network; where it cannot be installed those tests skip and say why.
browser: install
	@cd tests && ../$(PY) -c "from support.browser import ensure_chromium as e; p, why = e(); print('chromium:', p or 'unavailable, browser tests will skip: ' + why)"

test: install browser
	$(NS) $(PY) -m pytest -q

benchmark: install
	$(NS) $(PY) jobs/benchmark_davis.py --data-root $(DATA)
