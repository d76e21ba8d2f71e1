"""One-shot pruning of tiny random-init causal LMs: replay, statistics, allocations, masks, errors, perplexity."""
import copy
import functools
import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from topoprune.oneshot import allocation as al
from topoprune.oneshot.calibration import (CalibrationError, InputStats, capture_inputs, find_blocks, perplexity,
                                   run_block, sample_windows, text_ids)
from topoprune.errors import ConfigError, TensorError
from topoprune.graph.masks import MaskSet
from topoprune.oneshot.config import OneShotConfig
from topoprune.oneshot.prune import BLOCK_OUTPUT, layer_mask, prune, row_drops

FINAL_NORM = {"tiny-llama": "model.norm", "tiny-opt": "model.decoder.final_layer_norm",
              "tiny-gpt2": "transformer.ln_f"}


pytestmark = pytest.mark.usefixtures("one_thread")


@functools.lru_cache(maxsize=None)
def _tok():
    from topoprune.models import load_tokenizer as _tokenizer

    return _tokenizer()


def _model(name="tiny-llama", seed=0):
    from topoprune.models import build_model

    return build_model(name, "causal_lm", _tok(), seed=seed).eval()


def _windows(n=6, length=16, seed=0):
    return torch.randint(0, len(_tok()), (n, length), generator=torch.Generator().manual_seed(seed))


def _cfg(**kw):
    base = dict(n_search=3, batch_size=2, seq_len=16, allocation="uniform")
    base.update(kw)
    return OneShotConfig(**base)


@functools.lru_cache(maxsize=None)
def _pruned(name, method, allocation, sparsity=0.6):
    """(dense copy, pruned model, result, windows) -- cached, the tests only read them."""
    model = _model(name)
    dense = copy.deepcopy(model)
    windows = _windows()
    result = prune(model, windows, _cfg(method=method, allocation=allocation, sparsity=sparsity))
    return dense, model, result, windows


