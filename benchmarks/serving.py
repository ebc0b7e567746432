"""Serving throughput and latency: ``sslpipe serve`` beside ``mlflow models serve`` and raw ONNX, one core.

    python benchmarks/serving.py --out benchmarks/results/serving-cpu
    python benchmarks/serving.py --seconds 2 --out /tmp/serving   # a quick run

In one run on this machine:

1. The model: ``models/onnx/model.onnx`` (the repo's default run) if it exists, else
   a ``resnet18_cifar`` at random init exported with :func:`ssl_core.export.export_onnx`.
   It is registered in a temporary SQLite MLflow registry as the register stage logs
   it (:func:`tasks.register.log_onnx`), alias ``champion``: both servers serve that
   registered model.
2. Raw: in-process onnxruntime on the server's core (one thread), preprocessed
   images, batch sizes 1 to 64; the best images/s is the reference.
3. Each server pinned to ``--server-core`` (``taskset``), the load generator to
   ``--client-core``: closed-loop clients (each sends its next request when the
   last one is answered) with 1, 4, 8 and 32 clients sending one 32 px JPEG each,
   then 32 clients sending 16. ``sslpipe serve`` runs with params.yaml's defaults.
   ``mlflow models serve --env-manager local`` takes no image files: its clients
   send the preprocessed tensor as JSON ({"inputs": ...}), encoded beforehand, so
   it is spared the decoding that ``sslpipe serve`` does.
4. Overload: 256 clients against ``sslpipe serve``; a client answered 429 waits the
   ``Retry-After`` seconds. Status counts, and the server's resident memory before,
   during (peak) and after.

The load generator is a small HTTP/1.1 client on asyncio streams (keep-alive, one
connection per client), so this file needs only numpy, pillow and onnxruntime to
import; torch exports the fallback model, MLflow and the project's server run the rest.
Writes results.json and results.md to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # run as a script, like the other benchmarks

from benchmarks.machine import cpu_description  # noqa: E402

DEFAULT_ONNX = REPO / "models" / "onnx" / "model.onnx"
DEFAULT_IMAGES = REPO / "data" / "default" / "cifar10-subset.tar.gz"
MODEL_NAME = "serving-benchmark"
LOADS = [(1, 1), (4, 1), (8, 1), (32, 1), (32, 16)]  # (clients, images per request)
OVERLOAD_CLIENTS = 256
RAW_BATCHES = (1, 4, 8, 16, 32, 64)


# --- the load generator ---------------------------------------------------------------------


@dataclass
class Load:
    """What one phase of closed-loop clients measured."""

    clients: int
    images_per_request: int
    seconds: float
    latencies: list[float] = field(default_factory=list)  # of 200s, seconds
    statuses: dict[int, int] = field(default_factory=dict)
    images_ok: int = 0
    transport_errors: int = 0

    def summary(self, raw_images_per_s: float | None = None) -> dict:
        latencies = np.array(self.latencies) * 1000 if self.latencies else np.array([np.nan])
        rate = self.images_ok / self.seconds
        return {
            "clients": self.clients,
            "images_per_request": self.images_per_request,
            "images_per_s": round(rate, 1),
            "p50_ms": round(float(np.percentile(latencies, 50)), 1),
            "p99_ms": round(float(np.percentile(latencies, 99)), 1),
            "requests_ok": len(self.latencies),
            "status_5xx": sum(n for code, n in self.statuses.items() if code >= 500),
            "status_429": self.statuses.get(429, 0),
            "statuses": {str(code): n for code, n in sorted(self.statuses.items())},
            "transport_errors": self.transport_errors,
            "ratio_to_raw": round(rate / raw_images_per_s, 3) if raw_images_per_s else None,
        }


async def http_request(reader, writer, method: str, path: str, body: bytes, headers: dict[str, str]):
    """One HTTP/1.1 request on a kept-alive connection: (status, headers, body)."""
    head = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", f"Content-Length: {len(body)}"]
    head += [f"{key}: {value}" for key, value in headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + body)
    await writer.drain()
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("the server closed the connection")
    status = int(status_line.split()[1])
    response_headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        key, _, value = line.decode("latin-1").partition(":")
        response_headers[key.strip().lower()] = value.strip()
    if response_headers.get("transfer-encoding") == "chunked":
        chunks = []
        while (size := int((await reader.readline()).strip(), 16)) > 0:
            chunks.append(await reader.readexactly(size))
            await reader.readline()
        await reader.readline()
        content = b"".join(chunks)
    else:
        content = await reader.readexactly(int(response_headers.get("content-length", 0)))
    return status, response_headers, content


async def run_load(
    port: int, path: str, bodies: list[tuple[bytes, dict]], clients: int, images: int, seconds: float
) -> Load:
    """``clients`` closed-loop clients for ``seconds``; a 429 makes its client wait Retry-After."""
    load = Load(clients, images, seconds)
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.2  # every client connected before the window opens
    end = start + seconds

    async def client(index: int) -> None:
        reader = writer = None
        turn = index
        while loop.time() < end:
            if writer is None:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                if loop.time() < start:
                    await asyncio.sleep(start - loop.time())
            body, headers = bodies[turn % len(bodies)]
            turn += clients
            sent = loop.time()
            try:
                status, response_headers, _ = await http_request(reader, writer, "POST", path, body, headers)
            except (ConnectionError, asyncio.IncompleteReadError, OSError):
                load.transport_errors += sent >= start
                writer.close()
                reader = writer = None
                continue
            done = loop.time()
            if sent >= start and done <= end:
                load.statuses[status] = load.statuses.get(status, 0) + 1
                if status == 200:
                    load.latencies.append(done - sent)
                    load.images_ok += images
            if status == 429:
                await asyncio.sleep(float(response_headers.get("retry-after", 1)))
            if response_headers.get("connection") == "close":
                writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    await asyncio.gather(*(client(i) for i in range(clients)))
    return load


def multipart(images: list[bytes]) -> tuple[bytes, dict]:
    boundary = "benchmarkboundary7d3f"
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="{i}.jpg"\r\n'
        f"Content-Type: image/jpeg\r\n\r\n".encode()
        + data
        + b"\r\n"
        for i, data in enumerate(images)
    ]
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}


def tensor_json(arrays: np.ndarray) -> tuple[bytes, dict]:
    """MLflow's scoring protocol for a tensor input: {"inputs": (N, 3, S, S) nested lists}."""
    body = json.dumps({"inputs": np.round(arrays.astype(np.float64), 6).tolist()}).encode()
    return body, {"Content-Type": "application/json"}


