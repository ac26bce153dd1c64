# Two commands a new user needs: `make demo` and `make test`. Both create .venv on
# first use (pinned to Scipion's pins, CPU torch) and are quick once it exists.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
JOBS   ?= 2

.PHONY: venv demo test test-scipion test-gui bench model clean help

help:
	@echo "make demo   - set up, then run the whole chain on a built-in example (headless Scipion project)"
	@echo "make test   - set up, then run unit + headless Scipion protocol tests"
	@echo "make test-gui - the demo project in the real Scipion GUI under Xvfb: screenshots -> docs/images/"
	@echo "make bench  - speed/quality benchmarks -> benchmarks/results/*.json"
	@echo "make model  - retrain the shipped models (deepcluster/models/)"

venv: $(STAMP)

$(STAMP): requirements.txt requirements-downstream.txt setup.py
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -r requirements.txt
	# the downstream plugins the tests feed our outputs to (no binaries; --no-deps keeps the pins)
	$(PY) -m pip install -q --no-deps -r requirements-downstream.txt
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

demo: $(STAMP)
	$(PY) -m deepcluster demo

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider deepcluster/tests

# the pyworkflow protocol tests through Scipion's own runner
test-scipion: $(STAMP)
	SCIPION_HOME=$$($(PY) -c "from deepcluster import headless; print(headless.configure())") \
	SCIPION_PYTHON=$(abspath $(PY)) $(VENV)/bin/scipion tests deepcluster.tests

# The GUI as a user meets it: the demo project opened in the real Scipion GUI on a
# virtual display, every deepcluster form and viewer screenshotted (build/gui/shots/,
# the README's set into docs/images/) and checked. Installs Xvfb, xdotool and
# ImageMagick with apt-get when they are missing (as root, or through sudo).
GUI_TOOLS := Xvfb xdotool import
test-gui: $(STAMP)
	@for t in $(GUI_TOOLS); do command -v $$t >/dev/null || missing=1; done; \
	if [ -n "$$missing" ]; then \
	    SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	    $$SUDO apt-get update -q && $$SUDO apt-get install -y -q xvfb xdotool imagemagick x11-utils; \
	fi
	$(PY) deepcluster/tests/gui/run_gui.py --out docs/images

bench: $(STAMP)
	$(PY) benchmarks/run_all.py

# The shipped models (see their MODEL_CARD*.md): one stage each, from scratch;
# 7.5 min each on an H100 (MODEL_DEVICE=cuda), days on a CPU.
MODEL_DEVICE ?= auto
model: $(STAMP)
	$(PY) benchmarks/train_shipped_model.py --device $(MODEL_DEVICE) --steps 19000 \
	    --out deepcluster/models/default.pt --work-dir runs/default
	$(PY) benchmarks/train_shipped_model.py --device $(MODEL_DEVICE) --steps 17400 --widths 16 32 64 128 128 \
	    --out deepcluster/models/accurate.pt --work-dir runs/accurate

clean:
	rm -rf $(VENV) build *.egg-info
