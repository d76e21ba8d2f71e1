r"""Proximal steps for NeuroPrune's penalties: weights that really reach zero under Adam.

In the gradient form (the paper's), the penalty's gradient joins the task gradient, and Adam
divides the sum by its running RMS: a weight whose task gradient is small takes steps of about
``lr`` towards zero whatever the penalty weight, so in a few hundred steps it cannot travel to
:math:`|w| < \varepsilon`. The proximal form (``penalty_form="proximal"``) leaves the penalty out
of the loss and, after every optimiser step, moves each weight towards zero by exactly the step the
penalty's l1 term would take -- the *proximal operator* of that term, a soft threshold:

.. math::

    w \leftarrow \operatorname{sign}(w)\,\max(|w| - \tau, 0).

The threshold is the step size times the term's weight. With Adam (AdamW) the step size of weight
:math:`w_{ij}` is Adam's own, :math:`\eta_{ij} = \text{lr} / (\sqrt{\hat v_{ij}} + \epsilon)` with
:math:`\hat v` the bias-corrected second moment -- the preconditioned proximal step of ProxGen
(Yun, Lozano & Yang, "Adaptive Proximal Gradient Methods for Structured Neural Networks",
NeurIPS 2021); with SGD it is the learning rate. Per term:

* **MLP, preferential attachment** :math:`\alpha \sum_i \lVert W_{i,:}\rVert_1 / c_i`:
  :math:`\tau_{ij} = \eta_{ij}\,\alpha / c_i` -- rows of poorly connected neurons shrink faster,
  hubs keep their edges (:func:`prox_rows`);
* **attention row groups** :math:`\beta \sum_j (s_j + \delta)^{1/2}`, :math:`s_j = \sum_r
  |A_{rj}|` over the column ``j`` of :math:`A = \operatorname{cat}(Q, K, V)`: linearised at the
  current weights (iteratively reweighted l1), every entry of group ``j`` shrinks by
  :math:`\tau_{rj} = \eta_{rj}\,\beta / (2\sqrt{s_j + \delta})`, so small groups -- input
  dimensions the attention hardly reads -- vanish first (:func:`prox_groups`);
* **l1 baseline** :math:`\alpha \sum |w|` (and :math:`\beta` on Q/K/V): :math:`\tau_{ij} = \eta_{ij}\,\alpha`.
"""
from __future__ import annotations

import torch

from ..graph.binding import canonical


def soft_threshold(w: torch.Tensor, tau) -> torch.Tensor:
    r""":math:`\operatorname{sign}(w) \max(|w| - \tau, 0)`, the proximal operator of :math:`\tau \lVert w \rVert_1`.

    >>> soft_threshold(torch.tensor([0.5, -0.2, 0.05]), 0.1)
    tensor([ 0.4000, -0.1000,  0.0000])
    """
    return torch.sign(w) * torch.clamp(w.abs() - tau, min=0)


def step_sizes(optimizer, param: torch.nn.Parameter, spec) -> torch.Tensor | float:
    r"""The step size of every entry of ``spec``'s ``[out, in]`` piece of ``param`` in ``optimizer``.

    Adam/AdamW (a state with ``exp_avg_sq`` and ``step``): :math:`\text{lr} / (\sqrt{v / (1 -
    \beta_2^t)} + \epsilon)`, a tensor of the piece's shape; any other optimiser: its learning
    rate (a float).
    """
    group = next((g for g in optimizer.param_groups if any(p is param for p in g["params"])), None)
    if group is None:
        return 0.0
    lr = float(group["lr"])
    state = optimizer.state.get(param) or {}
    v = state.get("exp_avg_sq")
    if v is None or "betas" not in group:
        return lr
    step = float(state.get("step", 1))
    bias2 = 1.0 - group["betas"][1] ** max(step, 1.0)
    return lr / (canonical(v, spec).sqrt() / bias2 ** 0.5 + group["eps"])


@torch.no_grad()
def prox_rows(binding, spec, optimizer, weight: float, row_scale: torch.Tensor | None = None) -> None:
    r"""Soft-threshold ``spec``'s matrix by :math:`\eta_{ij} \cdot \text{weight} \cdot \text{row\_scale}_i`.

    ``row_scale`` is :math:`1/c_i` for the preferential-attachment term, None (1) for plain l1.
    """
    param = binding.parameter(spec.tensor)
    w = binding.weight(spec).detach()
    tau = step_sizes(optimizer, param, spec) * weight
    if row_scale is not None:
        tau = tau * row_scale.to(w.device, w.dtype)[:, None]
    binding.write(spec, soft_threshold(w, tau))


@torch.no_grad()
def prox_groups(binding, specs, optimizer, weight: float, delta: float) -> None:
    r"""The attention row-group term on ``specs`` (q, k, v): every entry of column ``j`` of
    :math:`\operatorname{cat}(Q, K, V)` shrinks by :math:`\eta \cdot \text{weight} / (2 \sqrt{s_j + \delta})`."""
    ws = [binding.weight(s).detach() for s in specs]
    s = sum(w.abs().sum(0) for w in ws)  # [in]: one group per input dimension
    scale = weight / (2.0 * torch.sqrt(s + delta))  # [in]
    for spec, w in zip(specs, ws):
        tau = step_sizes(optimizer, binding.parameter(spec.tensor), spec) * scale[None, :]
        binding.write(spec, soft_threshold(w, tau))