# --- servers ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` and its children (MLflow's server forks its workers), MiB."""
    total = 0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except FileNotFoundError:
            pass
    return round(total / 1024, 1)


async def answers(port: int, path: str) -> int | None:
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return None
    try:
        status, _, _ = await http_request(reader, writer, "GET", path, b"", {})
        return status
    except (ConnectionError, asyncio.IncompleteReadError, OSError):
        return None
    finally:
        writer.close()


def start_server(command: list[str], env: dict, port: int, ready_path: str, log: Path, seconds: float = 180):
    """Starts ``command`` and waits until ``ready_path`` answers 200; raises with the log's tail if it does not."""
    handle = log.open("wb")
    server = subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + seconds
    while asyncio.run(answers(port, ready_path)) != 200:
        if server.poll() is not None or time.monotonic() > deadline:
            stop(server)
            tail = log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{' '.join(command[:4])} did not become ready ({ready_path}):\n{tail}")
        time.sleep(0.5)
    return server


def stop(server: subprocess.Popen) -> None:
    server.terminate()
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait()


def register(onnx_path: Path, folder: Path) -> dict[str, str]:
    """Registers ``onnx_path`` as the register stage does, in a SQLite registry under ``folder``; its env."""
    uri = f"sqlite:///{folder / 'mlflow.db'}"
    code = f"""
import mlflow
from mlflow import MlflowClient
from pathlib import Path
from tasks.register import log_onnx
mlflow.set_tracking_uri({uri!r}); mlflow.set_registry_uri({uri!r})
client = MlflowClient()
experiment = client.create_experiment("serving-benchmark", artifact_location={(folder / "artifacts").as_uri()!r})
with mlflow.start_run(experiment_id=experiment):
    info = log_onnx(Path({str(onnx_path)!r}), {MODEL_NAME!r})
client.set_registered_model_alias({MODEL_NAME!r}, "champion", info.registered_model_version)
"""
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, check=True, capture_output=True)
    return env


# --- the model and the images ----------------------------------------------------------------


def model_file(folder: Path) -> tuple[Path, str]:
    if DEFAULT_ONNX.is_file():
        return DEFAULT_ONNX, "models/onnx/model.onnx (the repo's default run)"
    import torch

    from ssl_core.augment import Normalization
    from ssl_core.backbones import build_backbone
    from ssl_core.export import export_onnx
    from ssl_core.onnx_format import OnnxMetadata

    torch.manual_seed(0)
    norm = Normalization()
    metadata = OnnxMetadata(32, norm.mean, norm.std, 512, "resnet18_cifar", "random-init")
    path = export_onnx(build_backbone("resnet18_cifar").module.eval(), metadata, folder / "model.onnx", opset=18)
    return path, "resnet18_cifar at random init, exported by ssl_core.export (no models/onnx/model.onnx here)"


