"""``sslpipe``: every pipeline stage from the command line, without DVC or Prefect.

    sslpipe run                      # the whole chain, params.yaml in this folder
    sslpipe run --set pretrain.epochs=1
    sslpipe ingest --out data/ingested
    sslpipe serve --model models:/ssl-embedder@champion

One subcommand per stage of :data:`tasks.stages.STAGES`; dvc.yaml calls the same
subcommands, so the three entry points (CLI, DVC, Prefect) run identical code.
This module imports no stage, torch or mlflow: a stage's module is imported when
it runs, so ``--help`` and a params error answer at once.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from tasks import layout
from tasks.errors import USER_ERROR_EXIT_STATUS, UserError
from tasks.params import Params, ParamsError, load_params
from tasks.stages import STAGE_NAMES, STAGES, Stage, producer_of

logger = logging.getLogger("sslpipe")


class MissingInputError(UserError):
    """A stage's input does not exist yet: the message names the stage to run first."""


def run_stage(stage: Stage, params: Params, args: argparse.Namespace) -> None:
    """Checks that the stage's inputs exist, then runs its module's ``main``."""
    for option in stage.inputs:
        required = option.required_under(Path(getattr(args, option.name)))
        if not required.exists():
            producer = producer_of(option.default)
            hint = f"run `sslpipe {producer.name}` first" if producer else "create it"
            raise MissingInputError(f"{required} not found: {hint}, or pass --{option.name}.")
    importlib.import_module(stage.module).main(params, args)


def run_all(params: Params, args: argparse.Namespace) -> None:
    """The whole chain in this process, with the default layout."""
    from ssl_core.precision import resolve_device
    from tasks.precision import check_precision
    from tasks.pretrain import check_training

    # The checks that need torch, before the first stage does any work.
    check_training(params.teacher, "teacher")
    check_training(params.pretrain, "pretrain")
    for section, settings in (("curate", params.curate), ("evaluate", params.evaluate)):
        check_precision(section, settings.precision, resolve_device(settings.device))
    started = time.perf_counter()
    for stage in STAGES:
        stage_started = time.perf_counter()
        logger.info("== %s ==", stage.name)
        run_stage(stage, params, argparse.Namespace(**{o.name: o.default for o in stage.options}))
        logger.info("%s done in %.0f s", stage.name, time.perf_counter() - stage_started)
    print_summary(time.perf_counter() - started)


def serve(params: Params, args: argparse.Namespace) -> None:
    from tasks.serve import serve as serve_model

    overrides = {k: v for k, v in {"host": args.host, "port": args.port}.items() if v is not None}
    model = args.model or f"models:/{params.registry.model_name}@champion"
    serve_model(model, params.serve.model_copy(update=overrides), args.cache)


def embed(params: Params, args: argparse.Namespace) -> None:
    """Embeds a dataset into a file (imports onnxruntime and pyarrow only now)."""
    from tasks.embed import main as embed_main

    embed_main(params, args)


def schedule(params: Params, args: argparse.Namespace) -> None:
    """Serves the pipeline as a scheduled Prefect deployment (imports Prefect only now)."""
    from flows.schedule import schedule_pipeline

    schedule_pipeline(
        args.project_dir, args.cron, args.interval, args.timezone, args.name, args.stages, args.retry_backoff
    )


class ProjectDir(argparse.Action):
    """``--project-dir``: also the params file that ``main`` checks before scheduling, the project's own."""

    def __call__(self, parser, namespace, value, option_string=None) -> None:
        namespace.project_dir = value
        namespace.params = value / layout.PARAMS


def mlflow_ui(registration: dict) -> str:
    """Where to see the registered version: its page on a tracking server, or how to open a local store."""
    # Imported here: `run` and `summary` need it, no stage does (their DVC deps stay as they are).
    from tasks.mlflow_setup import local_ui_command, web_links

    links = web_links(registration)
    if links:
        return links["mlflow-model-version"]
    return f"{local_ui_command(registration['tracking_uri'])}  (then open http://127.0.0.1:5000)"


