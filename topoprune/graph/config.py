"""Frozen, validated settings for graphs, fits, modularity and whole analyses.

Every output embeds the config it was made with (``dataclasses.asdict``); CLI flags map
one-to-one onto these fields.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field

from ..errors import ConfigError

#: What a matrix's edges are, see :func:`topoprune.graph.bipartite.edge_mask`.
EDGE_MODES = ("auto", "density", "threshold", "nonzero")
#: What a matrix with NaN/Inf entries does to an analysis.
NONFINITE = ("error", "flag")
#: Largest worker count accepted (the analysis also caps it at the CPUs and the matrices).
MAX_JOBS = 256
#: Prefix of a ``scheduler`` that starts a local Dask cluster (``local:N``: N worker processes).
LOCAL_SCHEDULER = "local:"
#: Where edge selection and degrees run (``cuda:N``: CUDA device N; ``auto``: cuda when available, else cpu).
DEVICES = ("cpu", "cuda", "cuda:N", "auto")
#: Alternatives the power law is compared with by log-likelihood ratio.
ALTERNATIVES = ("lognormal", "exponential", "truncated_power_law")


@dataclass(frozen=True)
class GraphConfig:
    """How a weight matrix becomes a bipartite graph.

    Parameters
    ----------
    density : float
        Fraction of entries kept as edges, the largest by ``|w|`` (0 < density <= 1).
    threshold : float or None
        If set, edges are entries with ``|w| >= threshold`` instead (NeuroPrune's epsilon).
    mode : {"auto", "density", "threshold", "nonzero"}
        ``auto``: nonzero entries when the matrix is already sparse (at least
        ``sparse_fraction`` of it exactly zero, e.g. a pruned checkpoint), else ``threshold``
        when given, else ``density``.
    sparse_fraction : float
        Share of exact zeros from which ``auto`` treats a matrix as pruned.
    """

    density: float = 0.1
    threshold: float | None = None
    mode: str = "auto"
    sparse_fraction: float = 0.2

    def __post_init__(self):
        if not (isinstance(self.density, (int, float)) and 0.0 < self.density <= 1.0):
            raise ConfigError(f"density must be in (0, 1], got {self.density!r}")
        if self.threshold is not None and not (math.isfinite(self.threshold) and self.threshold >= 0):
            raise ConfigError(f"threshold must be a finite number >= 0, got {self.threshold!r}")
        if self.mode not in EDGE_MODES:
            raise ConfigError(f"edge mode must be one of {EDGE_MODES}, got {self.mode!r}")
        if self.mode == "threshold" and self.threshold is None:
            raise ConfigError("edge mode 'threshold' needs a threshold")
        if not 0.0 < self.sparse_fraction <= 1.0:
            raise ConfigError(f"sparse_fraction must be in (0, 1], got {self.sparse_fraction!r}")


@dataclass(frozen=True)
class FitConfig:
    """Power-law fitting of degree sequences (Clauset, Shalizi & Newman 2009).

    Parameters
    ----------
    min_points : int
        Fewer positive degrees than this: verdict ``too_few_points``, no fit.
    min_tail : int
        Smallest tail (points >= xmin) an xmin candidate may leave.
    max_xmin_candidates : int
        Bound on the KS scan over xmin: at most this many candidates, spread
        log-uniformly over the unique degrees, so no fit takes more than ~1 s.
    alpha_range : (float, float)
        Range allowed for alpha (powerlaw 2.0's default caps alpha at 3).
    alternatives : tuple of str
        Distributions compared with the power law by log-likelihood ratio.
    tpl_discrete : bool
        Fit the truncated power law as a discrete distribution. The discrete
        normaliser (a Lerch transcendent in mpmath) costs ~2 s a fit, so the default
        compares against the continuous truncated power law (~0.05 s).
    significance : float
        p-value below which a log-likelihood ratio is taken as decisive.
    """

    min_points: int = 30
    min_tail: int = 10
    max_xmin_candidates: int = 40
    alpha_range: tuple[float, float] = (1.0, 8.0)
    alternatives: tuple[str, ...] = ALTERNATIVES
    tpl_discrete: bool = False
    significance: float = 0.1

    def __post_init__(self):
        if self.min_points < 3 or self.min_tail < 2:
            raise ConfigError("min_points must be >= 3 and min_tail >= 2")
        if self.max_xmin_candidates < 1:
            raise ConfigError("max_xmin_candidates must be >= 1")
        lo, hi = self.alpha_range
        if not 0 <= lo < hi:
            raise ConfigError(f"alpha_range must be (lo, hi) with 0 <= lo < hi, got {self.alpha_range!r}")
        bad = [a for a in self.alternatives if a not in ALTERNATIVES]
        if bad:
            raise ConfigError(f"unknown alternative distribution(s) {bad}; choose from {ALTERNATIVES}")
        if not 0 < self.significance < 1:
            raise ConfigError(f"significance must be in (0, 1), got {self.significance!r}")


@dataclass(frozen=True)
class ModularityConfig:
    """Community detection: igraph Leiden with the modularity objective (Newman 2006).

    Parameters
    ----------
    seed : int
        Seed of the dedicated random generator handed to igraph (results are deterministic).
    n_iterations : int
        Leiden iterations; negative runs until the partition stops changing.
    weighted : bool
        Weight edges by ``|w|``; the default measures the binary topology.
    resolution : float
        Modularity resolution parameter gamma (1 is Newman's Q).
    """

    seed: int = 0
    n_iterations: int = 2
    weighted: bool = False
    resolution: float = 1.0


@dataclass(frozen=True)
class AnalysisConfig:
    """Everything :func:`topoprune.analyze` needs besides the checkpoint.

    Parameters
    ----------
    graph, fit, modularity
        Component settings.
    layers : tuple of int or None
        Only these block indices (``None``: all). Non-block matrices are kept unless
        ``blocks_only``.
    roles : tuple of str or None
        Only matrices with these roles (``None``: all).
    blocks_only : bool
        Skip embeddings, LM head and other non-block matrices.
    fits : bool
        Fit power laws (set False for degree statistics only).
    matrix_modularity : bool
        Leiden modularity of every matrix's bipartite graph.
    block_modularity : bool
        Modularity of each block's layered attention and MLP graphs (heavier).
    model_modularity : bool
        Also the whole-model multipartite graph (blocks stacked through the residual
        stream, one per encoder/decoder side): degrees and modularity. Slow on big models
        (BERT-base: ~8.5 M edges, ~25 s).
    include_embeddings : bool
        Analyse embedding and LM-head matrices (vocabulary x hidden; large, skipped by default).
    pattern_size : int
        Side of the edge-density maps kept for sparsity-pattern images (0: none).
    n_jobs : int
        Worker processes for fits and modularity: 1 runs everything in this process,
        -1 one worker per CPU (at most 8), else 1 to :data:`MAX_JOBS`; never more workers than
        CPUs or matrices are started. Results do not depend on it.
    scheduler : str or None
        Run the per-matrix work on a Dask cluster instead of the local process pool
        (:mod:`topoprune.graph.cluster`): the address of a running scheduler
        (``tcp://10.0.0.5:8786``), or ``local:N`` for a local cluster of N worker processes
        (capped like ``n_jobs``). ``None``: the local pool. Results do not depend on it.
    connect_timeout : float
        Seconds allowed for connecting to ``scheduler``.
    device : str
        Where edge selection and degrees run, as torch operations: ``cpu``, ``cuda``, ``cuda:N`` or
        ``auto`` (cuda when available, else cpu). Fits and community detection stay on the CPU.
        Results do not depend on it.
    nonfinite : {"error", "flag"}
        A matrix with NaN/Inf: stop with an error naming the tensor, or flag it in the
        ``status`` column and go on.
    """

    graph: GraphConfig = field(default_factory=GraphConfig)
    fit: FitConfig = field(default_factory=FitConfig)
    modularity: ModularityConfig = field(default_factory=ModularityConfig)
    layers: tuple[int, ...] | None = None
    roles: tuple[str, ...] | None = None
    blocks_only: bool = False
    fits: bool = True
    matrix_modularity: bool = True
    block_modularity: bool = False
    model_modularity: bool = False
    include_embeddings: bool = False
    nonfinite: str = "error"
    n_jobs: int = -1
    pattern_size: int = 128
    scheduler: str | None = None
    connect_timeout: float = 10.0
    device: str = "cpu"

    def __post_init__(self):
        if self.nonfinite not in NONFINITE:
            raise ConfigError(f"nonfinite must be 'error' or 'flag', got {self.nonfinite!r}")
        if (not isinstance(self.n_jobs, int) or isinstance(self.n_jobs, bool)
                or not (1 <= self.n_jobs <= MAX_JOBS or self.n_jobs == -1)):
            raise ConfigError(f"n_jobs (--jobs) must be -1 (one per CPU) or 1 to {MAX_JOBS}, got {self.n_jobs!r}")
        if self.scheduler is not None:
            local_workers(self.scheduler)  # checks the address's form
        if not (isinstance(self.connect_timeout, (int, float)) and 0 < self.connect_timeout < math.inf):
            raise ConfigError(f"connect_timeout must be a positive number of seconds, got {self.connect_timeout!r}")
        if not (isinstance(self.device, str) and re.fullmatch(r"cpu|cuda|cuda:\d+|auto", self.device)):
            raise ConfigError(f"device (--device) must be one of {', '.join(DEVICES)}, got {self.device!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def results_settings(self) -> dict:
        """:meth:`to_dict` without where the work runs (``n_jobs``, ``scheduler``, ``connect_timeout``,
        ``device``), which gives the same results: what a resumed analysis must match, as JSON types."""
        out = {k: v for k, v in self.to_dict().items() if k not in PLACEMENT}
        return json.loads(json.dumps(out))


#: Settings that decide where an analysis runs, not what it finds.
PLACEMENT = ("n_jobs", "scheduler", "connect_timeout", "device")


def local_workers(scheduler: str) -> int | None:
    """The worker count of a ``local:N`` scheduler, ``None`` for an address; a malformed one is refused."""
    if not isinstance(scheduler, str) or not scheduler.strip() or any(c.isspace() for c in scheduler):
        raise ConfigError(f"scheduler (--scheduler) must be an address such as tcp://10.0.0.5:8786 or local:N, "
                          f"got {scheduler!r}")
    if not scheduler.startswith(LOCAL_SCHEDULER):
        return None
    n = scheduler[len(LOCAL_SCHEDULER):]
    if not (n.isdigit() and 1 <= int(n) <= MAX_JOBS):
        raise ConfigError(f"scheduler (--scheduler) {scheduler}: local:N needs N worker processes, 1 to {MAX_JOBS}")
    return int(n)


def resolve_device(device: str):
    """The ``torch.device`` that ``device`` (an :attr:`AnalysisConfig.device`) names on this machine.

    Raises
    ------
    ConfigError
        ``cuda`` or ``cuda:N`` without a CUDA device (or without device N), naming ``--device``.
    """
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        why = "this torch build has no CUDA support" if torch.version.cuda is None else "no CUDA device is visible"
        raise ConfigError(f"device (--device) {device}: {why}; use --device cpu or auto")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"device (--device) {device}: this machine has {torch.cuda.device_count()} CUDA "
                          f"device(s), numbered from 0")
    return torch.device("cuda", index)
