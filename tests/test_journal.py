"""An interrupted analysis resumes where it stopped: the tensors it finished are read back, not
analysed again, and the report is the one an uninterrupted analysis gives — in this process, in the
local pool, with layered graphs, from the command line and inside a many-checkpoint analysis."""
import json
import logging
import os

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from reports import assert_same_report, save_tiny_llama
from safetensors.torch import save_file

import topoprune.graph.analysis
import topoprune.graph.local
from topoprune.cli import main
from topoprune.graph.analysis import analyze_report
from topoprune.graph.journal import Journal, _key, beside, block_name, n_entries

FAST = dict(fits=True, matrix_modularity=True)


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    """A 3-layer random-init LLaMA (grouped-query attention): 21 block tensors."""
    return save_tiny_llama(tmp_path_factory.mktemp("llama"), layers=3, hidden=48, ffn=80)


class Interrupt:
    """Wraps ``tensor_rows`` of the local analysis: counts the tensors read, and raises
    KeyboardInterrupt when tensor number ``stop`` (from 1) is about to be read."""

    def __init__(self, monkeypatch, stop=None):
        self.original, self.stop, self.read = topoprune.graph.analysis.tensor_rows, stop, []
        monkeypatch.setattr(topoprune.graph.local, "tensor_rows", self)

    def __call__(self, load, specs, *a, **k):
        if self.stop is not None and len(self.read) + 1 == self.stop:
            raise KeyboardInterrupt
        self.read.append(specs[0].tensor)
        return self.original(load, specs, *a, **k)


def test_interrupted_analysis_resumes_to_the_same_report(llama, tmp_path, monkeypatch):
    reference = analyze_report(llama, n_jobs=1, **FAST)
    journal = tmp_path / "journal"
    cut = Interrupt(monkeypatch, stop=12)
    with pytest.raises(KeyboardInterrupt):
        analyze_report(llama, journal=journal, n_jobs=1, **FAST)
    assert len(cut.read) == 11 and n_entries(journal) == 11  # inline: every tensor read is finished and recorded
    again = Interrupt(monkeypatch)
    resumed = analyze_report(llama, journal=journal, n_jobs=1, **FAST)
    assert len(again.read) == 10 and resumed.meta["resumed"] == 11  # one matrix per tensor in a LLaMA
    assert not set(again.read) & set(cut.read)
    assert_same_report(reference, resumed)


def test_pool_with_block_graphs_reuses_a_tensor_only_with_its_block(llama, tmp_path, monkeypatch):
    options = dict(n_jobs=2, block_modularity=True, **FAST)
    journal = tmp_path / "journal"
    reference = analyze_report(llama, journal=journal, **options)
    assert n_entries(journal) == 21 + 3  # every tensor, every block, recorded as they finished
    blocks = reference.matrices.set_index("tensor")["block"]
    for t in blocks.index[blocks == 2]:  # block 2 was never finished; block 1's layered rows were lost
        (journal / f"{_key('t', t)}.npz").unlink()
    (journal / f"{_key('b', block_name(('decoder', 1)))}.json").unlink()
    again = Interrupt(monkeypatch)
    resumed = analyze_report(llama, journal=journal, **options)
    assert sorted(again.read) == sorted(blocks.index[blocks >= 1]) and resumed.meta["resumed"] == 7
    assert_same_report(reference, resumed)
    assert n_entries(journal) == 21 + 3


