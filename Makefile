# The two commands a new user needs: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test venv bench lint clean dist sim-modes sim-compiled

$(STAMP): pyproject.toml setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	@# setuptools >= 77 notes, as a warning, that every editable install of a package_dir
	@# layout uses an import hook ("Editable installation. Please be careful with folders
	@# ..."): information, not a problem with this project's metadata; only that note is
	@# silenced, every other warning still shows.
	PYTHONWARNINGS="ignore:Editable installation" $(BIN)/python -m pip install --quiet -e '.[sim,test]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m keepmesh.agent.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=25

# The simulator's object mode (its default) hands decoded messages between simulated agents;
# it is an honest shortcut only if byte mode (every receiver decodes) gives the same trace
# hash on the same topology and seed (specs/simulator.md). CI runs this after the tests.
sim-modes: $(STAMP)
	d=$$(mktemp -d) && \
	$(BIN)/python -m keepmesh.agent.cli simulate examples/topologies/quick.toml --seed 7 --json --mode object > $$d/object.json && \
	$(BIN)/python -m keepmesh.agent.cli simulate examples/topologies/quick.toml --seed 7 --json --mode bytes > $$d/bytes.json && \
	$(BIN)/python -m keepmesh.agent.cli simulate examples/topologies/quick.toml --seed 7 --json --workers 2 > $$d/split.json && \
	$(BIN)/python -c 'import json, sys; a, b, c = (json.load(open(f)) for f in sys.argv[1:]); ok = a["trace_hash"] == b["trace_hash"] == c["trace_hash"] and a["handed_over"] > 0 == b["handed_over"] and c["workers"] == 2; print("sim-modes (object, bytes, 2 workers):", a["trace_hash"], b["trace_hash"], c["trace_hash"], "same" if ok else "DIFFER"); sys.exit(0 if ok else 1)' $$d/object.json $$d/bytes.json $$d/split.json; \
	rc=$$?; rm -rf $$d; exit $$rc

# Optional: the simulator's hot modules compiled by mypyc into build/compiled (same sources;
# same trace hashes, tests/test_sim_compiled.py). Use with PYTHONPATH=build/compiled or
# bench/simulator.py --compiled build/compiled. Needs a C compiler (docs/simulate.md).
sim-compiled: $(STAMP)
	$(BIN)/python -m keepmesh.simulations.compiled --out build/compiled

bench: $(STAMP)
	$(BIN)/python bench/channel.py

# mypy must see the folders under their import names (keepmesh.protocol, ...) or every
# cross-package import is Any; .lint/ is a tree of links that gives it that view.
lint: $(STAMP)
	$(BIN)/ruff check keepmesh protocol agent simulations
	rm -rf .lint && mkdir -p .lint/keepmesh && cp keepmesh/*.py .lint/keepmesh/
	for d in protocol agent simulations; do ln -s ../../$$d .lint/keepmesh/$$d; done
	cd .lint && ../$(BIN)/mypy --strict --config-file ../pyproject.toml -p keepmesh

# dist/keepmesh-VERSION-py3-none-any.whl (pipx install it on an edge device; pip pulls
# the dependencies' wheels for that platform) and dist/keepmesh.pyz (keepmesh alone,
# one file, for a Python that already has the dependencies). docs/edge-install.md.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m pip wheel --quiet --no-deps -w dist .
	$(BIN)/python packaging/build_zipapp.py dist/keepmesh.pyz

clean:
	rm -rf $(VENV) build dist *.egg-info