def print_summary(seconds: float | None = None) -> None:
    """Where the model, metrics and MLflow UI are (read from the stage outputs)."""
    metrics = json.loads((layout.EVALUATION / layout.METRICS_FILE).read_text())
    registration = json.loads(layout.REGISTRATION.read_text())
    student, baseline = metrics["student"], metrics["random_init"]
    if "top1" in student:
        quality = (
            f"  kNN top-1 (k={metrics['k']}, {metrics['num_queries']} labeled queries): pretrained "
            f"{student['top1']:.4f}, random init {baseline['top1']:.4f} (gain {metrics['gain_top1']:+.4f})"
        )
    else:
        quality = f"  no labeled images: label-free metrics only ({metrics['labels']['skipped']})"
    lines = [
        "",
        f"Pipeline finished{f' in {seconds / 60:.1f} min' if seconds else ''}.",
        quality,
        f"  RankMe        : pretrained {student['rankme']:.1f}, random init {baseline['rankme']:.1f} (higher: richer)",
        f"  PyTorch model : {layout.STUDENT / layout.MODEL_FILE}",
        f"  ONNX model    : {layout.ONNX_DIR / layout.ONNX_FILE}",
        f"  metrics       : {layout.EVALUATION / layout.METRICS_FILE} "
        f"(plot: {layout.EVALUATION / layout.EVALUATION_PLOT})",
        f"  MLflow model  : models:/{registration['model_name']}/{registration['version']} "
        f"aliases {registration['aliases']}; {registration['reason']}",
        f"  MLflow UI     : {mlflow_ui(registration)}",
        f"  serve         : sslpipe serve --model models:/{registration['model_name']}@champion",
    ]
    print("\n".join(lines))


def add_schedule_arguments(parser: argparse.ArgumentParser, *, required: bool, cron_example: str) -> None:
    """``--cron`` or ``--interval``, and ``--timezone``: when a served Prefect deployment runs.

    Shared by ``sslpipe schedule`` (and ``python -m flows.schedule``, the same command)
    and ``python -m flows.embed``; ``required=False`` means "run once now" without either.
    """
    when = parser.add_mutually_exclusive_group(required=required)
    once = "" if required else " (default: run once now)"
    when.add_argument("--cron", help=f"cron expression, e.g. {cron_example}{once}")
    when.add_argument("--interval", type=float, metavar="SECONDS", help="seconds between runs")
    parser.add_argument("--timezone", default=None, help="IANA timezone of the cron expression (default: UTC)")


