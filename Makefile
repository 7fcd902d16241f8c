# Everything a fresh machine needs: `make demo` runs the main job, `make test` the test suite.
PYTHON ?= python3
# The CPU wheel of torch 2.13.0 is what these machines install; on a GPU machine pass e.g.
# TORCH_SPEC="torch --index-url ..." to get a CUDA build.
TORCH_SPEC ?= torch==2.13.0
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install system-packages demo test bench face-model tiny-model estimator evaluate benchmark

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet $(TORCH_SPEC)
	$(PY) -m pip install --quiet -e ".[test,bench]"
	touch $(STAMP)

install: $(STAMP)

# Debian packages the tests need: espeak-ng's library speaks the lip-sync test sentences and reports
# each phone's exact time (the CLI is for making test speech by hand); chromium is the browser the
# web app's test drives through playwright (which cannot download its own here). Installed only when missing.
SYSTEM_PACKAGES := libespeak-ng1 espeak-ng chromium
system-packages:
	@missing="$$(for p in $(SYSTEM_PACKAGES); do dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q 'ok installed' || echo $$p; done)"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing Debian packages: run  sudo apt-get install $$missing" >&2; exit 1; fi; \
	  echo "installing $$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing; \
	fi

demo: $(STAMP)
	$(VENV)/bin/mimaface demo -o demo_output

test: $(STAMP) system-packages
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/bench_face3d.py
	$(PY) benchmarks/bench_render.py
	$(PY) benchmarks/bench_train_step.py
	$(PY) benchmarks/bench_animate.py

face-model: $(STAMP)
	$(PY) scripts/build_face_model.py

# The bundled tiny model, from scratch (SynthTalk -> VAE -> stage 1 -> stage 2 -> src/mimaface/assets/tiny_model).
# About 90 minutes on 2 CPU cores; re-running resumes what is done.
TRAIN := $(VENV)/bin/mimaface train --config configs/tiny.yaml --data runs/synthtalk64
SYNTH64 := $(VENV)/bin/mimaface synth -o runs/synthtalk64 --identities 400 --clips-per-identity 2 --frames 24 --size 64 --workers 1
TINY_VAE := test -d runs/tiny-vae/final || $(TRAIN) --stage vae --output runs/tiny-vae $(if $(wildcard runs/tiny-vae/checkpoints),--resume)
tiny-model: $(STAMP)
	$(SYNTH64)
	$(TINY_VAE)
	test -d runs/tiny-1/final || $(TRAIN) --stage 1 --vae runs/tiny-vae/final --output runs/tiny-1 data.latent_cache=runs/latents $(if $(wildcard runs/tiny-1/checkpoints),--resume)
	test -d runs/tiny-2/final || $(TRAIN) --stage 2 --pretrained runs/tiny-1/final --output runs/tiny-2 data.latent_cache=runs/latents $(if $(wildcard runs/tiny-2/checkpoints),--resume)
	$(PY) scripts/export_tiny_model.py --runs runs

# The bundled SynthTalk estimator that `mimaface evaluate` reads generated frames with (about 20 minutes).
estimator: $(STAMP)
	$(VENV)/bin/mimaface synth -o runs/synthtalk64-est --identities 1500 --clips-per-identity 2 --frames 24 --size 64 --seed 7 --workers 1 --no-sheets
	$(VENV)/bin/mimaface train-estimator --data runs/synthtalk64-est -o runs/estimator --steps 4000 --threads 1
	rm -rf src/mimaface/assets/estimator && cp -r runs/estimator src/mimaface/assets/estimator

# The evaluation of the bundled tiny model on 20 held-out SynthTalk clips, with and without ICA.
evaluate: $(STAMP)
	test -d runs/synthtalk64 || $(SYNTH64)
	$(VENV)/bin/mimaface evaluate --data runs/synthtalk64 --max-clips 20 -o runs/eval_tiny
	$(VENV)/bin/mimaface evaluate --data runs/synthtalk64 --max-clips 20 --no-ica -o runs/eval_tiny_noica

# The ablation benchmark (5 stage-1 variants x 2 seeds, evaluated; rewrites the README section).
# About 4 to 5 hours on 2 cores; re-running resumes.
benchmark: $(STAMP)
	test -d runs/synthtalk64 || $(SYNTH64)
	$(TINY_VAE)
	$(PY) scripts/benchmark.py --runs runs --jobs 2
