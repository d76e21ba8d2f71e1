"""analyze / summarize on hand-made and real checkpoints; degenerate matrices are flagged, not fatal."""
import logging

import numpy as np
import pandas as pd
import pytest
import torch

import topoprune
from topoprune.graph.report import COLUMNS
from topoprune.errors import CheckpointError, ConfigError, TensorError


def test_columns_and_known_degrees(mlp_state):
    df = topoprune.analyze(mlp_state, density=0.25, n_jobs=1)
    assert list(df.columns) == COLUMNS
    assert set(df["role"]) == {"mlp_in", "mlp_out"} and set(df["block"]) == {0, 1}
    row = df[df["name"] == "layers.0.mlp.fc1.weight"].iloc[0]
    assert row["n_edges"] == round(0.25 * 96 * 48) and row["edge_mode"] == "density"
    assert row["in_mean"] == pytest.approx(row["n_edges"] / 96) and row["out_mean"] == pytest.approx(row["n_edges"] / 48)
    assert 0 <= row["modularity"] <= 1 and row["status"] == "ok"
    assert df.attrs["config"]["graph"]["density"] == 0.25 and df.attrs["version"] == topoprune.__version__


def test_jobs_do_not_change_results(mlp_state):
    a = topoprune.analyze(mlp_state, n_jobs=1)
    b = topoprune.analyze(mlp_state, n_jobs=2)
    pd.testing.assert_frame_equal(a, b)


def test_all_zero_matrix_flagged(mlp_state):
    mlp_state["layers.1.mlp.fc2.weight"] = torch.zeros(48, 96)
    df = topoprune.analyze(mlp_state, n_jobs=1)
    row = df.set_index("name").loc["layers.1.mlp.fc2.weight"]
    assert row["status"] == "all_zero" and row["n_edges"] == 0 and np.isnan(row["in_alpha"])
    assert (df["status"] == "ok").sum() == 3


def test_nan_weights_error_or_flag(mlp_state):
    mlp_state["layers.0.mlp.fc2.weight"][3, 4] = float("nan")
    with pytest.raises(TensorError, match="layers.0.mlp.fc2.weight: contains NaN or Inf"):
        topoprune.analyze(mlp_state, n_jobs=1)
    df = topoprune.analyze(mlp_state, n_jobs=1, nonfinite="flag")
    assert df.set_index("name").loc["layers.0.mlp.fc2.weight", "status"] == "nonfinite"


def test_only_1d_tensors_refused():
    with pytest.raises(CheckpointError, match="no 2-D floating-point weight matrices"):
        topoprune.analyze({"a.bias": torch.ones(4), "b.bias": torch.ones(3)})


def test_unknown_layout_analysed_as_linear_with_warning(caplog):
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 16))
    with caplog.at_level(logging.WARNING, logger="topoprune"):
        df = topoprune.analyze(model, n_jobs=1)
    assert set(df["role"]) == {"linear"} and len(df) == 2
    assert "unknown layout" in caplog.text
    assert df.attrs["known_layout"] is False


@pytest.mark.parametrize("kwargs, message", [
    (dict(density=0), "density must be in"), (dict(density=2.0), "density must be in"),
    (dict(threshold=-1.0), "threshold must be"), (dict(roles=("qq",)), "unknown role"),
    (dict(n_jobs=0), "n_jobs"), (dict(layers=(99,)), "no matrix matches"),
])
def test_bad_settings(mlp_state, kwargs, message):
    with pytest.raises(ConfigError, match=message):
        topoprune.analyze(mlp_state, **kwargs)


def test_pruned_checkpoint_uses_its_nonzeros(mlp_state):
    w = mlp_state["layers.0.mlp.fc1.weight"]
    w[w.abs() < 1.0] = 0  # ~68 % pruned
    df = topoprune.analyze(mlp_state, n_jobs=1, fits=False)
    row = df.set_index("name").loc["layers.0.mlp.fc1.weight"]
    assert row["edge_mode"] == "nonzero" and row["n_edges"] == int((w != 0).sum())


def test_layers_roles_selection_and_threshold(tiny_bert_dir):
    df = topoprune.analyze(tiny_bert_dir, layers=[1], roles=["q", "mlp_in"], threshold=0.02, n_jobs=1)
    assert set(df["block"]) == {1} and set(df["role"]) == {"q", "mlp_in"}
    assert set(df["edge_mode"]) == {"threshold"}


def test_minilm_report_and_summary(minilm_path):
    rep = topoprune.analyze_report(minilm_path, block_modularity=True)
    df = rep.matrices
    assert len(df) == 37  # 6 blocks x 6 matrices + pooler
    blocks = df[df["block"] >= 0]
    assert blocks.groupby("block")["role"].apply(set).map(len).eq(6).all()
    assert (df["status"] == "ok").all() and df["in_alpha"].notna().all()
    assert set(rep.layered["component"]) == {"attention", "mlp"} and len(rep.layered) == 12
    assert rep.layered["modularity"].between(0, 1).all()
    mlp_in = df[df["role"] == "mlp_in"].iloc[0]
    din, dout = rep.degrees[mlp_in["name"]]
    assert din.shape == (1536,) and dout.shape == (384,) and din.mean() == pytest.approx(mlp_in["in_mean"])
    s = topoprune.summarize(rep)
    assert set(s["level"]) == {"role", "block", "model"}
    model = s[s["level"] == "model"].iloc[0]
    assert model["n_matrices"] == 37 and model["n_edges_total"] == df["n_edges"].sum()
    assert s[s["level"] == "block"]["layered_modularity_mlp"].notna().sum() == 6