def add_model_cache_argument(parser: argparse.ArgumentParser) -> None:
    """``--cache``: where the commands that load a registry model (serve, embed) download it."""
    parser.add_argument(
        "--cache",
        type=Path,
        default=layout.SERVING_CACHE,
        help=f"where registry models are downloaded (default: {layout.SERVING_CACHE})",
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sslpipe",
        description="Self-supervised pretraining pipeline: raw images -> registered, served ONNX embedding model.",
        epilog="Every stage reads params.yaml; see README.md for the keys.",
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--params", type=Path, default=layout.PARAMS, help="params file (default: params.yaml)")
    common.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a param for this run only, e.g. --set pretrain.epochs=1 (repeatable; "
        "DVC does not see overrides, so prefer editing params.yaml for tracked runs)",
    )
    common.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    for stage in STAGES:
        p = sub.add_parser(stage.name, parents=[common], help=stage.help)
        for option in stage.options:
            p.add_argument(
                f"--{option.name}", type=Path, default=option.default, help=f"{option.help} (default: {option.default})"
            )
        p.set_defaults(handler=lambda params, args, stage=stage: run_stage(stage, params, args))

    p = sub.add_parser(
        "serve",
        parents=[common],
        help="serve embeddings over HTTP from an ONNX model",
        description="POST /embed (multipart files or JSON base64 images, batched across requests), GET /health/live, "
        "/health/ready, /info, /metrics (Prometheus). Settings: the serve section of params.yaml, e.g. "
        "--set serve.max_batch_size=64. A models:/<name>@<alias> model is followed when the alias moves "
        "(serve.alias_poll_seconds).",
    )
    p.add_argument(
        "--model",
        default=None,
        help="ONNX file or MLflow URI models:/<name>@<alias> (default: models:/<register.model_name>@champion)",
    )
    p.add_argument("--host", default=None, help="bind address (default: serve.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: serve.port, 8000)")
    add_model_cache_argument(p)
    p.set_defaults(handler=serve)

    p = sub.add_parser(
        "embed",
        parents=[common],
        help="embed every image of a folder, archive or ingested dataset into a Parquet or .npy file",
        description="Embed every image of --data with the served model's preprocessing into --out: .parquet "
        "(path, label, split, embedding) or .npy (+ a .csv of path, label, split per row). Undecodable files are "
        "skipped and listed in <out>.report.json. On a schedule: python -m flows.embed --help.",
    )
    p.add_argument(
        "--model",
        default=None,
        help="ONNX file or MLflow URI models:/<name>@<alias> (default: models:/<register.model_name>@champion)",
    )
    p.add_argument(
        "--data",
        type=Path,
        required=True,
        help="image folder ([split/]class/image or flat), .tar/.tar.gz/.tgz/.zip archive, or a folder with a "
        "manifest.csv (sslpipe ingest's or curate's output)",
    )
    p.add_argument("--out", type=Path, required=True, help="output file: .parquet, or .npy (+ .csv beside it)")
    # Defaults None: tasks.embed holds them (importing it here would load pyarrow and onnx for --help).
    p.add_argument("--batch-size", type=int, default=None, help="images per model run (default: 64)")
    p.add_argument(
        "--workers", type=int, default=None, help="threads decoding images while the model runs (default: 2; 0: none)"
    )
    p.add_argument("--overwrite", action="store_true", help="replace --out (and its .csv) if it exists")
    add_model_cache_argument(p)
    p.set_defaults(handler=embed)

    # Not `serve`, which serves the model: this serves the pipeline on a schedule (flows/schedule.py).
    p = sub.add_parser(
        "schedule",
        help="run the pipeline on a schedule: a Prefect deployment served by this process (needs PREFECT_API_URL)",
        description="Serve the pipeline as the Prefect deployment ssl-pipeline/NAME, run by the cron expression or "
        "interval, until Ctrl-C (which pauses the schedule). Needs a Prefect server: `prefect server start`, then "
        "`export PREFECT_API_URL=http://127.0.0.1:4200/api`.",
    )
    add_schedule_arguments(p, required=True, cron_example="'0 2 * * *' for 02:00 every day")
    p.add_argument(
        "--project-dir",
        type=Path,
        action=ProjectDir,
        default=Path.cwd(),
        help="the DVC project to run; its params.yaml is checked now (default: this folder)",
    )
    p.add_argument("--name", default=None, help="deployment name (default: the project folder's name)")
    p.add_argument(
        "--stages", nargs="+", choices=STAGE_NAMES, metavar="STAGE", help=f"subset of {STAGE_NAMES} (default: all)"
    )
    p.add_argument(
        "--retry-backoff",
        type=float,
        metavar="SECONDS",
        help="seconds before the first retry of a stage that may fail transiently (default: the flow's)",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.set_defaults(handler=schedule, params=layout.PARAMS, overrides=[])

    p = sub.add_parser("run", parents=[common], help="run every stage in order (no DVC, no Prefect)")
    p.set_defaults(handler=run_all)

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


def configure_logging(level: int, process: str = "") -> None:
    """The pipeline's log lines, from ``level`` up; ``process`` tags each line (a training process's rank)."""
    tag = f"[{process}] " if process else ""
    logging.basicConfig(level=level, format=f"%(asctime)s %(levelname)s {tag}%(name)s: %(message)s", datefmt="%H:%M:%S")
    for chatty in ("onnxscript", "onnx_ir", "alembic"):  # per-pass INFO lines drown the pipeline's own
        logging.getLogger(chatty).setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    configure_logging(logging.DEBUG if args.verbose else logging.INFO)
    try:
        params = load_params(args.params, parse_overrides(args.overrides))
        args.handler(params, args)
    except UserError as error:
        # Expected failures get one line that says what to do, not a traceback.
        print(f"sslpipe {args.command}: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