def test_journal_of_other_settings_or_a_changed_checkpoint_is_discarded(llama, tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="topoprune")
    journal = tmp_path / "journal"
    first = analyze_report(llama, journal=journal, n_jobs=1, fits=False)
    assert n_entries(journal) == 21
    report = analyze_report(llama, journal=journal, n_jobs=1, fits=False, density=0.2)  # other settings
    assert report.meta["resumed"] == 0 and "discarded" in caplog.text
    assert int(report.matrices["n_edges"].sum()) > int(first.matrices["n_edges"].sum())
    caplog.clear()
    weights = next(p for p in llama.iterdir() if p.suffix == ".safetensors")
    stat = weights.stat()
    try:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the checkpoint was written again
        assert analyze_report(llama, journal=journal, n_jobs=1, fits=False, density=0.2).meta["resumed"] == 0
        assert "discarded" in caplog.text
    finally:
        os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert analyze_report(llama, journal=journal, n_jobs=1, fits=False, density=0.2).meta["resumed"] == 0
    # where the work runs is not a setting: another worker count reuses everything
    assert analyze_report(llama, journal=journal, n_jobs=2, fits=False, density=0.2).meta["resumed"] == 21


def test_damaged_entry_is_analysed_again(llama, tmp_path, monkeypatch):
    journal = tmp_path / "journal"
    reference = analyze_report(llama, journal=journal, n_jobs=1, fits=False)
    entry = sorted(journal.glob("t-*.npz"))[0]
    entry.write_bytes(entry.read_bytes()[:50])
    again = Interrupt(monkeypatch)
    resumed = analyze_report(llama, journal=journal, n_jobs=1, fits=False)
    assert len(again.read) == 1 and resumed.meta["resumed"] == 20
    assert_same_report(reference, resumed)


def test_whole_model_modularity_here_recomputes_everything(llama, tmp_path, monkeypatch):
    journal = tmp_path / "journal"
    reference = analyze_report(llama, journal=journal, n_jobs=1, fits=False, model_modularity=True)
    again = Interrupt(monkeypatch)
    resumed = analyze_report(llama, journal=journal, n_jobs=1, fits=False, model_modularity=True)
    assert len(again.read) == 21 and resumed.meta["resumed"] == 0  # the whole-model graph needs every matrix
    assert_same_report(reference, resumed)


def test_journal_needs_a_checkpoint_on_disk():
    from topoprune.errors import ConfigError

    with pytest.raises(ConfigError, match="journal"):
        analyze_report({"layers.0.mlp.fc1.weight": torch.randn(8, 4)}, journal="j", n_jobs=1)


def test_command_line_resume_of_one_checkpoint(llama, tmp_path, monkeypatch):
    out, journal = tmp_path / "rep", beside(tmp_path / "rep")
    clean = tmp_path / "clean"
    assert run("analyze", llama, "--out", clean, "-j", "1").exit_code == 0
    assert not beside(clean).exists()  # removed after success
    cut = Interrupt(monkeypatch, stop=8)
    r = run("analyze", llama, "--out", out, "-j", "1")
    assert r.exit_code == 130 and "7 finished tensor(s) kept" in r.stderr and "--resume" in r.stderr
    assert not out.exists() and n_entries(journal) == 7
    r = run("analyze", llama, "--out", out, "-j", "1")
    assert r.exit_code == 2 and "interrupted analysis is kept" in r.stderr and "--resume" in r.stderr
    cut.stop, cut.read = None, []
    r = run("analyze", llama, "--out", out, "-j", "1", "--resume")
    assert r.exit_code == 0, r.stderr
    assert len(cut.read) == 14 and not journal.exists()
    assert "21 matrices (llama; 7 read back from the interrupted analysis)" in r.stdout
    pd.testing.assert_frame_equal(pd.read_csv(out / "report.csv"), pd.read_csv(clean / "report.csv"))
    doc = json.loads((out / "report.json").read_text())
    assert doc["matrices"] == json.loads((clean / "report.json").read_text())["matrices"]
    # an interrupted analysis is discarded with --overwrite, and --resume with nothing kept starts afresh
    cut.stop, cut.read = 3, []
    assert run("analyze", llama, "--out", tmp_path / "b", "-j", "1").exit_code == 130
    cut.stop = None
    assert run("analyze", llama, "--out", tmp_path / "b", "-j", "1", "--overwrite").exit_code == 0
    assert not beside(tmp_path / "b").exists() and (tmp_path / "b" / "report.csv").is_file()


