"""How fast does ``qfleet fetch`` bring a model out of S3, and with how much memory?

Publishes a model directory with a 250 MB ``model.bin`` to a local S3 server (moto's standalone
server, a separate process on 127.0.0.1), then runs ``qfleet fetch`` in its own process (sha256
of every file verified) and compares it with a plain copy of the same bytes on the same disk.

Prints the fetch and copy throughput, their ratio (goal: >= 50%), and the fetch process's peak
RSS beyond that of a process that only imported boto3 and built the client (goal: < 100 MB).
The local server is itself a Python process on the same CPUs, so the ratio is a lower bound for
a real store on another machine.

Then the serving pod's init container for an iResNet-100 INT8 model: the checkpoint built by
``benchmarks/iresnet.py``, converted with qfleet, its weights stored in int8 (NNCF weight
compression: the bytes per weight of a quantized IR), published, and fetched by a whole
``qfleet fetch`` process as the init container runs it. That is the time the init container adds
before the server starts loading (cached below ``build/`` after the first run).

    python benchmarks/storage.py [--mb 250] [--repeat 3] [--no-iresnet100] [--no-write]
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the tests package: its S3 server helper

from _common import (  # noqa: E402
    RESULTS,
    cpu_model,
    load_average,
    replace_section,
    script_parser,
    utc_stamp,
)
from qfleet.isa import detect_host_tier, has_native_bf16  # noqa: E402
from qfleet.storage.publish import UPLOAD_KEY, publish  # noqa: E402
from qfleet.storage.s3 import S3Store  # noqa: E402
from qfleet.storage.transfer import CHUNK_SIZE  # noqa: E402
from qfleet.storage.uris import parse_s3_uri  # noqa: E402
from tests.support.s3 import s3_server  # noqa: E402

BUCKET = "qfleet-bench"
BASELINE = (
    "import os, resource\n"
    "import qfleet.storage.fetch\n"
    "from qfleet.storage.s3 import make_client\n"
    "make_client()\n"
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)\n"
)
#: Peak RSS in KiB of the command it runs, printed last (GNU time is not everywhere).
MEASURED = (
    "import resource, subprocess, sys\n"
    "code = subprocess.call(sys.argv[1:])\n"
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
    "sys.exit(code)\n"
)


def write_model(folder: Path, megabytes: int) -> Path:
    folder.mkdir(parents=True)
    chunk = os.urandom(1 << 20)
    with (folder / "model.bin").open("wb") as handle:
        for _ in range(megabytes):
            handle.write(chunk)
    (folder / "model.xml").write_text("<net name='bench'/>\n")
    (folder / "qfleet.json").write_text(json.dumps({"kind": "int8"}))
    return folder


def fetch_once(uri: str, dest: Path, env: dict[str, str]) -> tuple[float, float, int, float]:
    """(seconds, MB/s, peak RSS KiB, MB/s fetch itself reports) of one ``qfleet fetch`` process."""
    shutil.rmtree(dest, ignore_errors=True)
    started = time.perf_counter()
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MEASURED,
            sys.executable,
            "-m",
            "qfleet.cli",
            "fetch",
            uri,
            str(dest),
            "--json",
            "-q",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    seconds = time.perf_counter() - started
    lines = done.stdout.strip().splitlines()
    result = json.loads(lines[-2])
    # Wall time of the whole process (interpreter and boto3 start included) and fetch's own rate.
    return seconds, result["bytes"] / 1e6 / seconds, int(lines[-1]), float(result["mb_per_s"])


def raw_get_once(server_client: object, key: str) -> float:
    """MB/s of reading the object and discarding it: what the server itself can send."""
    started = time.perf_counter()
    body = server_client.get_object(Bucket=BUCKET, Key=key)["Body"]  # type: ignore[attr-defined]
    size = sum(len(chunk) for chunk in body.iter_chunks(CHUNK_SIZE))
    return size / 1e6 / (time.perf_counter() - started)


def copy_once(source: Path, target: Path) -> tuple[float, float]:
    target.unlink(missing_ok=True)
    started = time.perf_counter()
    shutil.copyfile(source, target)
    seconds = time.perf_counter() - started
    return seconds, source.stat().st_size / 1e6 / seconds


CACHE = REPO / "build" / "bench-cache" / "iresnet100-int8"


def iresnet100_int8(folder: Path) -> Path:
    """An iResNet-100 model directory with int8 weights and a qfleet.json (built once, cached)."""
    if (folder / "qfleet.json").is_file():
        return folder
    import nncf
    import openvino as ov

    from iresnet import build_checkpoint
    from qfleet.model.convert import convert_model

    with tempfile.TemporaryDirectory(prefix="qfleet-iresnet100-") as tmp:
        build_checkpoint(100, Path(tmp) / "r100" / "model")
        fp32 = Path(tmp) / "fp32"
        convert_model(Path(tmp) / "r100" / "model", fmt="mxnet", out_dir=fp32, epoch=1)
        compressed = nncf.compress_weights(ov.Core().read_model(fp32 / "model.xml"))
        folder.mkdir(parents=True, exist_ok=True)
        ov.save_model(compressed, folder / "model.xml", compress_to_fp16=False)
        meta = json.loads((fp32 / "qfleet.json").read_text()) | {
            "kind": "int8",
            "benchmark_note": "int8 weights",
        }
        (folder / "qfleet.json").write_text(json.dumps(meta))
    return folder


def init_container_seconds(model: Path, env: dict[str, str], work: Path, repeat: int) -> tuple[float, int]:
    """Median wall seconds of the init container's ``qfleet fetch`` of ``model``, and its bytes."""
    import statistics

    uri = f"s3://{BUCKET}/iresnet100/key/avx512_vnni/int8"
    staged = work / "r100-int8"
    shutil.copytree(model, staged)
    publish(staged, parse_s3_uri(uri), store=S3Store())
    runs = [fetch_once(uri, work / "r100-fetched", env)[0] for _ in range(repeat)]
    return statistics.median(runs), sum(path.stat().st_size for path in staged.iterdir())


