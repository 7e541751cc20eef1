# The README's two commands: `make demo` and `make test`. Both install into .venv first.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.limbscan-installed
DEMO   ?= demo
FRACATLAS ?= ../shared/data/fracatlas-lowerlimb

.PHONY: install demo demo-train model test lint bench bench-ingest bench-inference bench-train clean

# torch and torchvision first, pinned: pip takes these builds from the machine's disk.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)

# The main job: the model in the repository scores the real radiographs in examples/ (20 FracAtlas
# test-split images and a CR DICOM): worklist, overlays, the worklist beside the examples' labels.
demo: install
	rm -rf $(DEMO)/examples
	$(BIN)/limbscan predict examples -o $(DEMO)/examples
	$(BIN)/python examples/report.py $(DEMO)/examples
	@echo "the page: $(BIN)/limbscan serve, then open http://127.0.0.1:8000 and drop images on it"

# Training end to end on SYNTHETIC phantoms (no data needed; fractures drawn three times wider than
# the hairline default so a few minutes of CPU training find them): split, train, evaluate on test.
demo-train: install
	$(BIN)/limbscan data synth -o $(DEMO)/dataset -n 200 --seed 0 --abnormal-fraction 0.5 --fracture-width 3
	$(BIN)/limbscan data split $(DEMO)/dataset --seed 0
	$(BIN)/limbscan train $(DEMO)/dataset -c configs/demo.yaml -o $(DEMO)/run
	$(BIN)/limbscan evaluate $(DEMO)/run $(DEMO)/dataset --split test -o $(DEMO)/report
	@echo "demo report: $(DEMO)/report/report.md (synthetic phantoms, not radiographs)"

test: install
	$(BIN)/python -m pytest -q -n 2 --timeout 600

# The three scenarios on the real FracAtlas subset: trained, thresholds picked on validation,
# evaluated once on test; bench/out/report/report.md. Rerunning resumes the training.
BENCH ?= bench
bench: install
	test -f $(FRACATLAS)/dataset.csv || (echo "no FracAtlas at $(FRACATLAS): set FRACATLAS=..." && exit 1)
	$(BIN)/limbscan data import fracatlas $(FRACATLAS) -o $(BENCH)/fracatlas -q
	$(BIN)/limbscan data split $(BENCH)/fracatlas --seed 0
	$(BIN)/limbscan benchmark $(BENCH)/fracatlas -c configs/cpu.yaml -o $(BENCH)/out

# The shipped model rebuilt from `make bench`'s run, then measured on the test split (docs/model-card.md).
SHIPPED := src/limbscan/pretrained/fracatlas-lowerlimb.limbscan
model: install
	$(BIN)/limbscan export $(BENCH)/out/run -o $(SHIPPED) --scenario whole-image,detector --half \
		--model-card docs/model-card.md --overwrite
	$(BIN)/limbscan evaluate $(SHIPPED) $(BENCH)/fracatlas --split test -o $(BENCH)/shipped-test

lint: install
	$(BIN)/ruff check src tests benchmarks

bench-ingest: install
	$(BIN)/python -m benchmarks.ingest --out benchmarks/results/ingest.json

# Images/s and peak memory of each scenario on FracAtlas JPEGs and DICOM, beside torchvision's
# maskrcnn_resnet50_fpn in the same run; needs the bundle `make bench` writes.
bench-inference: install
	test -f $(BENCH)/out/model.limbscan/bundle.json || (echo "no bundle at $(BENCH)/out/model.limbscan: run make bench first" && exit 1)
	$(BIN)/python -m benchmarks.inference --bundle $(BENCH)/out/model.limbscan --fracatlas $(FRACATLAS) \
		--out benchmarks/results/inference.json

# Training images/s of each network, channels-last against contiguous, beside torchvision's
# maskrcnn_resnet50_fpn in the same run; needs the dataset `make bench` imports.
bench-train: install
	test -f $(BENCH)/fracatlas/dataset.json || (echo "no dataset at $(BENCH)/fracatlas: run make bench first" && exit 1)
	$(BIN)/python -m benchmarks.train_speed $(BENCH)/fracatlas --out benchmarks/results/train_speed.json

clean:
	rm -rf $(DEMO) $(BENCH) .pytest_cache
