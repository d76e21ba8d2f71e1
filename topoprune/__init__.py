"""topoprune: Transformers as networks -- weight graphs, degree distributions, power-law fits,
modularity, and topology-driven sparse training.

>>> import topoprune
>>> df = topoprune.analyze("path/to/model", density=0.1)    # doctest: +SKIP
>>> topoprune.summarize(df)                                   # doctest: +SKIP
"""
__version__ = "0.1.0"

from .analysis import Report, analyze, analyze_report, summarize  # noqa: E402
from .errors import CheckpointError, ConfigError, TensorError, TopopruneError  # noqa: E402

__all__ = ["analyze", "analyze_report", "summarize", "Report", "TopopruneError", "CheckpointError", "ConfigError", "TensorError",
           "__version__"]
