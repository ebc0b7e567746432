"""ssl_core: a pure-PyTorch library for self-supervised pretraining of image embedders.

Backbones, augmentations, methods (losses and the networks they train), the
training loop, evaluation (kNN, linear probe, label-free metrics), curation
algorithms and ONNX export. It imports torch, torchvision, numpy
and pillow only (onnx/onnxruntime lazily, for export), so it runs on a bare GPU
machine; the pipeline around it (DVC, Prefect, MLflow) lives in ``tasks/`` and
``flows/``.
"""

__version__ = "0.1.0"
