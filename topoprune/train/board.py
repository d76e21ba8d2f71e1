"""Topology in TensorBoard: degree histograms per role at every snapshot, the CCDF figure at the end.

With ``--report-to tensorboard`` the Trainer's own integration receives the scalar metrics
(``topology/mlp/sparsity``, ...) through ``Trainer.log``. :class:`TopologyBoard` adds what a
scalar cannot show, written beside them (the integration's log directory, so TensorBoard shows one
run):

* ``degrees/<role>/in`` and ``degrees/<role>/out``: histograms of the in- and out-degrees of every
  matrix of a role at each snapshot step -- scrub through them to watch the degree distribution
  change over training;
* ``degrees/ccdf``: at the end of training, an image of the in-degree CCDF of each role
  (:func:`~topoprune.plotting.ccdf.plot_ccdf`, log-log), the figure a paper shows.
"""
from __future__ import annotations

import logging
import os

import numpy as np

log = logging.getLogger(__name__)


def tensorboard_dir(trainer) -> str | None:
    """The log directory of the Trainer's TensorBoard integration, ``None`` if it is not reporting there."""
    from transformers.integrations import TensorBoardCallback

    for cb in trainer.callback_handler.callbacks:
        if isinstance(cb, TensorBoardCallback):
            return cb.logging_dir or os.path.join(trainer.args.output_dir, "runs")
    return None


class TopologyBoard:
    """A TensorBoard writer for degree histograms and the final CCDF image.

    Parameters
    ----------
    log_dir : str
        The event-file directory (the Trainer integration's, :func:`tensorboard_dir`).
    """

    def __init__(self, log_dir: str):
        from torch.utils.tensorboard import SummaryWriter

        self.log_dir = log_dir
        self.writer = SummaryWriter(log_dir=log_dir)

    def histograms(self, degrees: dict, step: int) -> None:
        """``degrees/<role>/in|out`` at ``step`` from ``{role: (in_degrees, out_degrees)}``."""
        for role, (ins, outs) in sorted(degrees.items()):
            for side, values in (("in", ins), ("out", outs)):
                values = np.asarray(values)
                if values.size:
                    top = int(values.max())
                    # one bin per degree up to 200 distinct values, else 200 bins
                    bins = np.arange(-0.5, top + 1.5) if top < 200 else 200
                    self.writer.add_histogram(f"degrees/{role}/{side}", values, step, bins=bins)
        self.writer.flush()

    def ccdf_image(self, degrees: dict, step: int) -> None:
        """``degrees/ccdf``: the in-degree CCDF of every role, one curve each, as an image."""
        from matplotlib.figure import Figure

        from ..plotting.ccdf import plot_ccdf, role_colors

        roles = [r for r in sorted(degrees) if np.asarray(degrees[r][0]).any()]
        if not roles:
            return
        fig = Figure(figsize=(5, 3.6), layout="constrained")
        ax = fig.subplots()
        colors = role_colors(roles)
        for role in roles:
            plot_ccdf(degrees[role][0], ax=ax, label=role, color=colors[role], legend=False)
        ax.legend(fontsize="small", frameon=False)
        ax.set_title(f"in-degree CCDF per role, step {step}", fontsize="medium")
        self.writer.add_figure("degrees/ccdf", fig, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
