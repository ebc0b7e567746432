"""Stage 2, curate: duplicates, leaks, quality problems, outliers, selection, and the report.

``main`` is the stage's CLI entry, here so that ``scripts/dvc_deps.py`` sees which
params it reads; :func:`tasks.curate.stage.run` does the work. The other modules are
its parts: ``findings`` (the checks and what to drop), ``embedder`` (``curate.embedder``
resolved to a model file), ``report_page`` (report.html).
"""

from __future__ import annotations

import argparse

from tasks.curate.stage import CurationError, run
from tasks.params import Params

__all__ = ["CurationError", "main", "run"]


def main(params: Params, args: argparse.Namespace) -> None:
    run(params.curate, params.data.train_split, params.data.test_split, args.data, args.out)