def _linear_inputs(model, names, windows):
    """Inputs of the named modules in one dense forward pass, by module name: [n * seq, in]."""
    mods = dict(model.named_modules())
    seen, handles = {}, []
    for n in names:
        def hook(_m, inputs, _o, n=n):
            seen.setdefault(n, []).append(inputs[0].detach().reshape(-1, inputs[0].shape[-1]).double())
        handles.append(mods[n].register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(input_ids=windows, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {n: torch.cat(v) for n, v in seen.items()}


# ----------------------------------------------------------------------------- (a) replay, (b) statistics
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt", "tiny-gpt2"])
def test_block_replay_equals_full_forward(name):
    """capture_inputs + run_block through every block equals the input of the final norm (chunked batches)."""
    model = _model(name)
    windows = _windows(5, 12)
    final = {}
    norm = model.get_submodule(FINAL_NORM[name])
    h = norm.register_forward_pre_hook(lambda _m, args: final.setdefault("x", args[0].detach().clone()))
    try:
        with torch.no_grad():
            out = model(input_ids=windows, output_hidden_states=True, use_cache=False)
    finally:
        h.remove()
    blocks = find_blocks(model)
    chunks = capture_inputs(model, blocks, windows, batch_size=2)
    assert [c.hidden.shape[0] for c in chunks] == [2, 2, 1]
    assert torch.allclose(torch.cat([c.hidden for c in chunks]), out.hidden_states[0], atol=1e-6)
    for b, layer in enumerate(blocks.layers):
        chunks, _, _ = run_block(layer, chunks)
        if b + 1 < len(blocks):  # intermediate hidden states are block outputs
            assert torch.allclose(torch.cat([c.hidden for c in chunks]), out.hidden_states[b + 1], atol=1e-5)
    replay = torch.cat([c.hidden for c in chunks])
    assert replay.shape == final["x"].shape
    assert torch.allclose(replay, final["x"], atol=1e-5, rtol=1e-5)
    # and the last hidden state of the model is the final norm of it
    assert torch.allclose(norm(replay), out.hidden_states[-1], atol=1e-5)


def test_input_stats_equal_closed_form():
    """InputStats / run_block statistics equal sqrt(sum x^2 / n_samples) of the inputs seen by a hook."""
    model = _model("tiny-llama")
    windows = _windows(5, 12)
    blocks = find_blocks(model)
    lins = blocks.linears[0]
    inputs = _linear_inputs(model, [lin.name for lin in lins], windows)
    chunks = capture_inputs(model, blocks, windows, batch_size=2)
    outs, stats, out_norm = run_block(blocks.layers[0], chunks, lins, output_norm=True)
    assert set(stats) == {lin.name for lin in lins}
    for lin in lins:
        expected = torch.sqrt(inputs[lin.name].pow(2).sum(0) / 5)
        assert stats[lin.name].shape == (lin.weight.shape[1],)
        assert torch.allclose(stats[lin.name].double(), expected, rtol=1e-5, atol=1e-7), lin.name
    hidden = torch.cat([c.hidden for c in outs]).double()
    assert torch.allclose(out_norm.double(), torch.sqrt(hidden.pow(2).sum((0, 1)) / 5), rtol=1e-6)
    # the hooks are gone afterwards
    assert all(not lin.module._forward_hooks for lin in lins)
    with InputStats(lins[:1]) as st:
        run_block(blocks.layers[0], chunks, keep_outputs=False)
    assert st.n_samples[lins[0].name] == 5 and not lins[0].module._forward_hooks


# ----------------------------------------------------------------------------- (c) sparsity and masks
CASES = [("tiny-llama", m, a) for m in ("wanda", "magnitude") for a in ("uniform", "owl", "neuroal")] + \
        [("tiny-opt", "wanda", "neuroal"), ("tiny-gpt2", "wanda", "neuroal"), ("tiny-gpt2", "magnitude", "owl")]


@pytest.mark.parametrize("name,method,allocation", CASES)
def test_prune_exact_sparsity_and_zeroed_weights(name, method, allocation):
    """Global sparsity equals the target within n_layers / n_entries; masks, records and weights agree."""
    dense, model, result, _ = _pruned(name, method, allocation)
    blocks = find_blocks(model)
    params = dict(model.named_parameters())
    names = [lin.param for lin in blocks.all()]
    assert sorted(result.masks.names()) == sorted(names)
    assert [r["name"] for r in result.layers] == names
    total = sum(params[n].numel() for n in names)
    kept = 0
    for r in result.layers:
        w, m = params[r["name"]], result.masks.masks[r["name"]]
        assert m.dtype == torch.bool and m.shape == w.shape
        assert r["kept"] == int(m.sum()) and r["numel"] == m.numel()
        assert r["sparsity"] == pytest.approx(1 - r["kept"] / r["numel"], abs=1e-12)
        assert torch.count_nonzero(w[~m]) == 0  # zero where the mask says prune
        assert torch.count_nonzero(w) == r["kept"]  # random init has no exact zeros: nonzero where kept
        assert abs(r["kept"] - (1 - r["target"]) * r["numel"]) <= 0.5 + 1e-6  # each layer on its own target
        kept += r["kept"]
    measured = 1 - kept / total
    assert result.sparsity == pytest.approx(measured, abs=1e-12)
    assert abs(measured - 0.6) <= len(names) / total
    # the block allocation, weighted by parameters, is on target
    w = np.array([sum(lin.weight.numel() for lin in lins) for lins in blocks.linears], float)
    assert (w * np.array(result.block_sparsity)).sum() / w.sum() == pytest.approx(0.6, abs=1e-9)
    # non-block parameters are untouched
    dparams = dict(dense.named_parameters())
    for n, p in params.items():
        if n not in result.masks:
            assert torch.equal(p, dparams[n]), n
        else:
            assert torch.equal(p, dparams[n] * result.masks.masks[n])


def test_uniform_allocation_per_row_counts():
    """Wanda + uniform: every row keeps round((1 - s) * n_in) entries (row comparison group)."""
    _, model, result, _ = _pruned("tiny-llama", "wanda", "uniform")
    assert result.block_sparsity == [0.6, 0.6] and result.lambda_block is None and result.lambda_row is None
    assert result.search == {} and result.outlier_ratios is None
    for r in result.layers:
        m = result.masks.masks[r["name"]]
        n_in = m.shape[1]
        counts = m.sum(1)
        assert set(counts.tolist()) <= {math.floor(0.4 * n_in), math.ceil(0.4 * n_in)}
        assert r["rows"] == "block ratio"


def test_owl_allocation_matches_outlier_ratios():
    """OWL: ratios from the dense model's Wanda scores; the block with more outliers is denser, band 2 lam."""
    dense, _, result, windows = _pruned("tiny-llama", "wanda", "owl")
    blocks = find_blocks(dense)
    inputs = _linear_inputs(dense, [lin.name for lin in blocks.all()], windows)
    ratios = []
    for lins in blocks.linears:
        scores = [al.wanda_scores(lin.weight, torch.sqrt(inputs[lin.name].pow(2).sum(0) / len(windows)).float())
                  for lin in lins]
        ratios.append(al.outlier_ratio(scores, 5.0))
    np.testing.assert_allclose(result.outlier_ratios, ratios, atol=2e-4)
    r, s = np.array(result.outlier_ratios), np.array(result.block_sparsity)
    assert r[0] != r[1]
    assert s[np.argmax(r)] < s[np.argmin(r)]
    assert s.max() - s.min() == pytest.approx(2 * 0.08, abs=1e-9)


def test_wanda_final_pass_uses_sparse_propagated_statistics():
    """Every kept Wanda score beats every dropped one in its row, with stats of the already pruned blocks."""
    dense, model, result, windows = _pruned("tiny-llama", "wanda", "uniform")
    blocks = find_blocks(dense)
    first = [lin.name for lin in blocks.linears[0]]
    qkv1 = [lin.name for lin in blocks.linears[1] if lin.role in ("q", "k", "v")]
    stats = _linear_inputs(dense, first, windows)  # block 0 sees the dense input
    stats.update(_linear_inputs(model, qkv1, windows))  # block 1 sees the output of the pruned block 0
    dense_qkv1 = _linear_inputs(dense, qkv1, windows)
    assert not torch.allclose(stats[qkv1[0]], dense_qkv1[qkv1[0]])
    lins = {lin.name: lin for lin in find_blocks(dense).all()}
    for name in first + qkv1:
        lin = lins[name]
        a = torch.sqrt(stats[name].pow(2).sum(0) / len(windows)).float()
        scores = al.wanda_scores(lin.weight, a)
        m = result.masks.masks[lin.param]
        for j in range(scores.shape[0]):
            assert scores[j][m[j]].min() >= scores[j][~m[j]].max() - 1e-6, (name, j)


def test_magnitude_layer_vs_row_group():
    """Magnitude per layer vs per row: different masks, both with the exact count and top-|w| property."""
    masks = {}
    for group in ("layer", "row"):
        model = _model()
        w0 = {lin.param: lin.weight.detach().clone() for lin in find_blocks(model).all()}
        res = prune(model, _windows(), _cfg(method="magnitude", group=group, sparsity=0.6))
        masks[group] = res.masks
        for name, m in res.masks.masks.items():
            w = w0[name].abs()
            assert int(m.sum()) == round(0.4 * m.numel())
            if group == "layer":
                assert w[m].min() >= w[~m].max()
            else:
                counts = m.sum(1)
                assert set(counts.tolist()) <= {math.floor(0.4 * m.shape[1]), math.ceil(0.4 * m.shape[1])}
                for j in range(m.shape[0]):
                    assert w[j][m[j]].min() >= w[j][~m[j]].max()
    assert any(not torch.equal(masks["layer"].masks[n], masks["row"].masks[n]) for n in masks["row"].names())
    # auto: magnitude compares within the layer (the default group, the authors' setting's, is row)
    auto = prune(_model(), _windows(), _cfg(method="magnitude", group="auto", sparsity=0.6)).masks
    assert all(torch.equal(auto.masks[n], masks["layer"].masks[n]) for n in auto.names())
    default = prune(_model(), _windows(), _cfg(method="magnitude", sparsity=0.6)).masks
    assert all(torch.equal(default.masks[n], masks["row"].masks[n]) for n in default.names())


def test_layer_mask_exact_counts():
    """layer_mask keeps round(density * numel) entries, per row for vectors of row sparsities."""
    s = torch.rand(10, 13, generator=torch.Generator().manual_seed(0))
    assert int(layer_mask(s, 0.3, "layer").sum()) == round(0.7 * 130)
    rows = np.linspace(0.1, 0.9, 10)
    m = layer_mask(s, rows)
    np.testing.assert_array_equal(m.sum(1).numpy(), al.keep_counts(rows, 13))


# ----------------------------------------------------------------------------- (d) NeuroAL search
@pytest.mark.parametrize("name", ["tiny-llama", "tiny-opt", "tiny-gpt2"])
def test_neuroal_lambdas_and_traces(name):
    """Chosen lambdas are in the grids and are the argmin of traces with one entry per grid value."""
    _, _, result, _ = _pruned(name, "wanda", "neuroal")
    grid, rgrid = al.block_grid(0.6), al.ROW_GRID
    block, row = result.search["block"], result.search["row"]
    assert [lam for lam, _ in block] == list(grid) and [lam for lam, _ in row] == list(rgrid)
    assert row[0][0] == 0.0
    assert result.lambda_block in grid and result.lambda_row in rgrid
    objectives = [v for _, v in block]
    assert all(np.isfinite(objectives)) and result.lambda_block == block[int(np.argmin(objectives))][0]
    assert result.lambda_row == row[int(np.argmin([v for _, v in row]))][0]
    lam = result.lambda_block
    np.testing.assert_allclose(result.block_sparsity, al.block_ramp(0.6, 2, lam), atol=1e-12)
    np.testing.assert_allclose(result.block_sparsity, [0.6 - lam, 0.6 + lam], atol=1e-12)
    # the block step's best objective is the row step's lambda = 0 entry
    assert row[0][1] == pytest.approx(min(objectives), rel=1e-12)
    # rows: row-step layers are exactly the ones without a fallback (when lambda_row > 0)
    for r in result.layers:
        expected = "row step" if result.lambda_row > 0 and r["name"].removesuffix(".weight") not in \
            result.fallbacks else "block ratio"
        assert r["rows"] == expected, r["name"]
    import json

    assert json.loads(json.dumps(result.to_dict()))["lambda_block"] == result.lambda_block


def test_neuroal_fallbacks_reported():
    """GPT-2's fused c_attn keeps the block ratio and says so; LLaMA's GQA k/v get head-averaged drops."""
    _, _, gpt2, _ = _pruned("tiny-gpt2", "wanda", "neuroal")
    assert {k for k, v in gpt2.fallbacks.items() if v == "fused projection"} == \
        {f"transformer.h.{b}.attn.c_attn" for b in range(2)}
    _, _, llama, _ = _pruned("tiny-llama", "wanda", "neuroal")
    assert not any(".k_proj" in k or ".v_proj" in k for k in llama.fallbacks)


def test_row_drops_closed_form():
    """row_drops: q/k/v <- o input (k/v head-averaged), o <- MLP input, gate/up <- down input, down <- output."""
    model = _model("tiny-llama")
    blocks = find_blocks(model)
    g = torch.Generator().manual_seed(0)
    diffs = {lin.name: torch.rand(lin.weight.shape[1], generator=g).float() + 0.1 for lin in blocks.all()}
    for b in range(2):
        diffs[f"{BLOCK_OUTPUT}{b}"] = torch.rand(64, generator=g) + 0.1
    drops, fallbacks = row_drops(blocks, diffs)
    assert fallbacks == {}
    p = "model.layers.0."
    o_in = diffs[p + "self_attn.o_proj"].double().numpy()
    np.testing.assert_array_equal(drops[p + "self_attn.q_proj"], o_in)
    # 4 query heads of 16, 2 kv heads: kv head g reads query heads 2g and 2g + 1
    heads = o_in.reshape(4, 16)
    kv = np.concatenate([(heads[0] + heads[1]) / 2, (heads[2] + heads[3]) / 2])
    np.testing.assert_allclose(drops[p + "self_attn.k_proj"], kv, rtol=1e-12)
    np.testing.assert_allclose(drops[p + "self_attn.v_proj"], kv, rtol=1e-12)
    np.testing.assert_array_equal(drops[p + "self_attn.o_proj"], diffs[p + "mlp.gate_proj"].double().numpy())
    np.testing.assert_array_equal(drops[p + "mlp.up_proj"], diffs[p + "mlp.down_proj"].double().numpy())
    np.testing.assert_array_equal(drops[p + "mlp.down_proj"], diffs[f"{BLOCK_OUTPUT}0"].double().numpy())
    # the NeuroAL authors' choices: block ratio for GQA k/v; down rows from the next block's (unchanged) input
    diffs["model.layers.1.self_attn.q_proj"] = torch.zeros(64)
    drops, fallbacks = row_drops(blocks, diffs, gqa_rows="block", down_rows="next_input")
    assert fallbacks[p + "self_attn.k_proj"] == "grouped-query k/v (gqa_rows='block')"
    assert p + "self_attn.k_proj" not in drops
    assert fallbacks[p + "mlp.down_proj"].startswith("all-zero alignment vector")
    assert fallbacks["model.layers.1.mlp.down_proj"] == "no consumer (last block)"


def test_neuroal_single_steps():
    """steps='block' has no row search; steps='row' starts from uniform blocks."""
    windows = _windows()
    res = prune(_model(), windows, _cfg(allocation="neuroal", neuroal_steps="block", sparsity=0.6))
    assert set(res.search) == {"block"} and res.lambda_row is None and res.lambda_block is not None
    res = prune(_model(), windows, _cfg(allocation="neuroal", neuroal_steps="row", sparsity=0.6,
                                        row_grid=(0.0, 0.1)))
    assert set(res.search) == {"row"} and res.lambda_block is None and res.block_sparsity == [0.6, 0.6]
    assert [lam for lam, _ in res.search["row"]] == [0.0, 0.1]


# ----------------------------------------------------------------------------- (e) determinism, (f) save/apply
def test_deterministic():
    """Two runs with the same seed give identical masks and lambdas."""
    a = _pruned("tiny-llama", "wanda", "neuroal")[2]
    model = _model()
    b = prune(model, _windows(), _cfg(method="wanda", allocation="neuroal", sparsity=0.6))
    assert a.lambda_block == b.lambda_block and a.lambda_row == b.lambda_row
    assert a.search == b.search and a.block_sparsity == b.block_sparsity
    assert a.masks.names() == b.masks.names()
    assert all(torch.equal(a.masks.masks[n], b.masks.masks[n]) for n in a.masks.names())


@pytest.mark.parametrize("name", ["tiny-llama", "tiny-gpt2"])
def test_masks_save_load_apply(tmp_path, name):
    """MaskSet save/load round-trips; applied to a dense copy it reproduces the pruned weights exactly."""
    dense, model, result, _ = _pruned(name, "wanda", "neuroal")
    path = result.masks.save(tmp_path / "masks.safetensors", metadata={"method": "wanda"})
    loaded = MaskSet.load(path)
    assert loaded.names() == result.masks.names()
    assert all(torch.equal(loaded.masks[n], result.masks.masks[n]) for n in loaded.names())
    fresh = copy.deepcopy(dense)
    loaded.apply_to_weights(fresh)
    assert sum(int((~m).sum()) for m in loaded.masks.values()) == sum(r["numel"] - r["kept"] for r in result.layers)
    mine = dict(model.named_parameters())
    for n, p in fresh.named_parameters():
        assert torch.equal(p, mine[n]), n
    # a mask for a parameter the model lacks, or of the wrong shape, is a ConfigError
    with pytest.raises(ConfigError):
        MaskSet({"nope.weight": torch.ones(2, 2, dtype=torch.bool)}).apply_to_weights(copy.deepcopy(dense))
    first = result.masks.names()[0]
    with pytest.raises(ConfigError):
        MaskSet({first: torch.ones(3, 3, dtype=torch.bool)}).apply_to_weights(copy.deepcopy(dense))


# ----------------------------------------------------------------------------- (g) errors
@pytest.mark.parametrize("kw", [dict(sparsity=0), dict(sparsity=1), dict(sparsity=1.2), dict(sparsity=-0.5),
                                dict(sparsity=float("nan")), dict(method="sparsegpt"), dict(allocation="alpha"),
                                dict(neuroal_steps="all"), dict(group="head"), dict(row_grid=()),
                                dict(block_grid=(0.1, 1.5)), dict(n_search=0), dict(seq_len=1),
                                dict(clip=(0.5, 0.4)), dict(sparsity=0.995)])
def test_config_errors(kw):
    """Bad settings are ConfigErrors at construction."""
    with pytest.raises(ConfigError):
        OneShotConfig(**kw)


class _Named(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.alpha = torch.nn.Linear(4, 4)
        self.beta = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])


@pytest.mark.parametrize("module", [torch.nn.Sequential(torch.nn.Linear(4, 4)), _Named()])
def test_find_blocks_without_blocks(module):
    """A module without recognisable transformer blocks is a ConfigError."""
    with pytest.raises(ConfigError, match="no recognisable"):
        find_blocks(module)


def test_find_blocks_rejects_encoder_decoder():
    """A tiny T5 has two stacks (encoder and decoder): ConfigError."""
    from topoprune.models import build_model

    t5 = build_model("tiny-t5", "seq2seq", _tok())
    with pytest.raises(ConfigError, match="one stack"):
        find_blocks(t5)


def test_nan_weight_is_tensor_error():
    """A NaN in one block weight is a TensorError naming that parameter, before anything is pruned."""
    model = _model()
    with torch.no_grad():
        model.model.layers[1].mlp.up_proj.weight[3, 5] = float("nan")
    before = model.model.layers[0].self_attn.q_proj.weight.detach().clone()
    with pytest.raises(TensorError, match=r"model\.layers\.1\.mlp\.up_proj\.weight"):
        prune(model, _windows(), _cfg())
    assert torch.equal(model.model.layers[0].self_attn.q_proj.weight, before)


def test_calibration_text_errors(tmp_path):
    """Missing or empty calibration files are CalibrationErrors (ConfigErrors)."""
    assert issubclass(CalibrationError, ConfigError)
    with pytest.raises(CalibrationError, match="not found"):
        text_ids(_tok(), str(tmp_path / "missing.txt"))
    (tmp_path / "empty.txt").write_text("  \n\n ")
    with pytest.raises(CalibrationError, match="empty"):
        text_ids(_tok(), str(tmp_path / "empty.txt"))
    (tmp_path / "ok.txt").write_text("the cat sat on the mat " * 20)
    ids = text_ids(_tok(), str(tmp_path / "ok.txt"))
    assert ids.dtype == torch.long and ids.numel() >= 100


def test_sample_windows():
    """Windows are contiguous slices at seeded offsets; a short text is repeated whole."""
    ids = torch.arange(100)
    w = sample_windows(ids, 5, 10, seed=3)
    assert w.shape == (5, 10)
    assert all(torch.equal(row, torch.arange(int(row[0]), int(row[0]) + 10)) for row in w)
    assert torch.equal(w, sample_windows(ids, 5, 10, seed=3))
    assert not torch.equal(w, sample_windows(ids, 5, 10, seed=4))
    short = sample_windows(torch.arange(6), 3, 10)
    assert short.shape == (3, 6) and torch.equal(short[2], torch.arange(6))
    with pytest.raises(ConfigError):
        sample_windows(ids, 0, 10)


# ----------------------------------------------------------------------------- (h) perplexity
class _Uniform(torch.nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.dummy = torch.nn.Parameter(torch.zeros(1))
        self.vocab = vocab

    def forward(self, input_ids, use_cache=False):
        return SimpleNamespace(logits=torch.zeros(*input_ids.shape, self.vocab))


class _Bigram(torch.nn.Module):
    """Logits depend on the current token only: per-token loss does not depend on the context."""

    def __init__(self, vocab, seed=0):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(seed)) * 3)
        self.calls = []

    def forward(self, input_ids, use_cache=False):
        self.calls.append(input_ids.clone())
        return SimpleNamespace(logits=self.table[input_ids])