def jpegs(count: int) -> list[bytes]:
    """32 px JPEGs: the repo's CIFAR-10 subset, or random pixels without it."""
    if DEFAULT_IMAGES.is_file():
        with tarfile.open(DEFAULT_IMAGES) as tar:
            members = [m for m in tar if m.isfile() and m.name.lower().endswith((".jpg", ".jpeg"))][:count]
            found = [tar.extractfile(m).read() for m in members]
        if len(found) == count:
            return found
    rng = np.random.default_rng(0)
    images = []
    for _ in range(count):
        buffer = io.BytesIO()
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(buffer, format="JPEG")
        images.append(buffer.getvalue())
    return images


def raw_throughput(onnx_path: Path, images: list[bytes], seconds: float) -> dict[str, float]:
    """Images/s of onnxruntime alone, one thread, per batch size (run pinned by the caller)."""
    from ssl_core.onnx_embedder import OnnxEmbedder, preprocess

    embedder = OnnxEmbedder(onnx_path, intra_op_threads=1)
    arrays = np.stack([preprocess(Image.open(io.BytesIO(data)), embedder.metadata) for data in images])
    results = {}
    for batch in RAW_BATCHES:
        inputs = np.resize(arrays, (batch, *arrays.shape[1:]))
        embedder.embed_arrays(inputs)
        runs, started = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - started) < seconds:
            embedder.embed_arrays(inputs)
            runs += 1
        results[str(batch)] = round(runs * batch / elapsed, 1)
    return results


# --- the run ---------------------------------------------------------------------------------


def measure_server(name: str, port: int, path: str, bodies: dict[int, list], seconds: float, raw: float) -> list:
    rows = []
    for clients, images in LOADS:
        load = asyncio.run(run_load(port, path, bodies[images], clients, images, seconds))
        row = {"server": name, **load.summary(raw)}
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def overload(server: subprocess.Popen, port: int, bodies: list, seconds: float) -> dict:
    before = rss_mib(server.pid)
    peak = before

    async def with_memory_samples() -> Load:
        nonlocal peak
        task = asyncio.create_task(run_load(port, "/embed", bodies, OVERLOAD_CLIENTS, 1, seconds))
        while not task.done():
            peak = max(peak, rss_mib(server.pid))
            await asyncio.sleep(0.25)
        return task.result()

    load = asyncio.run(with_memory_samples())
    time.sleep(1.0)
    return {**load.summary(), "rss_mib_before": before, "rss_mib_peak": peak, "rss_mib_after": rss_mib(server.pid)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load phase")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--raw", type=Path, help=argparse.SUPPRESS)  # internal: the pinned raw measurement
    args = parser.parse_args(argv)
    images = jpegs(64)
    if args.raw:
        print(json.dumps(raw_throughput(args.raw, images, args.seconds / 5)))
        return 0

    args.out.mkdir(parents=True, exist_ok=True)
    machine = cpu_description()  # before this process is pinned to the client core
    pin_server = ["taskset", "-c", str(args.server_core)]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        onnx_path, model_origin = model_file(folder)
        raw_run = subprocess.run(
            [*pin_server, sys.executable, __file__, "--out", str(folder), "--seconds", str(args.seconds), "--raw"]
            + [str(onnx_path)],
            check=True,
            capture_output=True,
            text=True,
        )
        raw = json.loads(raw_run.stdout.strip().splitlines()[-1])
        best_batch, best = max(raw.items(), key=lambda item: item[1])
        print(f"raw onnxruntime on core {args.server_core}: {raw}", flush=True)
        env = register(onnx_path, folder)
        os.sched_setaffinity(0, {args.client_core})  # the load generator, from here on

        from ssl_core.onnx_embedder import preprocess
        from ssl_core.onnx_format import read_onnx_metadata

        metadata = read_onnx_metadata(onnx_path)
        arrays = [preprocess(Image.open(io.BytesIO(data)), metadata)[None] for data in images]
        ours_bodies = {1: [multipart([data]) for data in images], 16: [multipart(images[i : i + 16]) for i in (0, 16)]}
        mlflow_bodies = {
            1: [tensor_json(a) for a in arrays],
            16: [tensor_json(np.concatenate(arrays[i : i + 16])) for i in (0, 16)],
        }

        port = free_port()
        command = [*pin_server, sys.executable, "-m", "tasks.cli", "serve", "--port", str(port)]
        command += ["--model", f"models:/{MODEL_NAME}@champion", "--cache", str(folder / "cache")]
        server = start_server(command, env, port, "/health/ready", folder / "sslpipe.log")
        try:
            ours = measure_server("sslpipe serve", port, "/embed", ours_bodies, args.seconds, best)
            info = json.loads(asyncio.run(get_json(port, "/info")))
            overloaded = overload(server, port, ours_bodies[1], args.seconds)
            print(json.dumps({"overload": overloaded}), flush=True)
        finally:
            stop(server)

        port = free_port()
        command = [*pin_server, sys.executable, "-m", "mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}/1"]
        command += ["--env-manager", "local", "-p", str(port), "-h", "127.0.0.1"]
        try:
            server = start_server(command, env, port, "/ping", folder / "mlflow.log")
        except RuntimeError as error:
            theirs: list | dict = {"error": str(error)}
        else:
            try:
                theirs = measure_server("mlflow models serve", port, "/invocations", mlflow_bodies, args.seconds, best)
            finally:
                stop(server)

    results = {
        "command": "python benchmarks/serving.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine,
        "model": {"onnx": model_origin, "image_size": metadata.image_size, "embedding_dim": metadata.embedding_dim},
        "pinning": {"server_core": args.server_core, "client_core": args.client_core},
        "seconds_per_phase": args.seconds,
        "raw_onnxruntime": {"images_per_s_by_batch": raw, "best_batch": int(best_batch), "best_images_per_s": best},
        "sslpipe_serve_settings": {"provider": info["execution_provider"], **info["batching"]},
        "sslpipe_serve": ours,
        "mlflow_models_serve": theirs,
        "overload": overloaded,
    }
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "results.md").write_text(markdown(results))
    print(f"Wrote {args.out / 'results.md'}")
    return 0