def main() -> None:
    parser = script_parser(__doc__)
    parser.add_argument("--mb", type=int, default=250, help="model.bin size in MB (default %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of each, best kept (default %(default)s)")
    parser.add_argument("--no-write", action="store_true", help=f"do not update {RESULTS.name}")
    parser.add_argument(
        "--no-iresnet100", action="store_true", help="skip the init container of an iResNet-100 model"
    )
    args = parser.parse_args()
    r100 = None if args.no_iresnet100 else iresnet100_int8(CACHE)
    tier, load = detect_host_tier(), load_average()

    with tempfile.TemporaryDirectory(prefix="qfleet-storage-bench-") as tmp, s3_server() as server:
        work = Path(tmp)
        env = os.environ | server.env() | {"PYTHONPATH": str(REPO / "operator")}
        os.environ.update(server.env())
        server.client().create_bucket(Bucket=BUCKET)
        model = write_model(work / "model", args.mb)
        uri = f"s3://{BUCKET}/bench/int8"
        publish(model, parse_s3_uri(uri), store=S3Store())
        size = sum(path.stat().st_size for path in model.iterdir())

        baseline = int(
            subprocess.run(
                [sys.executable, "-c", BASELINE], capture_output=True, text=True, env=env, check=True
            ).stdout.split()[-1]
        )
        marker = server.client().get_object(Bucket=BUCKET, Key="bench/int8/qfleet.json")["Body"].read()
        stored = f"bench/int8/{json.loads(marker)[UPLOAD_KEY]}/model.bin"
        # Interleaved, so that a busy moment of a shared machine hits each kind alike.
        fetches, raws, copies = [], [], []
        for _ in range(args.repeat):
            fetches.append(fetch_once(uri, work / "fetched", env))
            raws.append(raw_get_once(server.client(), stored))
            copies.append(copy_once(model / "model.bin", work / "copy.bin"))
        raw = max(raws)
        # Neither fsyncs: both are measured to the page cache, like with like.
        best_fetch = max(fetches, key=lambda run: run[1])
        best_copy = max(copies, key=lambda run: run[1])
        peak_kib = max(run[2] for run in fetches)
        ratio = max(run[3] for run in fetches) / best_copy[1]
        init = init_container_seconds(r100, env, work, args.repeat) if r100 is not None else None

    lines = [
        f"CPU: {cpu_model()}, tier {tier}, native bf16 {'yes' if has_native_bf16(tier) else 'no'}, "
        f"{os.cpu_count()} CPUs; 1-min load {load:.1f} at the start; {size / 1e6:.0f} MB artifact; best of {args.repeat}",
        f"qfleet fetch (local S3 server, sha256 verified): {best_fetch[1]:.0f} MB/s ({best_fetch[0]:.2f} s, "
        f"whole process); {max(run[3] for run in fetches):.0f} MB/s as fetch reports it (transfer only)",
        f"plain copy (shutil.copyfile):                    {best_copy[1]:.0f} MB/s ({best_copy[0]:.2f} s)",
        f"raw GET from the server, bytes discarded:        {raw:.0f} MB/s (the server's own limit)",
        f"ratio fetch (transfer only)/copy: {ratio:.0%} (goal >= 50%)",
        f"fetch process peak RSS: {peak_kib / 1024:.0f} MiB in all (goal < 100 MB beyond the "
        f"{baseline / 1024:.0f} MiB of a process that only built the boto3 client)",
    ]
    if init is not None:
        lines.append(
            f"init container (qfleet fetch, whole process) of an iResNet-100 INT8 model, {init[1] / 1e6:.0f} MB: "
            f"{init[0]:.2f} s median of {args.repeat}"
        )
    print("\n".join(lines))
    if not args.no_write:
        section = (
            "## Storage: fetch from S3\n\n"
            f"Measured {utc_stamp()} with `python benchmarks/storage.py`.\n\n```\n"
            + "\n".join(lines)
            + "\n```\n"
        )
        replace_section(RESULTS, "## Storage: fetch from S3", section)


if __name__ == "__main__":
    main()
