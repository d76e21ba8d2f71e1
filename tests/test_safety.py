"""Safety of the analyze, compare, plot and oneshot commands and of the checkpoint reader.

Output directories appear whole or not at all and are never taken from the user; absurd worker
counts are refused and workers end with their parent; SIGINT/SIGTERM end a run cleanly; tensors
larger than memory, index entries outside the checkpoint, contradicting options, non-causal
models and binary calibration files are refused with one line and exit code 2; outputs honour
the umask.
"""
import errno
import json
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from topoprune.cli import REFUSED_PICKLE, main

FAST = ("-j", "1", "--no-fits", "--no-modularity")
ONESHOT_FAST = ("--n-calibration", "2", "--n-search", "1", "--seq-len", "16", "--no-analyze", "--no-eval")
TEXT = "The river rose slowly through the night, and by morning the fields were under water. " * 40


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


def one_error(result, *needles, code=2):
    """Assert a clean refusal: exit ``code``, one ``error:`` line on stderr holding every needle."""
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def leftovers(directory, name):
    return sorted(p.name for p in directory.iterdir() if p.name.startswith(f".{name}."))


@pytest.fixture
def ckpt(tmp_path):
    """Two blocks, four small MLP matrices."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path / "ckpt" / "model.safetensors"
    path.parent.mkdir()
    save_file({f"layers.{i}.mlp.{n}.weight": torch.randn(s, generator=g) for i in range(2)
               for n, s in (("fc1", (32, 16)), ("fc2", (16, 32)))}, path)
    return path


@pytest.fixture
def no_analysis(monkeypatch):
    """Make any start of an analysis fail loudly (a refusal must come before it)."""
    import topoprune.graph.analysis

    def boom(*a, **k):
        raise AssertionError("the analysis started before the options were checked")

    monkeypatch.setattr(topoprune.graph.analysis, "analyze_report", boom)


# ----------------------------------------------------------------------------- 1. output directory
def test_bad_out_refused_before_any_analysis(tmp_path, ckpt, no_analysis):
    """An empty --out, one inside the checkpoint directory and one that cannot be created: exit 2 first."""
    one_error(run("analyze", ckpt, "--out", ""), "--out", "empty")
    one_error(run("analyze", ckpt.parent, "--out", ckpt.parent / "rep"), "inside the input")
    (tmp_path / "afile").write_text("x")
    one_error(run("analyze", ckpt, "--out", tmp_path / "afile" / "rep"), "cannot be created")
    assert sorted(p.name for p in ckpt.parent.iterdir()) == ["model.safetensors"]


def test_unwritable_out_parent(tmp_path, ckpt, no_analysis):
    if os.geteuid() == 0:  # root writes anywhere a mode bit forbids; /proc/self is read-only even for root
        assert Path("/proc/self").is_dir()
        one_error(run("analyze", ckpt, "--out", "/proc/self/rep"), "not writable")
        return
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        one_error(run("analyze", ckpt, "--out", locked / "rep"), "not writable")
    finally:
        locked.chmod(0o700)


def test_overwrite_replaces_only_a_topoprune_output(tmp_path, ckpt):
    out = tmp_path / "rep"
    assert run("analyze", ckpt, "--out", out, *FAST).exit_code == 0
    assert (out / ".topoprune").is_file() and (out / "report.json").is_file()
    first = (out / "report.json").read_text()
    one_error(run("analyze", ckpt, "--out", out, *FAST), "--overwrite")
    r = run("analyze", ckpt, "--out", out, *FAST, "--overwrite", "--threshold", "0.5")
    assert r.exit_code == 0, r.stderr
    assert (out / "report.json").read_text() != first and not leftovers(tmp_path, "rep")
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    for extra in ((), ("--overwrite",)):
        one_error(run("analyze", ckpt, "--out", mine, *FAST, *extra), "not written by topoprune")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


def test_failure_half_way_keeps_the_old_report(tmp_path, ckpt, monkeypatch):
    """Figures that cannot be written: exit 2, the previous report untouched, no staging directory left."""
    out = tmp_path / "rep"
    assert run("analyze", ckpt, "--out", out, *FAST).exit_code == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    import topoprune.plotting

    def full_disk(report, out_dir, **kw):
        (out_dir).mkdir(parents=True, exist_ok=True)
        (out_dir / "half.png").write_bytes(b"\x89PNG")
        raise OSError(errno.ENOSPC, "No space left on device", str(out_dir / "ccdf.png"))

    monkeypatch.setattr(topoprune.plotting, "save_figures", full_disk)
    one_error(run("analyze", ckpt, "--out", out, *FAST, "--plots", "--overwrite"), "No space left on device")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert not leftovers(tmp_path, "rep")


def test_json_still_printed(tmp_path, ckpt):
    r = run("analyze", ckpt, "--out", tmp_path / "rep", *FAST, "--json")
    assert r.exit_code == 0 and len(json.loads(r.stdout)["matrices"]) == 4


# ----------------------------------------------------------------------------- 2. --jobs
@pytest.mark.parametrize("jobs", ["100000", "0", "-2", "257"])
def test_absurd_jobs_refused(tmp_path, ckpt, no_analysis, jobs):
    one_error(run("analyze", ckpt, "--out", tmp_path / "rep", "-j", jobs), "--jobs", jobs)


def test_workers_capped_at_cpus_and_matrices(tmp_path, ckpt, monkeypatch):
    """-j 64 on four matrices starts at most min(CPUs, 4) worker processes."""
    import concurrent.futures

    started = []
    init = concurrent.futures.ProcessPoolExecutor.__init__

    def spy(self, max_workers=None, *a, **k):
        started.append(max_workers)
        init(self, max_workers, *a, **k)

    monkeypatch.setattr(concurrent.futures.ProcessPoolExecutor, "__init__", spy)
    r = run("analyze", ckpt, "--out", tmp_path / "rep", "-j", "64", "--no-fits")
    assert r.exit_code == 0, r.stderr
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    assert all(n <= min(cpus, 4) for n in started), (started, cpus)
    from topoprune.graph import workers
    from topoprune.graph.analysis import n_workers

    monkeypatch.setattr(workers, "cpu_count", lambda: 16)
    assert (n_workers(64, 4), n_workers(64), n_workers(-1, 100), n_workers(-1, 3), n_workers(5, 0)) == (4, 16, 8, 3, 1)


# ----------------------------------------------------------------------------- 3. signals, orphans
@pytest.fixture(scope="module")
def big_ckpt(tmp_path_factory):
    """Eight 3072 x 768 matrices: a few seconds of fits and modularity with two workers."""
    g = torch.Generator().manual_seed(0)
    path = tmp_path_factory.mktemp("big") / "big.safetensors"
    save_file({f"layers.{i}.mlp.fc1.weight": torch.randn(3072, 768, generator=g) for i in range(8)}, path)
    return path


def _start(big_ckpt, out):
    """Start ``analyze -j 2`` in a real process; return it, its workers and its stderr file."""
    psutil = pytest.importorskip("psutil")
    from topoprune.graph.workers import cpu_count

    if cpu_count() < 2:
        pytest.skip("two worker processes need two CPUs")
    err = open(out.parent / "stderr.txt", "w+")
    proc = subprocess.Popen([sys.executable, "-m", "topoprune.cli", "analyze", str(big_ckpt), "-j", "2",
                             "--out", str(out)], stdout=subprocess.DEVNULL, stderr=err, cwd=out.parent,
                            start_new_session=True)  # its own process group, as in a terminal
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + 60
    workers = []
    while time.monotonic() < deadline and proc.poll() is None:
        workers = parent.children()
        if len(workers) >= 2:
            break
        time.sleep(0.05)
    assert len(workers) >= 2, f"no workers started (exit {proc.poll()})"
    return proc, workers, err


def _alive(procs, timeout):
    """The processes of ``procs`` still running (zombies count as ended) after up to ``timeout`` s."""
    import psutil

    deadline = time.monotonic() + timeout
    while True:
        alive = []
        for p in procs:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    alive.append(p)
            except psutil.NoSuchProcess:
                pass
        if not alive or time.monotonic() > deadline:
            return alive
        time.sleep(0.1)


def _kill_all(procs):
    for p in procs:
        try:
            p.kill()
        except Exception:
            pass


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and process groups as on Linux")
def test_workers_die_with_a_killed_parent(tmp_path, big_ckpt):
    proc, workers, err = _start(big_ckpt, tmp_path / "X")
    try:
        proc.kill()
        proc.wait(30)
        assert not _alive(workers, 10), "workers outlived their killed parent"
    finally:
        _kill_all(workers)
        err.close()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="signals and process groups as on Linux")
@pytest.mark.parametrize("sig,group,code", [(signal.SIGTERM, False, 143), (signal.SIGINT, True, 130)])
def test_signal_ends_the_run_cleanly(tmp_path, big_ckpt, sig, group, code):
    """SIGTERM to the process / Ctrl-C (SIGINT to its process group): exit 143 / 130, one line
    "interrupted", workers ended, nothing left in the directory."""
    proc, workers, err = _start(big_ckpt, tmp_path / "X")
    try:
        time.sleep(0.3)
        if group:
            os.killpg(proc.pid, sig)
        else:
            proc.send_signal(sig)
        assert proc.wait(30) == code
        assert not _alive(workers, 10), "workers outlived the interrupted run"
        err.seek(0)
        assert err.read().strip().splitlines() == ["interrupted"]
        assert not (tmp_path / "X").exists() and not leftovers(tmp_path, "X")
    finally:
        if proc.poll() is None:
            proc.kill()
        _kill_all(workers)
        err.close()


# ----------------------------------------------------------------------------- 4. memory
def test_tensor_larger_than_memory_named(tmp_path, ckpt, monkeypatch):
    """A tensor that does not fit in the available memory: one line naming it, before any work."""
    from topoprune.graph import guards
    from topoprune.errors import TensorError
    from topoprune.graph.loading import open_checkpoint

    monkeypatch.setattr(guards, "available_memory", lambda: 4000)  # 32 x 16 x (4 + 4) bytes: 4 KiB needed
    line = one_error(run("analyze", ckpt, "--out", tmp_path / "rep", *FAST), "needs", "GiB to analyse",
                     "GiB available")
    assert line.startswith("error: layers.")
    assert not (tmp_path / "rep").exists()
    monkeypatch.setattr(guards, "available_memory", lambda: 100)
    with pytest.raises(TensorError, match=r"layers\.0\.mlp\.fc1\.weight: needs 0\.0 GiB to load, 0\.0 GiB available"):
        open_checkpoint(ckpt).load("layers.0.mlp.fc1.weight")


# ----------------------------------------------------------------------------- 5. index entries
@pytest.mark.parametrize("entry,message", [("../outside.safetensors", "points outside"),
                                           ("/etc/passwd", "absolute path"),
                                           ("sub/../../outside.safetensors", "points outside"),
                                           (7, "not a file name")])
def test_index_entries_outside_the_directory_refused(tmp_path, entry, message):
    g = torch.Generator().manual_seed(0)
    save_file({"layers.0.mlp.fc1.weight": torch.randn(8, 4, generator=g)}, tmp_path / "outside.safetensors")
    model = tmp_path / "model"
    model.mkdir()
    (model / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"layers.0.mlp.fc1.weight": entry}}))
    line = one_error(run("analyze", model, "--out", tmp_path / "rep", *FAST), "model.safetensors.index.json",
                     message, str(entry))
    assert "\n" not in line and not (tmp_path / "rep").exists()


def test_index_symlinks_inside_the_directory_are_followed(tmp_path):
    """Like a Hugging Face cache snapshot: the shard is a link into ../blobs."""
    g = torch.Generator().manual_seed(0)
    blobs, snap = tmp_path / "blobs", tmp_path / "snapshots" / "abc"
    blobs.mkdir()
    snap.mkdir(parents=True)
    save_file({"layers.0.mlp.fc1.weight": torch.randn(8, 4, generator=g)}, blobs / "f00d")
    (snap / "model-00001-of-00001.safetensors").symlink_to("../../blobs/f00d")
    (snap / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"layers.0.mlp.fc1.weight": "model-00001-of-00001.safetensors"}}))
    from topoprune.graph.loading import open_checkpoint

    assert [t.name for t in open_checkpoint(snap).tensors()] == ["layers.0.mlp.fc1.weight"]


# ----------------------------------------------------------------------------- 6. contradicting options
@pytest.mark.parametrize("args,needles", [
    (("--density", "0.2", "--threshold", "0.1"), ("--density", "--threshold")),
    (("--layers", "3-1"), ("3-1 is reversed; write 1-3",)),
    (("--layers", "-1"), ("--layers", "-1", "negative")),
    (("--layers", "0,-2"), ("--layers", "negative")),
    (("--layers", "0-999999999"), ("--layers",)),
    (("--threshold", "-1"), ("threshold",)),
])
def test_contradicting_or_impossible_options(tmp_path, ckpt, no_analysis, args, needles):
    one_error(run("analyze", ckpt, "--out", tmp_path / "rep", *args), *needles)
    assert not (tmp_path / "rep").exists()


def test_threshold_above_every_weight(tmp_path, ckpt):
    """Every matrix empty because of the threshold: refused naming it and the largest |w|."""
    from safetensors import safe_open

    with safe_open(str(ckpt), "pt") as h:
        largest = max(float(h.get_tensor(k).abs().max()) for k in h.keys())
    line = one_error(run("analyze", ckpt, "--out", tmp_path / "rep", *FAST, "--threshold", "50"), "threshold 50",
                     f"{largest:.4g}")
    assert not (tmp_path / "rep").exists()
    # some matrices empty: a warning, and the run goes on
    g = torch.Generator().manual_seed(1)
    mixed = tmp_path / "mixed.safetensors"
    save_file({"layers.0.mlp.fc1.weight": torch.randn(32, 16, generator=g),
               "layers.0.mlp.fc2.weight": torch.randn(16, 32, generator=g) * 1e-3}, mixed)
    r = run("analyze", mixed, "--out", tmp_path / "rep2", *FAST, "--threshold", "0.5")
    assert r.exit_code == 0, r.stderr
    assert "warning:" in r.stderr and "1 of 2 matrices" in r.stderr and line


# ----------------------------------------------------------------------------- 7. user errors, not bugs
def test_long_input_name_is_a_user_error(tmp_path):
    from topoprune.errors import CheckpointError
    from topoprune.graph.loading import open_checkpoint

    one_error(run("analyze", tmp_path / ("x" * 300), "--out", tmp_path / "rep"), "File name too long")
    with pytest.raises(CheckpointError, match="File name too long"):
        open_checkpoint(tmp_path / ("x" * 300))
    one_error(run("compare", tmp_path / ("y" * 300), tmp_path / ("y" * 300)), "File name too long")


def test_os_error_anywhere_is_one_line(tmp_path, ckpt, monkeypatch):
    import topoprune.graph.report

    def denied(*a, **k):
        raise PermissionError(errno.EACCES, "Permission denied", "/somewhere/report.csv")

    monkeypatch.setattr(topoprune.graph.report, "save_report", denied)
    one_error(run("analyze", ckpt, "--out", tmp_path / "rep", *FAST), "/somewhere/report.csv: Permission denied")
    assert not (tmp_path / "rep").exists() and not leftovers(tmp_path, "rep")


def test_refused_pickle_anywhere_is_one_line(tmp_path, ckpt, monkeypatch):
    import topoprune.graph.analysis

    def torch_message(*a, **k):
        raise pickle.UnpicklingError("Weights only load failed. This file can still be loaded...\n"
                                     "(1) In PyTorch 2.6, we changed the default value of `weights_only`...\n"
                                     "re-running `torch.load` with `weights_only` set to `False`...")

    monkeypatch.setattr(topoprune.graph.analysis, "analyze_report", torch_message)
    line = one_error(run("analyze", ckpt, "--out", tmp_path / "rep"))
    assert line == f"error: {REFUSED_PICKLE}" and "weights_only" not in line


def test_compare_report_without_names(tmp_path, ckpt):
    rep = tmp_path / "rep"
    assert run("analyze", ckpt, "--out", rep, *FAST).exit_code == 0
    doc = json.loads((rep / "report.json").read_text())
    for row in doc["matrices"]:
        del row["name"]
    (rep / "report.json").write_text(json.dumps(doc))
    one_error(run("compare", rep, rep), "report.json", "'name'")


def test_compare_out_empty_or_a_directory(tmp_path, ckpt, no_analysis):
    one_error(run("compare", ckpt, ckpt, "--out", ""), "--out")
    one_error(run("compare", ckpt, ckpt, "--out", tmp_path), "is a directory")


@pytest.mark.parametrize("content", ["", "step,mlp/sparsity\n"])
def test_plot_empty_topology_history(tmp_path, content):
    (tmp_path / "topology_history.csv").write_text(content)
    one_error(run("plot", tmp_path), "topology_history.csv", "no topology snapshots to plot")
    assert not (tmp_path / "figures").exists()


# ----------------------------------------------------------------------------- 8. oneshot inputs
def oneshot(*args):
    return run("oneshot", *args, *ONESHOT_FAST)


@pytest.fixture
def calib(tmp_path):
    path = tmp_path / "calib.txt"
    path.write_text(TEXT)
    return path


@pytest.fixture
def no_model(monkeypatch):
    import topoprune.oneshot.run as run_mod

    def boom(*a, **k):
        raise AssertionError("the model was loaded before the inputs were checked")

    monkeypatch.setattr(run_mod, "load_causal_lm", boom)


def _bert(tmp_path, cls_name, architectures=True):
    import transformers

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=32, max_position_embeddings=32)
    path = tmp_path / cls_name
    getattr(transformers, cls_name)(cfg).save_pretrained(path)
    if not architectures:
        config = json.loads((path / "config.json").read_text())
        config.pop("architectures", None)
        (path / "config.json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize("cls_name,architectures,needles", [
    ("BertForSequenceClassification", True, ("is a BertForSequenceClassification, not a causal language model",)),
    ("BertModel", True, ("is a BertModel, not a causal language model",)),
    ("BertModel", False, ("is not in the checkpoint; it would be random", "cls.predictions")),
])
def test_oneshot_refuses_models_that_are_not_causal_lms(tmp_path, calib, cls_name, architectures, needles):
    model = _bert(tmp_path, cls_name, architectures)
    one_error(oneshot(model, "--calibration", calib, "-o", tmp_path / "OUT"), str(model), *needles)
    assert not (tmp_path / "OUT").exists() and not leftovers(tmp_path, "OUT")


@pytest.mark.parametrize("content,needles", [
    (b"hello world\n" * 20 + b"\x00\x01binary", ("NUL byte at byte offset 240",)),
    ("caf\u00e9 ".encode() * 30 + b"\xff\xfe" + b"tail", ("not UTF-8", "byte offset 180")),
    (b"text " * 20 + b"\x1b[0m\x07" * 20, ("control characters", "byte offset 100")),
])
def test_oneshot_refuses_binary_calibration(tmp_path, no_model, content, needles):
    bad = tmp_path / "calib.bin"
    bad.write_bytes(content)
    one_error(oneshot("tiny-llama", "--calibration", bad, "-o", tmp_path / "OUT"), "calib.bin", *needles)
    assert not (tmp_path / "OUT").exists()


def test_calibration_text_with_few_control_characters_is_text(tmp_path):
    from topoprune.oneshot.calibration import read_text_file

    path = tmp_path / "ok.txt"
    path.write_text("a line\twith tabs\r\n\fand a form feed\n" * 50 + "\x1b")
    assert read_text_file(path).endswith("\x1b")


def test_oneshot_checks_out_before_loading_the_model(tmp_path, calib, no_model):
    mine = tmp_path / "OUT"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    for extra in ((), ("--overwrite",)):
        one_error(oneshot("tiny-llama", "--calibration", calib, "-o", mine, *extra), "not written by topoprune")
    one_error(oneshot("tiny-llama", "--calibration", calib, "-o", ""), "--out")
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]


# ----------------------------------------------------------------------------- 9. umask
def _modes(root):
    return {str(p.relative_to(root)): p.stat().st_mode & 0o777 for p in [root, *root.rglob("*")]}


@pytest.fixture
def umask():
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.mark.parametrize("mask,file_mode,dir_mode", [(0o027, 0o640, 0o750), (0o022, 0o644, 0o755)])
def test_report_honours_the_umask(tmp_path, ckpt, umask, mask, file_mode, dir_mode):
    umask(mask)
    out = tmp_path / "rep"
    assert run("analyze", ckpt, "--out", out, *FAST).exit_code == 0
    modes = _modes(out)
    assert modes.pop(".") == dir_mode
    assert "degrees.safetensors" in modes and set(modes.values()) == {file_mode}, modes


def test_oneshot_run_honours_the_umask(tmp_path, calib, umask):
    umask(0o027)
    out = tmp_path / "OUT"
    r = oneshot("tiny-llama", "--calibration", calib, "-o", out, "--allocation", "uniform")
    assert r.exit_code == 0, r.stderr
    modes = _modes(out)
    assert modes["."] == 0o750 and modes["model"] == 0o750, modes
    assert modes["masks.safetensors"] == 0o640 and modes["model/model.safetensors"] == 0o640, modes
    assert {m for m in modes.values()} <= {0o640, 0o750}, modes
