"""Stage 4, evaluate: how good the student's embeddings are, with labels or without.

Always, label-free (:mod:`ssl_core.label_free`), for the student and a random-init
baseline: RankMe (Garrido et al. 2023), alignment and uniformity (Wang & Isola
2020), and the collapse flag of training. Where images have labels, even only a few
(:mod:`tasks.labeled_split`): kNN as in the lightly benchmarks (k=200, t=0.1)
and a linear probe (logistic regression on the frozen embeddings). Writes
``metrics.json`` (DVC metrics), ``per_class.json`` and ``evaluation.png``.

``main`` is the stage's CLI entry, here so that ``scripts/dvc_deps.py`` sees which
params it reads; :func:`tasks.evaluate.stage.run` does the work, ``labeled`` picks
the kNN bank and queries, ``plots`` draws the figure.
"""

from __future__ import annotations

import argparse

from tasks.evaluate.stage import EvaluationError, leaked_test_paths, run
from tasks.layout import CURATION_REPORT
from tasks.params import Params

__all__ = ["CURATION_REPORT", "EvaluationError", "leaked_test_paths", "main", "run"]


def main(params: Params, args: argparse.Namespace) -> None:
    run(params.evaluate, params.data.train_split, params.data.test_split, args.data, args.model, args.out)