def test_perplexity_uniform_logits_is_vocab_size():
    """Uniform logits over V give perplexity V."""
    ids = torch.randint(0, 37, (101,), generator=torch.Generator().manual_seed(0))
    for window, stride in ((16, None), (16, 5), (200, None)):
        assert perplexity(_Uniform(37), ids, window=window, stride=stride) == pytest.approx(37, rel=1e-6)  # float32


@pytest.mark.parametrize("n,window,stride,max_tokens", [(103, 16, 8, None), (103, 16, 5, None), (103, 16, 1, None),
                                                        (103, 16, 15, None), (103, 16, 7, 50), (10, 16, None, None),
                                                        (103, 16, None, None), (64, 16, 16, None)])
def test_perplexity_scores_each_token_once(n, window, stride, max_tokens):
    """Overlapping windows score every token after the first exactly once; disjoint windows skip window starts."""
    vocab = 11
    ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(1))
    model = _Bigram(vocab)
    ppl = perplexity(model, ids, window=window, stride=stride, max_tokens=max_tokens, batch_size=3)
    t = ids[:max_tokens] if max_tokens else ids
    logp = torch.log_softmax(model.table.detach().double()[t[:-1]], -1).gather(1, t[1:, None]).squeeze(1)
    positions = torch.arange(1, t.numel())  # logp[i] scores token i + 1
    if (stride or window) == window:  # non-overlapping windows (Wanda/SparseGPT protocol): no context at a start
        logp = logp[positions % window != 0]
    assert ppl == pytest.approx(math.exp(-float(logp.mean())), rel=1e-6)  # float32 log-softmax
    # windows start every stride tokens, the last one ends at the end of the text
    step, spans, b = stride or window, [], 0
    while True:
        spans.append((b, min(b + window, t.numel())))
        if spans[-1][1] >= t.numel():
            break
        b += step
    got = sorted(tuple(row.tolist()) for call in model.calls for row in call)
    assert got == sorted(tuple(t[b:e].tolist()) for b, e in spans)


