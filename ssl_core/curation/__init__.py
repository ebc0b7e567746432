"""Curation algorithms: pixel hashes, quality scores, neighbour search, selection.

numpy, PIL and torch (faiss and scikit-learn imported lazily where used); the
``curate`` stage (:mod:`tasks.curate`) wires them to a manifest and writes the report.
"""
