"""Embed a folder as a Prefect flow: once now, or on a schedule served by this process.

    python -m flows.embed --data /data/photos --out /data/photos.parquet                     # once, now
    export PREFECT_API_URL=http://127.0.0.1:4200/api          # after `prefect server start`, for a schedule:
    python -m flows.embed --data /data/photos --out /data/photos.parquet --cron "0 3 * * *"  # 03:00 UTC daily

The flow ``embed-folder`` runs :func:`tasks.embed.embed_dataset`, what ``sslpipe embed``
runs, in two tasks: resolving the model (a registry alias is read and its version
downloaded: retried with backoff when the registry fails in a way that may pass,
never for a name that does not exist) and embedding. Each run replaces the output
file (``--no-overwrite`` refuses instead), atomically: a reader sees last run's file
until this run's is complete. Each run publishes a Markdown artifact,
``embed-folder-summary``: counts, the output files, the model version, skipped files.

With ``--cron`` or ``--interval`` this process serves the deployment
``embed-folder/<name>`` (default name: the data folder's) until Ctrl-C, like
``sslpipe schedule`` serves the pipeline, and needs a Prefect server for the same
reason: the temporary one has no scheduler.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import asdict
from pathlib import Path

# First: it sets Prefect's environment (home folder, no telemetry) before prefect is imported.
from flows.pipeline import PROJECT_DIR, RETRY_BACKOFF_SECONDS, TRANSIENT_RETRIES

# isort: split
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.schedule import build_schedule, require_prefect_server, serve_flow
from tasks.cli import add_schedule_arguments
from tasks.embed import EmbeddingModel, EmbedReport, embed_dataset, resolve_model
from tasks.embed.job import DEFAULT_BATCH_SIZE, DEFAULT_WORKERS, check_output
from tasks.embed.sources import source_kind
from tasks.errors import USER_ERROR_EXIT_STATUS, UserError
from tasks.layout import PARAMS, SERVING_CACHE
from tasks.params import Params, load_params

SUMMARY_ARTIFACT = "embed-folder-summary"
# MLflow error codes of a registry that may answer on a later try (a server down, overloaded, restarting);
# a name, alias or version that does not exist fails at once.
TRANSIENT_REGISTRY_ERRORS = {"INTERNAL_ERROR", "TEMPORARILY_UNAVAILABLE", "REQUEST_LIMIT_EXCEEDED"}
# Skipped files listed in the artifact; the report beside the output lists them all.
ARTIFACT_SKIPPED_ROWS = 20


def may_pass_on_retry_error(error: BaseException | None) -> bool:
    """Whether resolving the model failed in a way a retry may fix.

    A :class:`UserError` (a bad URI, a missing file, an alias that does not exist)
    will not; one the registry raised because it could not answer will, and so will
    anything unexpected (a download that broke off).
    """
    if not isinstance(error, UserError):
        return True
    # model_uris raises its RegistryError `from None`: the MLflow error stays in __context__.
    return getattr(error.__context__, "error_code", None) in TRANSIENT_REGISTRY_ERRORS


def may_pass_on_retry(task, task_run, state) -> bool:
    """Prefect's retry condition for :func:`resolve_embedding_model`."""
    return may_pass_on_retry_error(state.result(raise_on_failure=False))


# A folder's images and an alias's version change between runs: never reuse an earlier run's result.
@task(name="resolve-model", cache_policy=NO_CACHE)
def resolve_embedding_model(model: str, cache_dir: str, project_dir: str) -> EmbeddingModel:
    """The ONNX file of ``model``: a file, or the registry version an alias names now, downloaded."""
    resolved = resolve_model(model, Path(cache_dir), Path(project_dir))
    get_run_logger().info("model %s: version %s, %s", model, resolved.version or "(file)", resolved.onnx_path)
    return resolved


@task(name="embed-images", cache_policy=NO_CACHE)
def embed_images(model: EmbeddingModel, data: str, out: str, options: dict) -> EmbedReport:
    return embed_dataset(model, Path(data), Path(out), progress=False, **options)


@flow(name="embed-folder", log_prints=True)
def embed_folder(
    data: str,
    out: str,
    model: str | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    workers: int = DEFAULT_WORKERS,
    overwrite: bool = True,
    project_dir: str = str(PROJECT_DIR),
    retry_backoff_seconds: float = RETRY_BACKOFF_SECONDS,
) -> dict:
    """Embeds every image of ``data`` into ``out`` (see ``sslpipe embed``); returns the report's counts.

    Args:
        model: ONNX file or ``models:/<name>@<alias>``; default: the project's champion.
        project_dir: the project whose params.yaml (model name, pixel limit) and MLflow registry are used.
        retry_backoff_seconds: the first wait before retrying the model's resolution; doubles after each.
    """
    params = project_params(Path(project_dir))
    resolve = resolve_embedding_model.with_options(
        retries=TRANSIENT_RETRIES,
        retry_delay_seconds=exponential_backoff(backoff_factor=retry_backoff_seconds),
        retry_condition_fn=may_pass_on_retry,
    )
    resolved = resolve(
        model or f"models:/{params.registry.model_name}@champion", str(Path(project_dir) / SERVING_CACHE), project_dir
    )
    options = {
        "batch_size": batch_size,
        "workers": workers,
        "overwrite": overwrite,
        "max_image_pixels": params.ingest.max_image_pixels,
    }
    report = embed_images(resolved, data, out, options)
    create_markdown_artifact(summary_markdown(report), key=SUMMARY_ARTIFACT, description="What this embedding run did")
    print(f"{report.num_embedded} images embedded, {report.num_skipped} skipped: {', '.join(report.out)}")
    summary = asdict(report)
    del summary["skipped"]  # all of them are in the report file; a flow result stays small
    return summary