def test_bad_input_leaves_no_journal(tmp_path):
    g = torch.Generator().manual_seed(0)
    tensors = {f"layers.{i}.mlp.fc1.weight": torch.randn(32, 16, generator=g) for i in range(3)}
    tensors["layers.2.mlp.fc1.weight"][3, 4] = float("nan")
    save_file(tensors, tmp_path / "model.safetensors")
    r = run("analyze", tmp_path / "model.safetensors", "--out", tmp_path / "rep", "-j", "1")
    assert r.exit_code == 2 and "layers.2.mlp.fc1.weight" in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.safetensors"]


def test_zoo_resume_reuses_the_finished_tensors_of_an_interrupted_checkpoint(llama, tmp_path, monkeypatch):
    import shutil

    zoo = tmp_path / "run"
    for step in (10, 20):
        shutil.copytree(llama, zoo / f"checkpoint-{step}")
    out = tmp_path / "rep"
    clean = tmp_path / "clean"
    assert run("analyze", zoo, "--out", clean, "-j", "1", "--no-modularity").exit_code == 0
    cut = Interrupt(monkeypatch, stop=21 + 5)  # checkpoint-10 done, 4 tensors of checkpoint-20
    r = run("analyze", zoo, "--out", out, "-j", "1", "--no-modularity")
    assert r.exit_code == 130 and "1 finished checkpoint and 4 finished tensor(s)" in r.stderr
    staging = tmp_path / ".rep.partial"
    assert n_entries(staging / ".journals" / "checkpoint-20") == 4
    cut.stop, cut.read = None, []
    r = run("analyze", zoo, "--out", out, "-j", "1", "--no-modularity", "--resume")
    assert r.exit_code == 0, r.stderr
    assert len(cut.read) == 17 and not staging.exists()
    pd.testing.assert_frame_equal(pd.read_csv(out / "report.csv"), pd.read_csv(clean / "report.csv"))


def test_journal_entries_are_plain_files(llama, tmp_path):
    """Rows as JSON, arrays in .npz read without pickle; the manifest names the checkpoint and settings."""
    journal = tmp_path / "journal"
    analyze_report(llama, journal=journal, n_jobs=1, fits=False, roles=["mlp_up"])
    manifest = json.loads((journal / "manifest.json").read_text())
    assert manifest["source"] == str(llama) and manifest["settings"]["roles"] == ["mlp_up"]
    assert "n_jobs" not in manifest["settings"] and any(f[0].endswith(".safetensors") for f in manifest["files"])
    entries = sorted(journal.glob("t-*.npz"))
    assert len(entries) == 3
    with np.load(entries[0], allow_pickle=False) as z:
        rows = json.loads(str(z["rows"]))
        assert rows[0]["role"] == "mlp_up" and z["in_0"].dtype == np.int32
    book = Journal(journal, manifest["settings"], llama)
    assert len(book) == 3 and book.tensor("nope") is None


def test_a_journal_in_use_is_refused(llama, tmp_path):
    """Two analyses never share a journal: the second is refused in one line, and may go once the first ends."""
    from topoprune.errors import ConfigError

    held = Journal(beside(tmp_path / "rep"), {}, llama)
    with pytest.raises(ConfigError, match="another topoprune analyze"):
        analyze_report(llama, journal=beside(tmp_path / "rep"), n_jobs=1, fits=False)
    r = run("analyze", llama, "--out", tmp_path / "rep", "-j", "1", "--overwrite")
    assert r.exit_code == 2 and "writing this output right now" in r.stderr and len(r.stderr.splitlines()) == 1
    held.close()
    assert run("analyze", llama, "--out", tmp_path / "rep", "-j", "1", "--no-fits").exit_code == 0
    assert not beside(tmp_path / "rep").exists()