def test_block_and_whole_model_graphs(tiny_bert_dir):
    rep = topoprune.analyze_report(tiny_bert_dir, block_modularity=True, model_modularity=True, fits=False)
    lay = rep.layered.set_index(["block", "component"])
    assert set(lay.index) == {(0, "attention"), (0, "mlp"), (1, "attention"), (1, "mlp"), (-1, "model")}
    whole = lay.loc[(-1, "model")]
    blocks = rep.layered[rep.layered["component"] != "model"]
    assert whole["n_layers"] == 9 and whole["n_edges"] == blocks["n_edges"].sum()
    assert whole["n_nodes"] == 5 * 64 + 2 * 64 + 2 * 128  # 5 residual stages, 2 head and 2 hidden layers
    mlp0 = lay.loc[(0, "mlp")]
    assert mlp0["hidden_n"] == 128 and mlp0["n_nodes"] == 64 + 128 + 64
    assert 0 < whole["modularity"] < 1


def test_jobs_do_not_change_layered_or_weighted_results(tiny_bert_dir):
    from topoprune.graph.config import AnalysisConfig, ModularityConfig

    config = AnalysisConfig(modularity=ModularityConfig(weighted=True, seed=3))
    kw = dict(config=config, block_modularity=True, model_modularity=True, fits=False)
    a = topoprune.analyze_report(tiny_bert_dir, n_jobs=1, **kw)
    b = topoprune.analyze_report(tiny_bert_dir, n_jobs=2, **kw)
    pd.testing.assert_frame_equal(a.matrices, b.matrices)
    pd.testing.assert_frame_equal(a.layered, b.layered)


def test_a_worker_gets_a_packed_graph_not_an_edge_list(mlp_state):
    """What a process pool receives for a matrix's modularity: bit-packed edges, not an [E, 2] array."""
    from concurrent.futures import Executor, Future

    from topoprune.graph.analysis import _heavy_metrics, _matrix, matrix_row
    from topoprune.graph.config import AnalysisConfig
    from topoprune.graph.edges import PackedEdges
    from topoprune.graph.loading import open_checkpoint
    from topoprune.graph.roles import describe

    class Recorder(Executor):
        def submit(self, fn, /, *args, **kwargs):
            self.args = args
            fut = Future()
            fut.set_result(fn(*args, **kwargs))
            return fut

    config, rec = AnalysisConfig(n_jobs=1), Recorder()
    spec = next(s for s in describe(open_checkpoint(mlp_state)).specs if s.name == "layers.0.mlp.fc1.weight")
    w = _matrix(mlp_state[spec.tensor], spec)
    row, g, fut = matrix_row(w, spec, config, rec)
    packed = rec.args[2]
    assert isinstance(packed, PackedEdges) and packed.bits is not None and packed.data is None
    assert packed.nbytes < g.n_edges * 4 and not any(isinstance(a, np.ndarray) and a.ndim == 2 for a in rec.args)
    def metrics(result):  # less the seconds, which differ from run to run
        return {k: v for k, v in result.items() if not k.startswith("t_")}

    assert metrics(fut.result()) == metrics(_heavy_metrics(g.in_degree(), g.out_degree(), g, config))  # in-process


def test_bounded_pool_holds_few_waiting_tasks():
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from topoprune.graph.workers import Bounded

    gate, lock, state = threading.Event(), threading.Lock(), {"open": 0, "most": 0}

    def task(i):
        gate.wait(5)
        with lock:
            state["open"] -= 1
        return i

    with ThreadPoolExecutor(2) as inner:
        pool = Bounded(inner, 3)
        futures = []

        def submit_all():
            for i in range(10):
                with lock:
                    state["open"] += 1
                    state["most"] = max(state["most"], state["open"])
                futures.append(pool.submit(task, i))

        t = threading.Thread(target=submit_all)
        t.start()
        t.join(0.3)
        assert t.is_alive() and len(futures) == 3  # the fourth submit waits for a slot
        gate.set()
        t.join(5)
        assert [f.result() for f in futures] == list(range(10)) and state["most"] <= 4


def test_large_allocations_are_mapped_where_glibc_allows():
    """The analysing process hands large freed arrays back to the system (a fixed glibc mmap threshold)."""
    import platform
    import sys

    from topoprune.graph import workers

    topoprune.analyze({"layers.0.mlp.fc1.weight": torch.randn(16, 8)}, n_jobs=1, fits=False)
    assert workers._mapped, "the analysis did not set the allocation policy"
    if sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc":
        assert workers._mapped == [True] and workers.map_large_allocations() is True