def project_params(project_dir: Path) -> Params:
    """The project's params.yaml, or the defaults for a folder without one."""
    path = project_dir / PARAMS
    return load_params(path) if path.is_file() else Params()


def summary_markdown(report: EmbedReport) -> str:
    version = f" (version {report.model_version})" if report.model_version else ""
    lines = [
        "# Embedding run",
        "",
        "| | |",
        "|---|---|",
        f"| data | `{report.data}` ({report.source_kind}) |",
        f"| output | {', '.join(f'`{path}`' for path in report.out)} |",
        f"| model | `{report.model}`{version} |",
        f"| embedded | {report.num_embedded} ({report.num_labeled} labeled) |",
        f"| skipped | {report.num_skipped} |",
        f"| embedding dim | {report.embedding_dim} |",
        f"| time | {report.seconds:.1f} s ({report.images_per_second:.0f} images/s) |",
    ]
    if report.skipped:
        lines += ["", "## Skipped", "", "| file | reason |", "|---|---|"]
        lines += [f"| `{s['path']}` | {s['reason']} |" for s in report.skipped[:ARTIFACT_SKIPPED_ROWS]]
        if report.num_skipped > ARTIFACT_SKIPPED_ROWS:
            lines.append(f"| ... | {report.num_skipped - ARTIFACT_SKIPPED_ROWS} more in the report beside the output |")
    return "\n".join(lines) + "\n"


def flow_parameters(args: argparse.Namespace) -> dict:
    """The flow's parameters from the command line, paths absolute (a scheduled run starts elsewhere), checked now.

    Raises:
        UserError: a ``--data`` that cannot be read, an ``--out`` of an unknown format or an existing one
            with ``--no-overwrite``.
    """
    data, out = Path(args.data).resolve(), Path(args.out).resolve()
    source_kind(data)
    check_output(out, args.overwrite)
    parameters = {"data": str(data), "out": str(out), "overwrite": args.overwrite}
    parameters["project_dir"] = str(Path(args.project_dir).resolve())
    given = {"model": args.model, "batch_size": args.batch_size, "workers": args.workers}
    given["retry_backoff_seconds"] = args.retry_backoff
    parameters.update({name: value for name, value in given.items() if value is not None})
    return parameters


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows.embed",
        description="Embed a folder with the Prefect flow embed-folder: once, or with --cron/--interval on a "
        "schedule (serves the deployment embed-folder/NAME until Ctrl-C; needs PREFECT_API_URL).",
    )
    parser.add_argument("--data", required=True, help="image folder, archive, or ingested folder (manifest.csv)")
    parser.add_argument("--out", required=True, help="output file: .parquet, or .npy (+ .csv beside it)")
    parser.add_argument("--model", default=None, help="ONNX file or models:/<name>@<alias> (default: the champion)")
    parser.add_argument("--batch-size", type=int, default=None, help=f"default: {DEFAULT_BATCH_SIZE}")
    parser.add_argument("--workers", type=int, default=None, help=f"decoding threads (default: {DEFAULT_WORKERS})")
    parser.add_argument(
        "--overwrite",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="replace the output of an earlier run (default); --no-overwrite refuses to",
    )
    add_schedule_arguments(parser, required=False, cron_example="'0 3 * * *' for 03:00 every day")
    parser.add_argument("--name", default=None, help="deployment name (default: the data folder's name)")
    parser.add_argument("--project-dir", default=str(PROJECT_DIR), help="project with params.yaml and mlflow.db")
    parser.add_argument("--retry-backoff", type=float, default=None, help="first wait before retrying the model")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        parameters = flow_parameters(args)
        if args.cron is None and args.interval is None:
            report = embed_folder(**parameters)
            print(f"{report['num_embedded']} embedded, {report['num_skipped']} skipped: {', '.join(report['out'])}")
            return 0
        schedule = build_schedule(args.cron, args.interval, args.timezone)
        url = require_prefect_server()
        name = args.name or Path(parameters["data"]).name.split(".")[0]
        print(
            f"Serving {embed_folder.name}/{name} on {url}: embeds {parameters['data']} into {parameters['out']}. "
            "Keep this process running; Ctrl-C stops it and pauses the schedule.",
            flush=True,
        )
        serve_flow(embed_folder, name, schedule, parameters)
    except UserError as error:
        print(f"python -m flows.embed: error: {error}", file=sys.stderr)
        return USER_ERROR_EXIT_STATUS
    return 0


if __name__ == "__main__":
    sys.exit(main())
