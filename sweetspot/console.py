"""What a run prints: every line once, and dependency noise only with ``verbose=true``.

A plain run shows sweetspot's own log lines (one per stage: computed or reused), one progress
bar per long stage (sampling; the training bar on a terminal; evaluation's answers) and the
closing summary. Three things used to add to that, and are handled here, before any dependency
is imported by the pipeline:

- Lightning logs through its own handler *and* propagates to the root logger that Hydra sets up,
  so each of its lines came twice. Its loggers stop propagating: each line is printed once (by
  Lightning's handler). Without ``verbose`` its INFO chatter (accelerator found, "tips", "fit
  stopped") is dropped; its warnings still show.
- Deprecation and future warnings of dependencies (``FutureWarning``, ``DeprecationWarning``),
  transformers' own log lines below ERROR and its weight-loading / shard-writing bars are
  silenced unless ``verbose``. Warnings raised in sweetspot's own modules always show.
- ``verbose=true`` shows all of it, once per line.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

# Loggers whose INFO lines are Lightning's status chatter (rank-zero messages).
LIGHTNING_CHATTER = (
    "lightning.pytorch.utilities.rank_zero",
    "lightning.fabric.utilities.rank_zero",
    "lightning.pytorch.accelerators.cuda",
)
NOISY_CATEGORIES = (DeprecationWarning, PendingDeprecationWarning, FutureWarning)


def configure(verbose: bool) -> None:
    """Set up the console for one run (call once, after Hydra configured logging)."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        if logger.handlers or name == "lightning":
            # Lightning prints with its own handler; the root (Hydra) must not print it again.
            logger.propagate = False
    if verbose:
        return
    for category in NOISY_CATEGORIES:
        warnings.filterwarnings("ignore", category=category)
        warnings.filterwarnings("default", category=category, module=r"sweetspot(\.|$)")
    for name in LIGHTNING_CHATTER:
        logging.getLogger(name).setLevel(logging.WARNING)
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_NO_ADVISORY_WARNINGS", "1")
    if "transformers" in sys.modules:  # already imported: its settings were read at import
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
        hf_logging.disable_progress_bar()