async def get_json(port: int, path: str) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        return (await http_request(reader, writer, "GET", path, b"", {}))[2]
    finally:
        writer.close()


def markdown(results: dict) -> str:
    raw = results["raw_onnxruntime"]
    lines = [
        "# Serving throughput and latency, one CPU core",
        "",
        f"`{results['command']}`",
        "",
        f"Machine: {results['machine']}. Server on core {results['pinning']['server_core']}, load generator on core "
        f"{results['pinning']['client_core']} (`taskset`); {results['seconds_per_phase']:g} s per phase, "
        "closed-loop clients. Model: " + results["model"]["onnx"] + f", {results['model']['image_size']} px input, "
        f"{results['model']['embedding_dim']}-d output, registered in a temporary MLflow registry.",
        "",
        "Raw onnxruntime on the server's core, one thread, images/s by batch size: "
        + ", ".join(f"{b}: {v:g}" for b, v in raw["images_per_s_by_batch"].items())
        + f"; best {raw['best_images_per_s']:g} (batch {raw['best_batch']}), the reference of *ratio to raw*. "
        "It is measured once, first, in a process of its own; on a machine shared with other work the phases vary "
        "by about 10 %, so a ratio above 100 % is that noise.",
        "",
        "`sslpipe serve` settings: " + ", ".join(f"{k} {v}" for k, v in results["sslpipe_serve_settings"].items()),
        "",
        "| server | clients x images | images/s | p50 ms | p99 ms | 5xx | 429 | ratio to raw |",
        "|---|---|---|---|---|---|---|---|",
    ]
    theirs = results["mlflow_models_serve"]
    for row in results["sslpipe_serve"] + (theirs if isinstance(theirs, list) else []):
        lines.append(
            f"| {row['server']} | {row['clients']} x {row['images_per_request']} | {row['images_per_s']:g} | "
            f"{row['p50_ms']:g} | {row['p99_ms']:g} | {row['status_5xx']} | {row['status_429']} | "
            f"{row['ratio_to_raw']:.0%} |"
        )
    if isinstance(theirs, dict):
        lines += ["", f"`mlflow models serve` could not be measured: {theirs['error']}"]
    else:
        lines += [
            "",
            "`mlflow models serve --env-manager local` gets the preprocessed tensor as JSON "
            '(`{"inputs": ...}`, encoded before the run), not image files: it does no decoding.',
        ]
    over = results["overload"]
    lines += [
        "",
        f"Overload, {OVERLOAD_CLIENTS} clients of single images against `sslpipe serve` (a client answered 429 waits "
        f"its Retry-After): {over['images_per_s']:g} images/s, statuses {over['statuses']}, "
        f"{over['status_5xx']} 5xx, {over['transport_errors']} transport errors; p50 {over['p50_ms']:g} ms, "
        f"p99 {over['p99_ms']:g} ms of the 200s; server memory {over['rss_mib_before']:g} MiB before, "
        f"{over['rss_mib_peak']:g} MiB peak, {over['rss_mib_after']:g} MiB after.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
