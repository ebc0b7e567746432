"""Static int8 quantization of the exported embedder, with onnxruntime's own tools.

Static quantization (Jacob et al., "Quantization and Training of Neural Networks for
Efficient Integer-Arithmetic-Only Inference", 2018, https://arxiv.org/abs/1712.05877):
weights and activations become 8-bit integers with a scale and zero point each;
the activation ranges are measured once, by running the fp32 model on calibration
images, not per batch as dynamic quantization does. As onnxruntime recommends for
CPUs (https://onnxruntime.ai/docs/performance/model-optimizations/quantization.html):

- the fp32 graph is first pre-processed (``quant_pre_process``: shape inference and
  graph optimization, so the quantizer sees every tensor's shape);
- every Conv (BatchNorm is folded into it on export) and the residual Adds are
  quantized; the pooling and the final L2 normalization stay float32;
- QDQ format: ``QuantizeLinear``/``DequantizeLinear`` pairs around each quantized
  op, which the session fuses into integer kernels (``QLinearConv``, ...);
- int8 weights, one scale per output channel (per-channel: a ResNet's channels
  differ in range by orders of magnitude), uint8 activations (x86's VNNI
  instructions multiply uint8 by int8).

The input stays float32 and preprocessed as before, so a consumer cannot tell the
two models apart but by the ``quantization`` metadata entry; every other metadata
entry of the fp32 model (image size, normalization: serving's preprocessing) is
copied over.

Example:
    >>> quantize_int8(Path("model.fp32.onnx"), Path("model.onnx"), calibration_images)  # (N, 3, H, W)
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from ssl_core.onnx_format import INPUT_NAME

logger = logging.getLogger(__name__)

CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# The metadata entry that says how the weights are stored; absent in an fp32 export.
QUANTIZATION_KEY = "quantization"


class ImageBatches:
    """onnxruntime's ``CalibrationDataReader`` (it checks for ``get_next`` only) over (N, 3, H, W) images."""

    def __init__(self, images: np.ndarray, batch_size: int) -> None:
        self._batches: Iterator[np.ndarray] = iter(
            [images[start : start + batch_size] for start in range(0, len(images), batch_size)]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        batch = next(self._batches, None)
        return None if batch is None else {INPUT_NAME: np.ascontiguousarray(batch, dtype=np.float32)}


def quantize_int8(
    fp32_path: Path, out_path: Path, calibration: np.ndarray, method: str = "minmax", batch_size: int = 32
) -> Path:
    """Writes the statically int8-quantized model of ``fp32_path`` to ``out_path``.

    Args:
        fp32_path: an exported model (:func:`ssl_core.export.export_onnx`).
        out_path: where the int8 model goes (may not be ``fp32_path``).
        calibration: (N, 3, H, W) float32 preprocessed images; their activations set the ranges.
        method: how a range is drawn from the calibration activations, one of
            :data:`CALIBRATION_METHODS`: ``minmax`` (the extremes), ``percentile``
            (clips the top 0.001 %), ``entropy`` (the clip that keeps the
            distribution's KL divergence smallest).
        batch_size: calibration images per inference run.

    Raises:
        ValueError: on an unknown ``method``, no calibration image, or ``out_path == fp32_path``.
    """
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if method not in CALIBRATION_METHODS:
        raise ValueError(f"Unknown calibration method {method!r}; choose one of {', '.join(CALIBRATION_METHODS)}.")
    if len(calibration) == 0:
        raise ValueError("int8 calibration needs at least one image.")
    if Path(out_path).resolve() == Path(fp32_path).resolve():
        raise ValueError(f"The int8 model would overwrite its fp32 source {fp32_path}.")
    calibrate_method = {
        "minmax": CalibrationMethod.MinMax,
        "percentile": CalibrationMethod.Percentile,
        "entropy": CalibrationMethod.Entropy,
    }[method]
    out_path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="quantize-") as scratch:
        prepared = Path(scratch) / "prepared.onnx"
        # ONNX's own shape inference and the graph optimizations, but not onnxruntime's symbolic shape
        # inference: it fails on the Expand of the dynamo-exported L2 normalization, and exists for
        # dynamic shapes inside transformers; here only the batch axis is dynamic.
        quant_pre_process(str(fp32_path), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(out_path),
            ImageBatches(calibration, batch_size),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=calibrate_method,
        )
    # Serving takes its preprocessing from the metadata. onnxruntime's tools copy it today (and add their own
    # entries); this keeps the fp32 entries whatever a later version does, then says what changed.
    proto = onnx.load(str(out_path))
    props = {p.key: p.value for p in proto.metadata_props}
    props.update({p.key: p.value for p in onnx.load(str(fp32_path), load_external_data=False).metadata_props})
    props[QUANTIZATION_KEY] = (
        f"int8 static (onnxruntime {_ort_version()}): QDQ, per-channel int8 weights, uint8 activations, "
        f"{method} calibration on {len(calibration)} images"
    )
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(out_path))
    logger.info("int8 model %s: %s.", out_path, props[QUANTIZATION_KEY])
    return out_path


def quantized_ops(path: Path) -> dict[str, int]:
    """How many nodes of each op type compute on int8 weights: those fed by a ``DequantizeLinear`` of an int8 tensor.

    An op missing here (a pooling, the final L2 normalization) runs in float32.
    """
    import onnx

    graph = onnx.load(str(path), load_external_data=False).graph
    int8 = {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.INT8}
    dequantized_weights = {
        node.output[0] for node in graph.node if node.op_type == "DequantizeLinear" and node.input[0] in int8
    }
    return dict(Counter(node.op_type for node in graph.node if dequantized_weights.intersection(node.input)))


def throughput(
    models: dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray, rounds: int = 5, runs_per_round: int = 3
) -> dict[str, float]:
    """Images per second of each model (a function of a (B, 3, H, W) batch) on ``batch``, the best of ``rounds``.

    The models take turns, round after round, so a neighbour's load on a shared
    machine hits all of them alike; the best round is each one's speed when it had
    the cores, the least noisy estimate.
    """
    for model in models.values():  # the first run allocates and picks kernels
        model(batch)
    best = dict.fromkeys(models, 0.0)
    for _ in range(rounds):
        for name, model in models.items():
            start = time.perf_counter()
            for _ in range(runs_per_round):
                model(batch)
            best[name] = max(best[name], runs_per_round * len(batch) / (time.perf_counter() - start))
    return best


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
