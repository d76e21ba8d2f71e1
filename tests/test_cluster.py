"""``--scheduler``: the per-matrix work on a Dask cluster gives the local results, fails in one line, leaves nothing.

A ``local:N`` cluster is started and closed by the analysis itself; the tests of a running cluster
share one (``running``), reached by its address as a remote cluster would be.
"""
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner
from reports import assert_same_report, save_tiny_llama
from safetensors.torch import save_file

import topoprune
from topoprune.cli import main
from topoprune.errors import ConfigError, TensorError
from topoprune.graph.analysis import analyze_report
from topoprune.graph.config import AnalysisConfig

pytest.importorskip("distributed")
psutil = pytest.importorskip("psutil")

SETTINGS = dict(block_modularity=True, model_modularity=True)  # fits and modularity are on by default


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error(result, *needles):
    """Exit code 2 and one ``error:`` line on stderr holding every needle."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, (result.exit_code, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def workers():
    """This process's descendants, less multiprocessing's own helpers (the fork server the local
    clusters' workers are forked from, and the resource tracker), which end with this process."""
    me = os.getpid()
    out = []
    for p in psutil.Process(me).children(recursive=True):
        try:
            helper = p.ppid() == me and any(h in " ".join(p.cmdline()) for h in ("forkserver", "resource_tracker"))
            if not helper and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return set(out)


def alive(p):
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def settled(before, timeout=10.0):
    """Worker processes started since ``before`` still alive after up to ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while (left := workers() - before) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


@pytest.fixture(scope="module")
def tiny_llama(tmp_path_factory):
    """A 2-layer random-init LLaMA (grouped-query attention) saved with save_pretrained."""
    return save_tiny_llama(tmp_path_factory.mktemp("tiny_llama"), layers=2, hidden=64, ffn=96)


@pytest.fixture(scope="module")
def local_report(tiny_llama):
    """The local-pool analysis (computed before any cluster runs in this process: the pool forks)."""
    return analyze_report(tiny_llama, n_jobs=2, **SETTINGS)


@pytest.fixture(scope="module")
def running(local_report):
    """The address of a running two-worker cluster; a task whose worker dies fails at once."""
    import dask

    from topoprune.graph.cluster import connect

    with dask.config.set({"distributed.scheduler.allowed-failures": 0}), \
            connect(AnalysisConfig(scheduler="local:2"), 2) as client:
        yield client.scheduler.address


def nan_checkpoint(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.mlp.fc1.weight": torch.randn(32, 16, generator=g) for i in range(2)}
    tensors["layers.1.mlp.fc1.weight"][3, 4] = float("nan")
    path = tmp_path / "nan" / "model.safetensors"
    path.parent.mkdir()
    save_file(tensors, path)
    return path


def test_local_cluster_gives_the_local_results_and_leaves_no_process(tiny_llama, local_report):
    before = workers()
    rep = analyze_report(tiny_llama, scheduler="local:2", **SETTINGS)
    assert_same_report(local_report, rep)
    df = rep.matrices
    assert len(df) == 14 and df["modularity"].notna().all() and df["in_alpha"].notna().all()
    assert set(rep.layered["component"]) == {"attention", "mlp", "model"}
    assert rep.meta["config"]["scheduler"] == "local:2"
    assert not settled(before), "worker processes outlived the analysis"


def test_local_cluster_closed_after_an_error(tmp_path):
    before = workers()
    with pytest.raises(TensorError, match=r"layers\.1\.mlp\.fc1\.weight: contains NaN or Inf"):
        topoprune.analyze(nan_checkpoint(tmp_path), scheduler="local:1", fits=False)
    assert not settled(before), "worker processes outlived the failed analysis"


def test_command_on_a_running_cluster(tmp_path, tiny_llama, running):
    """The same report files, byte for byte, as with the local pool."""
    a = run("analyze", tiny_llama, "--scheduler", running, "--block-modularity", "--out", tmp_path / "A")
    b = run("analyze", tiny_llama, "-j", "1", "--block-modularity", "--out", tmp_path / "B")
    assert a.exit_code == 0 and b.exit_code == 0, (a.stderr, b.stderr)
    assert a.stderr == ""
    for name in ("report.csv", "layered.csv", "summary.csv", "degrees.safetensors", "patterns.safetensors"):
        assert (tmp_path / "A" / name).read_bytes() == (tmp_path / "B" / name).read_bytes(), name


def test_cluster_resumes_from_a_journal_and_records_its_work(tmp_path, tiny_llama, running, local_report):
    """What a local analysis finished is reused on the cluster (and the other way round): the journal
    records results, not where they were computed."""
    from topoprune.graph.journal import _key, block_name, n_entries

    journal = tmp_path / "journal"
    analyze_report(tiny_llama, n_jobs=1, journal=journal, **SETTINGS)
    assert n_entries(journal) == 14 + 2  # tensors and blocks; the whole-model rows are not recorded here
    lost = [t for t in local_report.matrices["tensor"] if t.startswith("layers.1.")]
    for t in lost:
        (journal / f"{_key('t', t)}.npz").unlink()
    (journal / f"{_key('b', block_name(('decoder', 0)))}.json").unlink()
    rep = analyze_report(tiny_llama, scheduler=running, journal=journal, **SETTINGS)
    assert rep.meta["resumed"] == 14 - len(lost) == 7
    assert_same_report(local_report, rep)
    assert n_entries(journal) == 14 + 2 + 1  # the cluster's tasks recorded, the whole model's rows too
    again = analyze_report(tiny_llama, scheduler=running, journal=journal, **SETTINGS)
    assert again.meta["resumed"] == 14
    assert_same_report(local_report, again)


def test_progress_advances_as_tasks_complete(tiny_llama, running, local_report, monkeypatch):
    import topoprune.graph.analysis as analysis

    steps, edges = [], []

    class Bar:
        def __init__(self, total, enabled):
            pass

        def advance(self, n, n_edges, name=""):
            steps.append(n)
            edges.append(n_edges)

        def close(self):
            pass

    monkeypatch.setattr(analysis, "Progress", Bar)
    rep = analyze_report(tiny_llama, scheduler=running, **SETTINGS)
    assert_same_report(local_report, rep)
    assert sum(steps) == len(rep.matrices) and len(steps) > 1
    assert sum(edges) == rep.matrices["n_edges"].sum()


def test_task_error_names_the_tensor(tmp_path, running):
    result = run("analyze", nan_checkpoint(tmp_path), "--scheduler", running, "--out", tmp_path / "X")
    one_error(result, "layers.1.mlp.fc1.weight: contains NaN or Inf")
    assert not (tmp_path / "X").exists()


def test_lost_worker_names_the_tensor(tmp_path, running, monkeypatch):
    import topoprune.graph.cluster as cluster

    def dies(*args):  # a local function: sent to the worker by value
        os._exit(1)

    monkeypatch.setattr(cluster, "tensor_task", dies)
    path = tmp_path / "one.safetensors"
    save_file({"layers.0.mlp.fc1.weight": torch.randn(32, 16)}, path)
    result = run("analyze", path, "--scheduler", running, "--no-fits", "--no-modularity", "--out", tmp_path / "X")
    one_error(result, "layers.0.mlp.fc1.weight: the Dask worker analysing it died")


def test_unreachable_scheduler_is_one_line(tmp_path, tiny_llama):
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    start = time.monotonic()
    result = run("analyze", tiny_llama, "--scheduler", address, "--out", tmp_path / "X")
    one_error(result, f"cannot connect to the Dask scheduler at {address}")
    assert time.monotonic() - start < 10 and not (tmp_path / "X").exists()


def test_model_in_memory_refused():
    for source in (torch.nn.Linear(16, 8), {"layers.0.mlp.fc1.weight": torch.randn(8, 16)}):
        with pytest.raises(ConfigError, match="needs a checkpoint path .* held in memory"):
            topoprune.analyze(source, scheduler="local:2")


def test_without_distributed_says_what_to_install(tmp_path, tiny_llama, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "distributed"
                        else find_spec(name, *a))
    one_error(run("analyze", tiny_llama, "--scheduler", "local:2", "--out", tmp_path / "X"),
              "pip install 'topoprune[cluster]'")


@pytest.mark.parametrize("kwargs, message", [
    (dict(scheduler="local:0"), "local:N needs N worker processes"),
    (dict(scheduler="local:two"), "local:N needs N worker processes"),
    (dict(scheduler="tcp://a b:1"), "must be an address"), (dict(scheduler=""), "must be an address"),
    (dict(connect_timeout=0), "connect_timeout must be"),
])
def test_bad_cluster_settings(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        AnalysisConfig(**kwargs)


def _default_sigint():
    """Start the command as a shell would, with SIGINT at its default (not as ignored in the test process)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and process groups as on Linux")
def test_ctrl_c_closes_the_local_cluster(tmp_path):
    """Ctrl-C (SIGINT to the process group, workers included) while the cluster works: exit 130, one line
    "interrupted", no process left, nothing written."""
    g = torch.Generator().manual_seed(0)
    ckpt = tmp_path / "big.safetensors"
    # several seconds of Leiden work for 2 workers, so that the interrupt arrives while they work
    save_file({f"layers.{i}.mlp.fc1.weight": torch.randn(3072, 768, generator=g) for i in range(24)}, ckpt)
    out = tmp_path / "X"
    with open(tmp_path / "stderr.txt", "w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "topoprune.cli", "analyze", str(ckpt), "--scheduler", "local:2",
                                 "--out", str(out)], stdout=subprocess.DEVNULL, stderr=err, cwd=tmp_path,
                                start_new_session=True, preexec_fn=_default_sigint)
        try:
            parent, deadline, procs = psutil.Process(proc.pid), time.monotonic() + 90, []
            while time.monotonic() < deadline and proc.poll() is None:
                procs = parent.children(recursive=True)
                if sum(p.ppid() != proc.pid for p in procs) >= 2:  # two workers forked by the fork server
                    break
                time.sleep(0.05)
            assert sum(p.ppid() != proc.pid for p in procs) >= 2, f"no workers started (exit {proc.poll()})"
            time.sleep(0.2)
            os.killpg(proc.pid, signal.SIGINT)
            assert proc.wait(60) == 130
            deadline = time.monotonic() + 10
            while any(alive(p) for p in procs) and time.monotonic() < deadline:
                time.sleep(0.1)
            assert not [p.pid for p in procs if alive(p)], "processes outlived the interrupted run"
            err.seek(0)
            assert err.read().strip().splitlines() == ["interrupted"]
            assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(".X.")]
        finally:
            if proc.poll() is None:
                proc.kill()
