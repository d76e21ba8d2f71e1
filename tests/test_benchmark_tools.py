"""The benchmarks' shared tools: the code fingerprint that invalidates stored results, and figure saving."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

from analysis.figsave import save_figure
from analysis.fingerprint import code_fingerprint

ROOT = Path(__file__).resolve().parents[1]

MEASURE = "def measure(x):\n    return x * {factor}\n"
PLOT = "def plot(x):\n    return '{label}'\n"


def _module(tmp_path: Path, name: str, factor: int, label: str):
    path = tmp_path / f"{name}.py"
    path.write_text(MEASURE.format(factor=factor) + "\n\n" + PLOT.format(label=label))
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_fingerprint_follows_the_measuring_code_only(tmp_path):
    base = _module(tmp_path, "bench_a", 2, "first title")
    relabelled = _module(tmp_path, "bench_b", 2, "another title")  # only the plotting differs
    remeasured = _module(tmp_path, "bench_c", 3, "first title")  # the measurement differs
    settings = {"tweets": {"epochs": 1.0}}
    fp = code_fingerprint("models.py", measured=(settings, base.measure))
    assert fp == code_fingerprint("models.py", measured=(settings, relabelled.measure))
    assert fp != code_fingerprint("models.py", measured=(settings, remeasured.measure))
    assert fp != code_fingerprint("models.py", measured=({"tweets": {"epochs": 2.0}}, base.measure))
    assert fp != code_fingerprint("graph", measured=(settings, base.measure))  # the package part counts
    assert len(fp) == 16 and int(fp, 16) >= 0


def test_fingerprint_without_measured_code_is_the_whole_caller():
    # called from this file: its text is part of the hash, so it differs from the named-code form
    named = code_fingerprint("models.py", measured=(test_fingerprint_follows_the_measuring_code_only,))
    assert code_fingerprint("models.py") != named
    assert code_fingerprint("models.py") == code_fingerprint("models.py")


def test_save_figure_writes_png_and_svg_atomically(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1], [1, 0])
    paths = save_figure(fig, "probe", dpi=50, directory=tmp_path / "figs")
    assert [p.name for p in paths] == ["probe.png", "probe.svg"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert b"<svg" in paths[1].read_bytes()[:1000]
    assert sorted(p.name for p in (tmp_path / "figs").iterdir()) == ["probe.png", "probe.svg"]  # no temporaries


def test_save_figure_redraws_the_same_bytes(tmp_path):
    # SVG element ids and the date would otherwise differ from one drawing of the same figure to the next
    from matplotlib.figure import Figure

    drawn = []
    for name in ("a", "b"):
        fig = Figure(figsize=(2, 2))
        ax = fig.subplots()
        ax.plot([0, 1], [1, 0], label="line")
        ax.fill_between([0, 1], [0, 0], [1, 1], alpha=0.2)
        ax.legend()
        drawn.append([p.read_bytes() for p in save_figure(fig, "probe", dpi=50, directory=tmp_path / name)])
    assert drawn[0][0] == drawn[1][0]
    assert drawn[0][1] == drawn[1][1]
    assert b"<dc:date>" not in drawn[0][1]


def test_save_figure_keeps_the_old_figure_when_saving_fails(tmp_path):
    from matplotlib.figure import Figure

    (tmp_path / "probe.png").write_bytes(b"old")
    fig = Figure()
    fig.savefig = lambda *a, **k: (_ for _ in ()).throw(RuntimeError("disk full"))
    with pytest.raises(RuntimeError):
        save_figure(fig, "probe", directory=tmp_path)
    assert (tmp_path / "probe.png").read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["probe.png"]


def test_paired_perplexity_change_of_the_separating_benchmark():
    from analysis.paired import paired_change

    ref = [4.0, 5.0, 6.0, 5.5]
    change, se = paired_change([x + 0.1 for x in ref], ref)  # every block 0.1 nats worse
    assert change == pytest.approx(100 * (math.exp(0.1) - 1)) and se == pytest.approx(0.0, abs=1e-9)
    d = [0.1, -0.1, 0.3, 0.1]  # mean 0.1, sample sd 0.1633
    change, se = paired_change([a + b for a, b in zip(ref, d)], ref)
    assert change == pytest.approx(100 * (math.exp(0.1) - 1))
    assert se == pytest.approx(100 * math.exp(0.1) * 0.16330 / 2, rel=1e-3)


def test_paired_accuracy_difference_of_the_separating_benchmark():
    from analysis.paired import paired_accuracy

    diff, se = paired_accuracy("1111", "1111")
    assert diff == 0.0 and se == 0.0
    diff, se = paired_accuracy("1100", "1010")  # d = 0, 1, -1, 0: mean 0, sample sd sqrt(2/3)
    assert diff == 0.0 and se == pytest.approx(100 * math.sqrt(2 / 3) / 2)
    diff, se = paired_accuracy("1110", "0110")  # d = 1, 0, 0, 0: mean 0.25, sample sd 0.5
    assert diff == pytest.approx(25.0) and se == pytest.approx(100 * 0.5 / 2)
    with pytest.raises(ValueError):  # different held-out sets are never paired
        paired_accuracy("101", "10")


def test_paired_difference_over_seeds_pairs_each_seed_with_its_own_gmp_run():
    from analysis.paired import paired_accuracy, paired_over_seeds

    def run(seed, correct):
        return {"seed": seed, "correct": correct}

    groups = {("gmp", 0.5): [run(0, "1010"), run(1, "1111")],
              ("neuroprune", 0.5): [run(1, "0111"), run(0, "1110"), run(2, "1111")]}  # seed 2: no GMP run
    mean, se, per_seed = paired_over_seeds(groups, "neuroprune", 0.5, "correct", paired_accuracy)
    (d0, se0), (d1, se1) = paired_accuracy("1110", "1010"), paired_accuracy("0111", "1111")
    assert per_seed == [d0, d1] == [25.0, -25.0]
    assert mean == pytest.approx(0.0) and se == pytest.approx(math.hypot(se0, se1) / 2)
    assert paired_over_seeds(groups, "l1", 0.5, "correct", paired_accuracy) is None
    assert paired_over_seeds(groups, "neuroprune", 0.7, "correct", paired_accuracy) is None


def test_paired_difference_over_seeds_against_another_reference():
    from analysis.paired import paired_accuracy, paired_over_seeds

    groups = {("l1", 0.5): [{"seed": 0, "correct": "1000"}], ("neuroprune", 0.5): [{"seed": 0, "correct": "1100"}]}
    mean, _, per_seed = paired_over_seeds(groups, "neuroprune", 0.5, "correct", paired_accuracy, reference="l1")
    assert mean == per_seed[0] == pytest.approx(25.0)
    assert paired_over_seeds(groups, "l1", 0.5, "correct", paired_accuracy, reference="l1") is None


def test_bracketing_reaches_a_matched_sparsity_on_a_monotone_response():
    """next_alpha on a synthetic alpha -> sparsity curve (logit-linear with another slope, then a
    saturating one) lands within one point in a few tries, and stays inside a bracket once it has one."""
    from analysis.bracketing import next_alpha

    curves = {"logit-linear": lambda a: 1 / (1 + (2e-5 / a) ** 2.7),
              "saturating": lambda a: 1 - math.exp(-a / 4e-5)}
    for name, curve in curves.items():
        for target in (0.5, 0.7, 0.9):
            tries = []
            for _ in range(5):
                alpha = next_alpha(tries, target, first=3e-5)
                tries.append((alpha, curve(alpha)))
                if abs(tries[-1][1] - target) <= 0.01:
                    break
            assert abs(tries[-1][1] - target) <= 0.01, (name, target, tries)
    assert next_alpha([], 0.5, first=3e-5) == 3e-5
    lo, hi = (1e-5, 0.3), (4e-5, 0.8)
    assert lo[0] < next_alpha([lo, hi], 0.5, first=3e-5) < hi[0]
    # a secant that falls (noise) is not followed: the assumed slope still raises alpha below the target
    assert next_alpha([(1e-5, 0.40), (2e-5, 0.35)], 0.5, first=3e-5) > 1e-5


def _git_repo(tmp_path):
    import subprocess

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)
    git("init", "-q")
    git("config", "user.email", "t@example.org")
    git("config", "user.name", "t")
    (tmp_path / "topoprune" / "train").mkdir(parents=True)
    (tmp_path / "analysis" / "results").mkdir(parents=True)
    (tmp_path / "topoprune" / "train" / "a.py").write_text('"""Doc."""\nX = 1  # note\n')
    (tmp_path / "topoprune" / "graph.py").write_text("Y = 2\n")
    (tmp_path / "analysis" / "bench.py").write_text("Z = 3\n")
    (tmp_path / "analysis" / "results" / "r.json").write_text("{}")
    git("add", "-A")
    git("commit", "-qm", "measured")
    return git


def test_stale_lists_results_whose_measured_code_changed(tmp_path):
    from analysis.stale import status

    git = _git_repo(tmp_path)
    sources = {"r.json": ("bench.py", ("train",))}
    results = tmp_path / "analysis" / "results"
    (r,) = status(results, tmp_path, sources)
    assert not r.stale and r.commit
    # docstrings and comments are not code; another part of the package is not measured
    (tmp_path / "topoprune" / "train" / "a.py").write_text('"""Another doc."""\nX = 1  # another note\n')
    (tmp_path / "topoprune" / "graph.py").write_text("Y = 5\n")
    assert not status(results, tmp_path, sources)[0].stale
    (tmp_path / "topoprune" / "train" / "a.py").write_text('"""Doc."""\nX = 2\n')
    (tmp_path / "topoprune" / "train" / "new.py").write_text("W = 0\n")
    assert status(results, tmp_path, sources)[0].changed == ("topoprune/train/a.py", "topoprune/train/new.py")
    git("add", "-A")
    git("commit", "-qm", "code changed")
    assert status(results, tmp_path, sources)[0].stale  # committing the change does not make the result current
    (results / "r.json").write_text(json.dumps({"commit": _head(tmp_path)}))  # re-measured at the new commit
    assert not status(results, tmp_path, sources)[0].stale



def test_stale_counts_only_the_scripts_measuring_code(tmp_path):
    from analysis.stale import status

    git = _git_repo(tmp_path)
    script = tmp_path / "analysis" / "bench.py"
    body = ("K = (1, 2)\n\ndef measure(x):\n    return x * {f}\n\ndef plot(x):\n    return '{label}'\n\n"
            "def main():\n    return code_fingerprint('train', measured=({names}))\n")
    script.write_text(body.format(f=2, label="a", names="K, measure"))
    git("add", "-A")
    git("commit", "-qm", "measuring code named")
    results = tmp_path / "analysis" / "results"
    (results / "r.json").write_text(json.dumps({"commit": _head(tmp_path)}))
    sources = {"r.json": ("bench.py", ("train",))}
    script.write_text(body.format(f=2, label="another figure", names="K, measure"))
    assert not status(results, tmp_path, sources)[0].stale  # the figure is not what was measured
    script.write_text(body.format(f=3, label="a", names="K, measure"))
    assert status(results, tmp_path, sources)[0].changed == ("analysis/bench.py",)
    script.write_text(body.format(f=2, label="another figure", names="K, measure, undefined_name"))
    assert status(results, tmp_path, sources)[0].stale  # a name it does not define: the whole script counts
    script.write_text(body.format(f=2, label="another figure", names="").replace("measured=()", "").replace(", )", ")"))
    assert status(results, tmp_path, sources)[0].stale  # no measuring code named: the whole script counts


def test_stale_follows_measuring_code_into_the_helper_module_it_is_imported_from(tmp_path):
    from analysis.stale import status

    git = _git_repo(tmp_path)
    script, helper = tmp_path / "analysis" / "bench.py", tmp_path / "analysis" / "tasks.py"
    script.write_text("def measure(x):\n    return x * 2\n\n"
                      "def main():\n    return code_fingerprint('train', measured=(measure, example))\n")
    script.write_text("from analysis.tasks import example\n\n" + script.read_text())
    helper.write_text("def example(x):\n    return x + 1\n\ndef other():\n    return 0\n")
    git("add", "-A")
    git("commit", "-qm", "measuring code partly in a helper")
    results = tmp_path / "analysis" / "results"
    (results / "r.json").write_text(json.dumps({"commit": _head(tmp_path)}))
    sources = {"r.json": ("bench.py", ("train",))}
    helper.write_text("def example(x):\n    return x + 1\n\ndef other():\n    return 5\n")
    assert not status(results, tmp_path, sources)[0].stale  # the helper's other code is not measured
    helper.write_text("def example(x):\n    return x + 2\n\ndef other():\n    return 0\n")
    assert status(results, tmp_path, sources)[0].changed == ("analysis/bench.py",)  # the script did not change
    helper.write_text("def other():\n    return 0\n")
    assert status(results, tmp_path, sources)[0].stale  # gone from the helper: the whole script counts
    # moved into the script unchanged: the same measuring code
    helper.write_text("def other():\n    return 0\n")
    script.write_text("def example(x):\n    return x + 1\n\n" + script.read_text().split("\n\n", 1)[1])
    assert not status(results, tmp_path, sources)[0].stale


def _head(root):
    import subprocess

    return subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True).stdout.strip()


def test_time_to_sparsity_imp_rounds_reach_each_target_at_the_last_round():
    from analysis import bench_time_to_sparsity as bt
    from topoprune.train.config import NeuroPruneConfig
    from topoprune.train.schedules import Schedule

    assert [bt.imp_rounds(t) for t in bt.TARGETS] == [4, 6, 11]  # at most 20 % of the survivors a round
    per = bt.steps_per_epoch(bt.TASK)
    assert per == 63
    for target in bt.TARGETS:
        epochs = bt.imp_rounds(target) + 1
        sched = NeuroPruneConfig(**bt.neuroprune_config("imp", target, epochs, None, bt.TASK)).schedule_config()
        s = Schedule(sched)
        cuts = sorted({s(t) for t in range(epochs * per + 1)})
        assert s(per - 1) == 0.0 and s(epochs * per) == target and len(cuts) == epochs  # dense epoch, n rounds
        shares = [1 - (1 - b) / (1 - a) for a, b in zip(cuts, cuts[1:])]
        assert max(shares) <= bt.IMP_RATE + 1e-12 and max(shares) - min(shares) < 1e-9
    plan = bt.plan(["dense", "imp", "gmp"], [0.5], [1, 3])
    assert plan == [("dense", 0.0, 1), ("dense", 0.0, 3), ("imp", 0.5, 5), ("gmp", 0.5, 1), ("gmp", 0.5, 3)]


def stored_run(method, target, sparsity, **keys):
    """A stored run as the benchmarks that bracket a penalty weight record it."""
    return {"method": method, "target": target, "mlp_sparsity": sparsity, "accuracy": 0.8, "conn_sd_percent": 10.0,
            "qkv_sparsity": 0.5, "neuroprune": {"method": method, "mlp_weight": 1e-4}, **keys}


def test_time_to_sparsity_pools_a_budgets_neuroprune_tries_across_targets_but_not_gmp_runs():
    from analysis import bench_time_to_sparsity as bt

    res = {"runs": {"a": stored_run("neuroprune", 0.7, 0.925, epochs=2),
                    "b": stored_run("neuroprune", 0.9, 0.974, epochs=2),
                    "c": stored_run("neuroprune", 0.9, 0.901, epochs=3), "d": stored_run("gmp", 0.7, 0.7, epochs=2)}}
    assert bt.chosen(res, "neuroprune", 0.9, 2)["mlp_sparsity"] == 0.925  # bracketed for 70 %, nearer 90 %
    assert len(bt.runs_of(res, "neuroprune", 0.5, 2)) == 2 and not bt.runs_of(res, "neuroprune", 0.9, 1)
    assert bt.chosen(res, "gmp", 0.9, 2) is None  # a target-mode run stands for its own target only


def test_head_distance_table_counts_the_runs_removals_and_marks_a_zero_scale_layer():
    from analysis import bench_head_distance as bh

    def layer(key, min_rel, median_rel, sparsity, removes):
        return {"layer": key, "heads": 12, "min_rel": min_rel, "median_rel": median_rel, "qkv_sparsity": sparsity,
                "would_remove": {f"{m}:{t:g}": removes for m, t in bh.THETAS}}

    def run(seed, gone):
        start = [layer("encoder.0", 1.0, 1.4, 0.0, 0), layer("encoder.1", 1.1, 1.5, 0.0, 0)]
        end = [layer("encoder.0", math.nan, math.nan, 1.0, gone), layer("encoder.1", 0.8, 1.2, 0.5, 0)]
        return {"beta": 0.01, "seed": seed, "accuracy": 0.8 + 0.01 * seed,
                "heads_remaining": {"encoder.0": 12 - gone, "encoder.1": 12},
                "points": [{"step": 0, "layers": start}, {"step": 9, "layers": end}]}

    lines = bh.table({"runs": {"a": run(0, 6), "b": run(1, 7)}})
    assert len(lines) == 3 and lines[0].count("|") == lines[1].count("|") == lines[2].count("|")
    cells = [c.strip() for c in lines[2].strip("|").split("|")]
    assert cells[:4] == ["0.01", "2", "0.805", "100% 50%"]
    assert cells[4] == "1.00/1.40 → –/–; 1.10/1.50 → 0.80/1.20"  # no relative distance where the scale is 0
    assert cells[5] == "6.5 0"  # the heads each run removed, averaged over the seeds
    assert cells[6].split(" · ") == ["6.5 0"] * len(bh.THETAS)


def test_paper_compare_pools_a_seeds_penalised_tries_across_targets_but_not_gmp_runs():
    from analysis import bench_paper_compare as bp

    res = {"runs": {"a": stored_run("neuroprune", 0.5, 0.695, seed=0),
                    "b": stored_run("neuroprune", 0.7, 0.95, seed=0),
                    "c": stored_run("neuroprune", 0.7, 0.70, seed=1), "d": stored_run("gmp", 0.5, 0.5, seed=0)}}
    assert bp.chosen(res, "neuroprune", 0.7, 0)["mlp_sparsity"] == 0.695  # bracketed for 50 %, nearer 70 %
    assert len(bp.candidates(res, "neuroprune", 0.9, 0)) == 2  # another seed's runs do not count
    assert bp.chosen(res, "gmp", 0.7, 0) is None  # a target-mode run stands for its own target only
    assert bp.stands(res, "neuroprune", 0.7, 0)["mlp_sparsity"] == 0.695  # matched: reported
    assert bp.stands(res, "neuroprune", 0.9, 0) is None  # 95 % is not 90 % and no run was made for 90 %
    assert bp.stands(res, "neuroprune", 0.0, 0) is None and bp.stands(res, "neuroprune", 0.5, 1) is None
    res["runs"]["e"] = stored_run("neuroprune", 0.9, 0.97, seed=0)
    for name, r in res["runs"].items():
        r["name"] = name
    assert bp.stands(res, "neuroprune", 0.9, 0)["mlp_sparsity"] == 0.95  # tried for 90 %: reported, unmatched
    rows = {(r["method"], r["target"]): r for r in bp.summary(res)}
    assert rows[("neuroprune", 0.9)]["matched"] == [False] and rows[("neuroprune", 0.7)]["matched"] == [True, True]
    assert ("neuroprune", 0.0) not in rows and "(unmatched)" in "".join(bp.table(res))
    res["runs"]["f"] = stored_run("l1", 0.7, 0.69, seed=1, name="f")  # seed 1's neuroprune stands at 70 % only
    assert bp.stands(res, "l1", 0.7, 1)["name"] == "f" and bp.stands(res, "l1", 0.5, 1) is None


def test_kept_sample_gives_the_exact_overlap_on_a_small_model_and_a_close_one_on_a_large(tmp_path):
    import numpy as np
    import torch
    from safetensors.torch import save_file

    from analysis import kept_weights as bp

    def model(name, masks):
        d = tmp_path / name
        d.mkdir()
        tensors = {k: torch.where(torch.from_numpy(m), torch.ones(m.shape), torch.zeros(m.shape)) for k, m in masks.items()}
        tensors["encoder.layer.0.attention.output.dense.weight"] = torch.ones(4, 4)  # attention: not counted
        save_file(tensors, str(d / "model.safetensors"))
        return d

    rng = np.random.default_rng(3)
    keys = ("encoder.layer.0.intermediate.dense.weight", "encoder.layer.0.output.dense.weight")
    a = {k: rng.random((300, 200)) < 0.5 for k in keys}
    b = {k: m & (rng.random(m.shape) < 0.6) for k, m in a.items()}  # keeps a subset of a's weights
    exact = sum(int((a[k] & b[k]).sum()) for k in keys) / sum(int((a[k] | b[k]).sum()) for k in keys)
    da, db = model("a", a), model("b", b)
    full = [bp.kept_sample(d, n=10**6) for d in (da, db)]  # 120,000 weights: every position recorded
    assert bp.kept_overlap(*full) == exact and bp.kept_overlap(full[0], full[0]) == 1.0
    sampled = [bp.kept_sample(d, n=20_000) for d in (da, db)]
    assert sampled[0] != full[0] and abs(bp.kept_overlap(*sampled) - exact) < 0.02  # s.e. about 0.005
    assert bp.kept_overlap(sampled[0], full[1]) is None and bp.kept_overlap(None, full[1]) is None


def test_analysis_scripts_share_helpers_and_never_import_each_other_or_edit_sys_path():
    """A script (a module with a ``__main__`` block) imports only the helper modules of ``analysis/``,
    always as ``analysis.<module>``, and leaves ``sys.path`` alone: scripts run as ``python -m``."""
    import ast

    modules = {p.stem: p for p in (ROOT / "analysis").glob("*.py")}
    scripts = {name for name, p in modules.items() if '__name__ == "__main__"' in p.read_text()}
    assert {"bench_paper_compare", "bench_analysis", "stale"} <= scripts and "harness" not in scripts
    for name, path in modules.items():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr == "path" and getattr(node.value, "id", None) == "sys":
                raise AssertionError(f"analysis/{name}.py uses sys.path")
            if isinstance(node, ast.ImportFrom) and node.module:
                top, _, rest = node.module.partition(".")
                assert top not in modules, f"analysis/{name}.py imports {node.module} as a top-level module"
                if top == "analysis":
                    assert rest not in scripts, f"analysis/{name}.py imports the script {node.module}"
                    assert all(not a.name.startswith("_") or a.name == "_logit" for a in node.names), \
                        f"analysis/{name}.py imports a private name from {node.module}"


def test_kept_continues_matching_runs_and_never_drops_stored_runs_unasked(tmp_path, capsys):
    from argparse import Namespace

    from analysis.harness import kept

    stored, empty, path = {"settings": {"a": 1}, "runs": {"r": {}}}, {"settings": {}, "runs": {}}, tmp_path / "r.json"
    assert kept(stored, True, Namespace(resume=True, fresh=False), empty, path) is stored
    assert kept(stored, True, Namespace(resume=True, fresh=True), empty, path) is empty
    assert kept({"runs": {}}, False, Namespace(resume=False, fresh=False), empty, path) is empty  # nothing to lose
    for resume, flag in ((True, "--fresh"), (False, "--resume")):
        with pytest.raises(SystemExit) as exc:
            kept(stored, False, Namespace(resume=resume, fresh=False), empty, path)
        err = capsys.readouterr().err
        assert exc.value.code == 2 and err.count("\n") == 1 and str(path) in err and flag in err
    from analysis.harness import load_done

    path.write_text(json.dumps({"rows": [{"key": {"m": 1}}, {"key": {"m": 2}, "error": "x"}]}))
    assert load_done(path, Namespace(resume=True, fresh=False)) == [{"key": {"m": 1}}]  # failed rows run again
    assert load_done(path, Namespace(resume=False, fresh=True)) == []
    with pytest.raises(SystemExit):
        load_done(path, Namespace(resume=False, fresh=False))


def test_a_benchmark_refuses_to_overwrite_stored_runs_without_resume_or_fresh(tmp_path):
    import subprocess
    import sys

    out = tmp_path / "r.json"
    out.write_text(json.dumps({"settings": {}, "runs": {"beta0-s0": {"beta": 0.0}}}))
    before = out.read_bytes()
    proc = subprocess.run([sys.executable, "-m", "analysis.bench_head_distance", "--out", str(out),
                           "--workdir", str(tmp_path / "w")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--resume" in proc.stderr and "--fresh" in proc.stderr and out.read_bytes() == before


def test_paper_compare_starts_l1_from_neuroprunes_alpha_over_its_mean_attachment():
    from argparse import Namespace

    from analysis import bench_paper_compare as bp

    args = Namespace(seeds=[0, 1], tolerance=0.01, steps_hint=930)
    np_run = stored_run("neuroprune", 0.5, 0.502, seed=0, name="n", attachment={"mean": 0.5})
    np_run["neuroprune"]["mlp_weight"] = 4e-5
    res = {"settings": {"tolerance": 0.01}, "runs": {"n": np_run}}
    assert bp.first_alpha(res, "l1", 0.5, 0, args) == 8e-5  # alpha / mean c
    assert bp.first_alpha(res, "neuroprune", 0.7, 0, args) == bp.FIRST_ALPHA["neuroprune"]  # no seed matched at 70 %
    assert bp.first_alpha(res, "neuroprune", 0.5, 1, args) == 4e-5  # seed 0's matched alpha
    assert bp.first_alpha(res, "l1-gradient", 0.5, 0, args) == bp.FIRST_ALPHA["l1-gradient"]  # another form
    l1_run = stored_run("l1", 0.5, 0.495, seed=0, name="l")
    l1_run["neuroprune"]["mlp_weight"] = 6e-5  # matched to n at 1.5 x its alpha
    np70 = stored_run("neuroprune", 0.7, 0.70, seed=0, name="n70", attachment={"mean": 0.4})
    np70["neuroprune"]["mlp_weight"] = 1e-4
    res["runs"].update(l=l1_run, n70=np70)
    assert bp.first_alpha(res, "l1", 0.7, 0, args) == 1.5e-4  # the ratio of the alphas matched at 50 %
