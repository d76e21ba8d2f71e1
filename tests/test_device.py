"""``device``: edges and degrees as torch operations on the CPU or a CUDA device, with the same results."""
import networkx as nx
import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from topoprune.cli import main
from topoprune.errors import ConfigError
from topoprune.graph.analysis import analyze_report
from topoprune.graph.bipartite import from_mask, select_edges
from topoprune.graph.degrees import mask_degrees
from topoprune.graph.config import AnalysisConfig, resolve_device

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A two-block state dict with attention and MLP names, saved as safetensors."""
    g = torch.Generator().manual_seed(1)
    tensors = {}
    for i in range(2):
        for name, shape in (("attn.q_proj", (32, 32)), ("attn.k_proj", (32, 32)), ("attn.v_proj", (32, 32)),
                            ("attn.o_proj", (32, 32)), ("mlp.fc1", (80, 32)), ("mlp.fc2", (32, 80))):
            tensors[f"layers.{i}.{name}.weight"] = torch.randn(shape, generator=g)
    tensors["layers.1.mlp.fc1.weight"] *= torch.rand(80, 32, generator=g) > 0.7  # a pruned matrix: nonzero edges
    path = tmp_path_factory.mktemp("device") / "model.safetensors"
    save_file(tensors, path)
    return path, tensors


@pytest.mark.parametrize("shape,keep", [((7, 5), 0.3), ((1, 9), 0.5), ((12, 1), 0.9), ((6, 4), 0.0)])
def test_mask_degrees_equal_the_graph_and_numpy(shape, keep):
    g = torch.Generator().manual_seed(0)
    mask = torch.rand(shape, generator=g) < keep
    din, dout = mask_degrees(mask)
    graph = from_mask(mask)
    assert din.dtype == dout.dtype == np.int64
    assert np.array_equal(din, graph.in_degree()) and np.array_equal(dout, graph.out_degree())
    assert np.array_equal(din, np.count_nonzero(mask.numpy(), axis=1))
    assert np.array_equal(dout, np.count_nonzero(mask.numpy(), axis=0))
    assert all(np.array_equal(a, b) for a, b in zip(mask_degrees(mask.float() * 3), (din, dout)))  # nonzero entries


def test_report_degrees_equal_a_networkx_oracle(tiny):
    path, tensors = tiny
    rep = analyze_report(path, device="cpu", n_jobs=1, fits=False, matrix_modularity=False)
    assert rep.meta["timing"]["device"] == "cpu"
    for name, w in tensors.items():
        mask = select_edges(w).mask.numpy()
        n_out, n_in = mask.shape
        G = nx.Graph()
        G.add_nodes_from(range(n_in + n_out))
        rows, cols = np.nonzero(mask)
        G.add_edges_from(zip(cols.tolist(), (rows + n_in).tolist()))  # inputs 0..in-1, outputs after them
        din, dout = rep.degrees[name]
        assert din.tolist() == [G.degree(n_in + i) for i in range(n_out)]
        assert dout.tolist() == [G.degree(j) for j in range(n_in)]
        row = rep.matrices.set_index("name").loc[name]
        assert row["n_edges"] == G.number_of_edges() and row["in_mean"] == pytest.approx(din.mean())


def test_auto_is_the_cpu_here_and_gives_the_same_report(tiny):
    path, _ = tiny
    a = analyze_report(path, n_jobs=1, block_modularity=True)
    b = analyze_report(path, n_jobs=1, block_modularity=True, device="auto")
    assert b.meta["config"]["device"] == "auto" and b.meta["timing"]["device"] == ("cuda:0" if CUDA else "cpu")
    pd.testing.assert_frame_equal(a.matrices, b.matrices, check_exact=True)
    pd.testing.assert_frame_equal(a.layered, b.layered, check_exact=True)


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_gives_the_cpu_report(tiny):
    path, _ = tiny
    for n_jobs in (1, 2):
        a = analyze_report(path, n_jobs=n_jobs, block_modularity=True)
        b = analyze_report(path, n_jobs=n_jobs, block_modularity=True, device="cuda")
        assert b.meta["timing"]["device"].startswith("cuda")
        pd.testing.assert_frame_equal(a.matrices, b.matrices, check_exact=True)
        pd.testing.assert_frame_equal(a.layered, b.layered, check_exact=True)
        for name, (din, dout) in a.degrees.items():
            assert np.array_equal(din, b.degrees[name][0]) and np.array_equal(dout, b.degrees[name][1])
        for name, pattern in a.patterns.items():
            assert np.array_equal(pattern, b.patterns[name])


@pytest.mark.parametrize("device", ["gpu", "cuda:", "cuda:-1", "CPU", ""])
def test_malformed_device_refused(device):
    with pytest.raises(ConfigError, match=r"device \(--device\)"):
        AnalysisConfig(device=device)


@pytest.mark.skipif(CUDA, reason="this machine has a CUDA device")
def test_cuda_without_a_gpu_is_one_line_exit_2(tiny, tmp_path):
    path, _ = tiny
    with pytest.raises(ConfigError, match=r"device \(--device\) cuda:1: .*CUDA"):
        resolve_device("cuda:1")
    for device in ("cuda", "cuda:0"):
        r = CliRunner().invoke(main, ["analyze", str(path), "--device", device, "--out", str(tmp_path / "out")])
        lines = r.stderr.strip().splitlines()
        assert r.exit_code == 2 and len(lines) == 1, r.stderr
        assert lines[0].startswith(f"error: device (--device) {device}: ") and "CUDA" in lines[0]
        assert not (tmp_path / "out").exists()


def test_malformed_device_on_the_command_line(tiny, tmp_path):
    path, _ = tiny
    r = CliRunner().invoke(main, ["analyze", str(path), "--device", "gpu", "--out", str(tmp_path / "out")])
    lines = r.stderr.strip().splitlines()
    assert r.exit_code == 2 and len(lines) == 1 and "--device" in lines[0] and "'gpu'" in lines[0], r.stderr
    r = CliRunner().invoke(main, ["analyze", "--help"])
    assert "--device" in r.output and "auto" in r.output
