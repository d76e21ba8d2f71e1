"""Every setting of a one-shot run, and every default: the pruning (:class:`OneShotConfig`) and its
evaluation (:class:`EvalConfig`).

The CLI (``topoprune oneshot``) takes its defaults and choices from here. Where the NeuroAL paper
(Cunegatti, Custode & Iacca, TMLR 2025, arXiv 2411.07066) is silent or where we differ from its
authors' code, the choice is a parameter; :data:`SETTINGS` names the two sets of those choices
and :data:`DEFAULT_SETTING` says which one the defaults are (see :mod:`topoprune.oneshot.prune`).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import allocation as al
from ..errors import ConfigError

#: Base pruners: the score that decides *what* is pruned.
PRUNERS = ("magnitude", "wanda")
#: Allocations: *how much* is pruned where.
ALLOCATIONS = ("uniform", "owl", "neuroal")
#: NeuroAL's steps, comparison groups, and the choices where the NeuroAL paper is silent.
NEUROAL_STEPS = ("both", "block", "row")
GROUPS = ("auto", "row", "layer")
GQA_ROWS = ("mean", "block")
DOWN_ROWS = ("block_output", "next_input")
#: Named settings of the knobs where our NeuroAL differs from its authors' code (:meth:`OneShotConfig.preset`).
SETTINGS = {"topoprune": {"down_rows": "block_output", "group": "auto", "rebalance": True},
            "authors": {"down_rows": "next_input", "group": "row", "rebalance": False}}
#: The setting of :class:`OneShotConfig`'s defaults, the one with the lower held-out perplexity:
#: Wanda + NeuroAL on SmolLM2-135M, PTB validation, authors' / ours 103.5 / 102.4 at 50 %, 189.5 /
#: 198.5 at 60 %, 563.5 / 561.7 at 70 %: 1.1 % lower in geometric mean (``analysis/bench_oneshot.py``).
DEFAULT_SETTING = "authors"
#: Where ``topoprune oneshot`` writes its run when no ``--out`` is given.
OUT = "topoprune-oneshot"


@dataclass(frozen=True)
class OneShotConfig:
    """Settings of a one-shot pruning run.

    Parameters
    ----------
    method : {"magnitude", "wanda"}
        Base pruner's score.
    sparsity : float
        Target share of pruned weights over all block linear layers, in (0, 1).
    allocation : {"uniform", "owl", "neuroal"}
    neuroal_steps : {"both", "block", "row"}
        NeuroAL steps ("both" is the paper's setting; "row" starts from uniform blocks).
    group : {"auto", "row", "layer"}
        Comparison group of uniform-per-layer masks ("auto": layer for magnitude, row for Wanda).
    block_grid, row_grid : tuple of float, optional
        λ grids (default: the paper's, :data:`topoprune.oneshot.allocation.BLOCK_GRID` / ``ROW_GRID``).
    owl_m, owl_lambda : float
        OWL's outlier threshold M (5) and band half-width λ (0.08).
    clip : (float, float)
        Bounds of every allocated sparsity (0.01, 0.99).
    rebalance : bool
        Shift clipped allocations back onto the target (exact global sparsity).
    gqa_rows : {"mean", "block"}
        Row step for k/v under grouped-query attention: head-averaged drop, or block ratio.
    down_rows : {"block_output", "next_input"}
        Drop credited to the rows of the MLP's output projection: measured on the block's
        output (the residual features those rows write), or, as in the paper's code, at the next
        block's first layer -- whose input is the same in the dense and the sparse run of that
        block, so the drop is zero and the rows keep the block ratio.
    calibration : str
        ``ptb`` (Penn Treebank train) or a text file.
    n_calibration, n_search, seq_len, seed, batch_size : int
        Calibration windows for the final pass / the λ search, their length, sampling seed and
        the number of windows per forward pass.
    """

    method: str = "wanda"
    sparsity: float = 0.5
    allocation: str = "neuroal"
    neuroal_steps: str = "both"
    group: str = SETTINGS[DEFAULT_SETTING]["group"]
    block_grid: tuple[float, ...] | None = None
    row_grid: tuple[float, ...] = al.ROW_GRID
    owl_m: float = 5.0
    owl_lambda: float = 0.08
    clip: tuple[float, float] = (0.01, 0.99)
    rebalance: bool = SETTINGS[DEFAULT_SETTING]["rebalance"]
    gqa_rows: str = "mean"
    down_rows: str = SETTINGS[DEFAULT_SETTING]["down_rows"]
    calibration: str = "ptb"
    n_calibration: int = 64
    n_search: int = 8
    seq_len: int = 512
    seed: int = 0
    batch_size: int = 8

    def __post_init__(self):
        al.check_sparsity(self.sparsity)
        for name, value, allowed in (("method", self.method, PRUNERS), ("allocation", self.allocation, ALLOCATIONS),
                                     ("neuroal_steps", self.neuroal_steps, NEUROAL_STEPS), ("group", self.group, GROUPS),
                                     ("gqa_rows", self.gqa_rows, GQA_ROWS), ("down_rows", self.down_rows, DOWN_ROWS)):
            if value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}")
        lo, hi = self.clip
        if not 0.0 <= lo < hi <= 1.0 or not lo <= self.sparsity <= hi:
            raise ConfigError(f"clip bounds must satisfy 0 <= lo < hi <= 1 and lo <= sparsity <= hi, got {self.clip}")
        grids = [("row_grid", self.row_grid)] + ([("block_grid", self.block_grid)] if self.block_grid else [])
        for name, grid in grids:
            if not grid or any(not isinstance(v, (int, float)) or not 0 <= v < 1 for v in grid):
                raise ConfigError(f"{name} must be non-empty values in [0, 1), got {grid!r}")
        for name in ("n_calibration", "n_search", "seq_len", "batch_size"):
            if getattr(self, name) < (2 if name == "seq_len" else 1):
                raise ConfigError(f"{name} must be >= {2 if name == 'seq_len' else 1}, got {getattr(self, name)}")
        if self.owl_m <= 0 or self.owl_lambda < 0:
            raise ConfigError(f"owl_m must be > 0 and owl_lambda >= 0, got {self.owl_m}, {self.owl_lambda}")

    @classmethod
    def preset(cls, setting: str = DEFAULT_SETTING, **knobs) -> "OneShotConfig":
        """A config with the knobs of the named ``setting``; explicit ``knobs`` (other than ``None``) win.

        Parameters
        ----------
        setting : {"topoprune", "authors"}
            ``"topoprune"``: ``down_rows="block_output"``, ``group="auto"``, ``rebalance=True``;
            ``"authors"`` (:data:`DEFAULT_SETTING`, the defaults of this class): NeuroAL as its
            authors' code runs it (``down_rows="next_input"``, ``group="row"``, ``rebalance=False``).
        **knobs
            Any other field of :class:`OneShotConfig`; ``None`` means "from the setting" (or the
            field's default).

        Raises
        ------
        ConfigError
            An unknown setting, or a bad value of any field.
        """
        if setting not in SETTINGS:
            raise ConfigError(f"setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
        return cls(**{**SETTINGS[setting], **{k: v for k, v in knobs.items() if v is not None}})

    @property
    def setting(self) -> str:
        """The name of the :data:`SETTINGS` entry these knobs match, else ``"custom"``."""
        return next((name for name, knobs in SETTINGS.items()
                     if all(getattr(self, k) == v for k, v in knobs.items())), "custom")

    @property
    def blocks_grid(self) -> tuple[float, ...]:
        return tuple(self.block_grid) if self.block_grid else al.block_grid(self.sparsity)

    @property
    def comparison(self) -> str:
        return ("layer" if self.method == "magnitude" else "row") if self.group == "auto" else self.group


@dataclass(frozen=True)
class EvalConfig:
    """How a one-shot run is evaluated and reported (the pruning itself is :class:`OneShotConfig`).

    Parameters
    ----------
    eval_tokens : int or None
        Penn Treebank test tokens for perplexity (``0``: the whole test set; ``None``: no
        evaluation). The default keeps a CPU run to seconds on SmolLM2.
    window, stride : int
        Perplexity windows (see :func:`topoprune.oneshot.calibration.perplexity`; stride
        ``None``: non-overlapping windows, the Wanda/SparseGPT protocol).
    analyze, fits, modularity : bool
        Topology reports of the dense and the pruned model (with power-law fits, with Leiden
        modularity of every matrix: slow on a 135 M model, off by default).
    """

    eval_tokens: int | None = 16384
    window: int = 512
    stride: int | None = None
    analyze: bool = True
    fits: bool = True
    modularity: bool = False

    def __post_init__(self):
        if self.eval_tokens is not None and self.eval_tokens < 0:
            raise ConfigError(f"eval_tokens must be >= 0, got {self.eval_tokens}")
        if self.eval_tokens is not None and (self.window < 2 or not 0 < (self.stride or self.window) <= self.window):
            raise ConfigError(f"perplexity needs window >= 2 and 0 < stride <= window, got {self.window}, "
                              f"{self.stride}")