class _Dropout(_Uniform):
    """Uniform logits in eval mode, random ones in training mode."""

    def forward(self, input_ids, use_cache=False):
        out = super().forward(input_ids)
        if self.training:
            out.logits = torch.randn(out.logits.shape)
        return out


def test_perplexity_scores_in_eval_mode_and_restores_it():
    """A model in training mode is scored without dropout and left in training mode."""
    model = _Dropout(13).train()
    ids = torch.arange(40) % 13
    assert perplexity(model, ids, window=8) == pytest.approx(13, rel=1e-6)
    assert model.training
    model.eval()
    perplexity(model, ids, window=8)
    assert not model.training


@pytest.mark.parametrize("name", ["tiny-opt", "tiny-gpt2"])
def test_load_causal_lm_in_eval_mode(name):
    """Tiny models (dropout 0.1) come back in eval mode, so dense and pruned perplexity are comparable."""
    from topoprune.models import load_causal_lm

    model, tok, source = load_causal_lm(name)
    assert not model.training and source == name and len(tok) == model.config.vocab_size


def test_load_causal_lm_missing_dir(tmp_path):
    """A directory that does not exist, or one without config.json, is a ConfigError."""
    from topoprune.models import load_causal_lm

    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        load_causal_lm(str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match="not a Hugging Face model directory"):
        load_causal_lm(str(tmp_path))


def test_perplexity_errors():
    """Bad windows and too-short texts are ConfigErrors."""
    ids = torch.arange(20) % 5
    with pytest.raises(ConfigError):
        perplexity(_Uniform(5), ids, window=8, stride=9)
    with pytest.raises(ConfigError):
        perplexity(_Uniform(5), ids, window=1)
    with pytest.raises(ConfigError):
        perplexity(_Uniform(5), ids[:1], window=8)
