"""Batch embedding: every image of a folder, archive or ingested dataset -> one file of embeddings.

    sslpipe embed --data data/ingested --out embeddings.parquet       # models:/<register.model_name>@champion
    sslpipe embed --model models/onnx/model.onnx --data photos.tar.gz --out photos.npy
    python -m flows.embed --data /data/photos --out photos.parquet --cron "0 3 * * *"   # on a schedule

Each image is decoded and preprocessed as ``sslpipe serve`` does
(:func:`ssl_core.image_decode.decode_image`, :func:`ssl_core.onnx_embedder.preprocess`),
so a vector here equals the server's for the same file. ``--data`` is a folder
(``[split/]class/image``, labels and splits as the ingest stage reads them), a
``.tar``/``.tar.gz``/``.tgz``/``.zip`` archive of one, or a folder with a
``manifest.csv`` (an ingested or curated dataset). Memory does not grow with the
number of images (:mod:`tasks.embed.sources` streams, :mod:`tasks.embed.writers`
appends); what cannot be decoded or safely read is skipped and listed with its
reason in ``<out>.report.json`` (:class:`EmbedReport`).
"""

from tasks.embed.job import (
    EmbeddingModel,
    EmbedError,
    EmbedReport,
    embed_dataset,
    main,
    report_path,
    resolve_model,
    run,
)
from tasks.embed.sources import SourceError, SourceImage
from tasks.embed.writers import NpyEmbeddingWriter, ParquetEmbeddingWriter

__all__ = [
    "EmbedError",
    "EmbedReport",
    "EmbeddingModel",
    "NpyEmbeddingWriter",
    "ParquetEmbeddingWriter",
    "SourceError",
    "SourceImage",
    "embed_dataset",
    "main",
    "report_path",
    "resolve_model",
    "run",
]
