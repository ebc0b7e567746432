"""``sslpipe``: every pipeline stage from the command line, without DVC or Prefect.

    sslpipe run                      # the whole chain, params.yaml in this folder
    sslpipe run --set pretrain.epochs=1
    sslpipe ingest --out data/ingested
    sslpipe serve --model models:/ssl-embedder@champion

dvc.yaml calls the same subcommands, one per stage, so the three entry points
(CLI, DVC, Prefect) run identical code.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from tasks import layout
from tasks.params import Params, ParamsError, load_params

logger = logging.getLogger("sslpipe")

STAGES = ("ingest", "teacher", "pretrain", "evaluate", "export", "register")


def stage_ingest(params: Params, args: argparse.Namespace) -> Any:
    from tasks import ingest

    return ingest.run(params.ingest, args.out)


def stage_teacher(params: Params, args: argparse.Namespace) -> Any:
    from tasks import teacher

    return teacher.run(params, args.data, args.out, args.checkpoints)


def stage_pretrain(params: Params, args: argparse.Namespace) -> Any:
    from ssl_core.methods import TEACHER_METHODS
    from tasks import pretrain, teacher

    frozen_teacher = teacher.load(args.teacher) if params.pretrain.method in TEACHER_METHODS else None
    return pretrain.run(params.pretrain, params.data, args.data, args.out, args.checkpoints, frozen_teacher)


def stage_evaluate(params: Params, args: argparse.Namespace) -> Any:
    from tasks import evaluate

    return evaluate.run(params.evaluate, params.data, args.data, args.model, args.out)


def stage_export(params: Params, args: argparse.Namespace) -> Any:
    from tasks import export

    return export.run(params.export, params.data, args.data, args.model, args.out)


def stage_register(params: Params, args: argparse.Namespace) -> Any:
    from tasks import registry

    return registry.run(params, args.data, args.model, args.evaluation, args.onnx, args.out)


def stage_serve(params: Params, args: argparse.Namespace) -> Any:
    from tasks.serve import serve

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    model = args.model or f"models:/{params.registry.model_name}@champion"
    serve(model, params.serve.model_copy(update=overrides), args.cache)


def stage_run(params: Params, args: argparse.Namespace) -> Any:
    """The whole chain in this process, with the default layout."""
    namespace = argparse.Namespace(
        data=layout.INGESTED, teacher=layout.TEACHER, model=layout.STUDENT, evaluation=layout.EVALUATION,
        onnx=layout.ONNX_DIR,
    )
    steps: list[tuple[str, Callable, dict]] = [
        ("ingest", stage_ingest, {"out": layout.INGESTED}),
        ("teacher", stage_teacher, {"out": layout.TEACHER, "checkpoints": layout.TEACHER_CHECKPOINTS}),
        ("pretrain", stage_pretrain, {"out": layout.STUDENT, "checkpoints": layout.STUDENT_CHECKPOINTS}),
        ("evaluate", stage_evaluate, {"out": layout.EVALUATION}),
        ("export", stage_export, {"out": layout.ONNX_DIR}),
        ("register", stage_register, {"out": layout.REGISTRATION}),
    ]
    started = time.perf_counter()
    for name, function, extra in steps:
        stage_started = time.perf_counter()
        logger.info("== %s ==", name)
        function(params, argparse.Namespace(**{**vars(namespace), **extra}))
        logger.info("%s done in %.0f s", name, time.perf_counter() - stage_started)
    print_summary(time.perf_counter() - started)


def print_summary(seconds: float | None = None) -> None:
    """Where the model, metrics and MLflow UI are (read from the stage outputs)."""
    from tasks.mlflow_setup import tracking_uri

    metrics = json.loads((layout.EVALUATION / "metrics.json").read_text())
    registration = json.loads(layout.REGISTRATION.read_text())
    lines = [
        "",
        f"Pipeline finished{f' in {seconds / 60:.1f} min' if seconds else ''}.",
        f"  kNN top-1 (k={metrics['k']}): pretrained {metrics['student']['top1']:.4f}, "
        f"random init {metrics['random_init']['top1']:.4f} (gain {metrics['gain_top1']:+.4f})",
        f"  PyTorch model : {layout.STUDENT / layout.MODEL_FILE}",
        f"  ONNX model    : {layout.ONNX_DIR / layout.ONNX_FILE}",
        f"  metrics       : {layout.EVALUATION / 'metrics.json'} (plot: {layout.EVALUATION / 'knn.png'})",
        f"  MLflow model  : models:/{registration['model_name']}/{registration['version']} "
        f"aliases {registration['aliases']}",
        f"  MLflow UI     : mlflow ui --backend-store-uri {tracking_uri()}  (then open http://127.0.0.1:5000)",
        f"  serve         : sslpipe serve --model models:/{registration['model_name']}@champion",
    ]
    print("\n".join(lines))


def _add_paths(parser: argparse.ArgumentParser, **paths: tuple[Path, str]) -> None:
    for name, (default, help_text) in paths.items():
        parser.add_argument(f"--{name}", type=Path, default=default, help=f"{help_text} (default: {default})")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslpipe",
        description="Self-supervised pretraining pipeline: raw images -> registered, served ONNX embedding model.",
        epilog="Every stage reads params.yaml; see README.md for the keys.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", type=Path, default=layout.PARAMS, help="params file (default: params.yaml)")
    common.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a param for this run only, e.g. --set pretrain.epochs=1 (repeatable; "
                             "DVC does not see overrides, so prefer editing params.yaml for tracked runs)")
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("ingest", parents=[common], help="decode and catalogue the images of ingest.source")
    _add_paths(p, out=(layout.INGESTED, "output folder: images/, manifest.csv, ingest_report.json"))
    p.set_defaults(handler=stage_ingest)

    p = sub.add_parser("teacher", parents=[common], help="prepare the distillation teacher (teacher.source)")
    _add_paths(p, data=(layout.INGESTED, "ingested dataset"), out=(layout.TEACHER, "teacher folder"),
               checkpoints=(layout.TEACHER_CHECKPOINTS, "epoch checkpoints, kept for resume"))
    p.set_defaults(handler=stage_teacher)

    p = sub.add_parser("pretrain", parents=[common], help="self-supervised pretraining of the student (pretrain.*)")
    _add_paths(p, data=(layout.INGESTED, "ingested dataset"), teacher=(layout.TEACHER, "prepared teacher folder"),
               out=(layout.STUDENT, "model folder: model.pt, history.json, training.png"),
               checkpoints=(layout.STUDENT_CHECKPOINTS, "epoch checkpoints, kept for resume"))
    p.set_defaults(handler=stage_pretrain)

    p = sub.add_parser("evaluate", parents=[common], help="kNN accuracy of the student and of a random-init baseline")
    _add_paths(p, data=(layout.INGESTED, "ingested dataset"), model=(layout.STUDENT, "model folder"),
               out=(layout.EVALUATION, "metrics.json, per_class.json, knn.png"))
    p.set_defaults(handler=stage_evaluate)

    p = sub.add_parser("export", parents=[common], help="export the student to ONNX and check it against PyTorch")
    _add_paths(p, data=(layout.INGESTED, "ingested dataset (check images)"), model=(layout.STUDENT, "model folder"),
               out=(layout.ONNX_DIR, "model.onnx, export_report.json"))
    p.set_defaults(handler=stage_export)

    p = sub.add_parser("register", parents=[common], help="log to MLflow, register the ONNX model, set aliases")
    _add_paths(p, data=(layout.INGESTED, "ingested dataset"), model=(layout.STUDENT, "model folder"),
               evaluation=(layout.EVALUATION, "evaluation folder"), onnx=(layout.ONNX_DIR, "ONNX folder"),
               out=(layout.REGISTRATION, "registration summary"))
    p.set_defaults(handler=stage_register)

    p = sub.add_parser("serve", parents=[common], help="serve embeddings over HTTP from an ONNX model")
    p.add_argument("--model", default=None,
                   help="ONNX file or MLflow URI models:/<name>@<alias> "
                        "(default: models:/<register.model_name>@champion)")
    p.add_argument("--host", default=None, help="bind address (default: serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: serve.port, 8000)")
    _add_paths(p, cache=(Path("models/serving"), "where registry models are downloaded"))
    p.set_defaults(handler=stage_serve)

    p = sub.add_parser("run", parents=[common], help="run every stage in order (no DVC, no Prefect)")
    p.set_defaults(handler=stage_run)

    p = sub.add_parser("summary", parents=[common], help="print where the model, metrics and MLflow UI are")
    p.add_argument("--seconds", type=float, default=None, help="pipeline wall time to report")
    p.set_defaults(handler=lambda params, args: print_summary(args.seconds))
    return parser


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ParamsError(f"--set {item!r}: expected KEY=VALUE, e.g. pretrain.epochs=1")
        overrides[key.strip()] = yaml.safe_load(value)
    return overrides


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for chatty in ("onnxscript", "onnx_ir", "alembic"):  # per-pass INFO lines drown the pipeline's own
        logging.getLogger(chatty).setLevel(logging.WARNING)
    from tasks.errors import USER_ERRORS

    try:
        params = load_params(args.params, parse_overrides(args.overrides))
        args.handler(params, args)
    except USER_ERRORS as error:
        # Expected failures get one line that says what to do, not a traceback.
        print(f"sslpipe {args.command}: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
