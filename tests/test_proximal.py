"""Proximal steps: the closed forms of the soft thresholds, and that they reach sparsity the gradient form does not."""
import pytest
import torch

from topoprune.graph.binding import Binding
from topoprune.models import build_model, load_tokenizer
from topoprune.train.neuroprune import NeuroPrune, NeuroPruneConfig
from topoprune.train.proximal import prox_groups, prox_rows, soft_threshold, step_sizes


@pytest.fixture(scope="module")
def tok():
    return load_tokenizer()


def _bert(tok, seed=0):
    torch.manual_seed(seed)
    return build_model("tiny-bert", "classification", tok, 2)


def test_soft_threshold_closed_form():
    w = torch.tensor([[0.5, -0.2, 0.05], [-0.01, 0.3, -0.3]])
    tau = torch.tensor([[0.1], [0.2]])
    assert torch.allclose(soft_threshold(w, tau), torch.tensor([[0.4, -0.1, 0.0], [0.0, 0.1, -0.1]]))


def test_step_sizes_sgd_and_adam(tok):
    model = _bert(tok)
    b = Binding(model)
    spec = b.mlp[0].out
    p = b.parameter(spec.tensor)
    sgd = torch.optim.SGD(model.parameters(), lr=0.3)
    assert step_sizes(sgd, p, spec) == 0.3
    adam = torch.optim.AdamW(model.parameters(), lr=1e-3, betas=(0.9, 0.99), eps=1e-8)
    p.grad = torch.randn_like(p)
    adam.step()
    v = adam.state[p]["exp_avg_sq"]
    expected = 1e-3 / ((v / (1 - 0.99)).sqrt() + 1e-8)  # after one step: bias correction 1 - beta2
    assert torch.allclose(step_sizes(adam, p, spec), expected, rtol=1e-6)


def test_prox_rows_shrinks_poorly_connected_rows_more(tok):
    model = _bert(tok)
    b = Binding(model)
    spec = b.mlp[0].inputs[0]
    w = b.weight(spec).detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    scale = torch.linspace(1.0, 4.0, w.shape[0])  # 1 / c_i
    prox_rows(b, spec, opt, 0.01, scale)
    expected = torch.sign(w) * torch.clamp(w.abs() - 0.1 * 0.01 * scale[:, None], min=0)
    assert torch.allclose(b.weight(spec).detach(), expected)


def test_prox_groups_closed_form(tok):
    model = _bert(tok)
    b = Binding(model)
    la = b.attention[0]
    ws = [b.weight(s).detach().clone() for s in la.qkv]
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    prox_groups(b, la.qkv, opt, 0.02, 1e-8)
    s = sum(w.abs().sum(0) for w in ws)
    tau = 0.05 * 0.02 / (2 * torch.sqrt(s + 1e-8))
    for spec, w in zip(la.qkv, ws):
        assert torch.allclose(b.weight(spec).detach(), soft_threshold(w, tau[None, :]), atol=1e-7)


def _sparsity_after(tok, form, steps=15, **extra):
    model = _bert(tok)
    cfg = NeuroPruneConfig(**{"mlp_weight": 3e-3, "attn_weight": 3e-3, "penalty_form": form, "head_pruning": "off",
                              **extra})
    np_ = NeuroPrune(model, cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for step in range(1, steps + 1):
        ids = torch.randint(1, 500, (8, 16), generator=g)
        loss = model(input_ids=ids, labels=torch.randint(0, 2, (8,), generator=g)).loss + np_.penalty()
        loss.backward()
        np_.before_optimizer_step(opt)
        opt.step()
        np_.after_optimizer_step(opt, step)
        opt.zero_grad()
    rep = np_.sparsity_report()
    return {r: float(rep[(rep.level == "role") & (rep.role == r)].sparsity.iloc[0]) for r in ("mlp_in", "q")}


def test_proximal_form_reaches_sparsity_the_gradient_form_does_not(tok):
    """Adam rescales a penalty gradient: in 15 steps it moves weights ~lr each; the proximal step
    with Adam's own step sizes prunes far more at the same alpha and beta."""
    grad, prox = _sparsity_after(tok, "gradient"), _sparsity_after(tok, "proximal")
    assert prox["mlp_in"] > grad["mlp_in"] + 0.2 and prox["q"] > grad["q"] + 0.1, (grad, prox)


def test_proximal_penalty_is_not_in_the_loss(tok):
    np_ = NeuroPrune(_bert(tok), NeuroPruneConfig(mlp_weight=1.0, penalty_form="proximal"))
    pen = np_.penalty()
    assert float(pen) == 0.0 and not pen.requires_grad


def test_penalties_stop_at_the_end_in_paper_mode(tok):
    """With ``end`` the proximal steps stop: sparsity after 15 steps equals the sparsity at ``end``,
    give or take the epsilon masks of weights that fine-tuning itself brings under epsilon."""
    small = {"mlp_weight": 1e-4, "attn_weight": 2e-4}  # 78 % of mlp_in at step 5, 99 % at 15 when running on
    at_end, stopped, running = (_sparsity_after(tok, "proximal", steps=5, **small),
                                _sparsity_after(tok, "proximal", end=5, **small), _sparsity_after(tok, "proximal", **small))
    assert abs(stopped["mlp_in"] - at_end["mlp_in"]) < 0.02 and running["mlp_in"] > stopped["mlp_in"] + 0.1
    cfg = NeuroPruneConfig(end_fraction=0.75, penalty_form="gradient", mlp_weight=1.0)
    assert cfg.resolved(100).end == 75 and NeuroPruneConfig().resolved(100).end is None
    np_ = NeuroPrune(_bert(tok), cfg.resolved(4))
    assert float(np_.penalty().detach()) > 0
    np_.step = 3
    assert np_.penalties_active(3) and float(np_.penalty()) == 0.0  # the next step (4) is past the end


def test_mode_defaults_of_the_penalties():
    from topoprune.train.config import PAPER_PENALTIES, TARGET_PENALTIES

    paper, target = NeuroPruneConfig(), NeuroPruneConfig(target=0.5, end=10)
    assert (paper.mlp_weight, paper.attn_weight, paper.penalty_form) == tuple(PAPER_PENALTIES.values())
    assert (target.mlp_weight, target.attn_weight, target.penalty_form) == tuple(TARGET_PENALTIES.values())
    assert NeuroPruneConfig(mlp_weight=0.0).mlp_weight == 0.0  # given values are kept
