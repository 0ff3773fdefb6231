"""What the benchmark scripts share: the machine, its CPU load, a server process, memory, RESULTS.md.

Every script here runs on a machine that other jobs may share, reports which CPU it ran on, and
writes its section of ``benchmarks/RESULTS.md``; the ones that measure the server start
``qfleet serve`` in its own process. The small functions below do each of those once. The scripts
are run as ``python benchmarks/<name>.py``, so this folder is on ``sys.path`` and they import it
as ``_common``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

#: The results file every script writes its section of.
RESULTS = Path(__file__).resolve().parent / "RESULTS.md"


def script_parser(doc: str | None) -> argparse.ArgumentParser:
    """An argument parser whose ``--help`` shows the script's docstring as written."""
    return argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


# --- the machine ---------------------------------------------------------------------------------


def cpu_model() -> str:
    """The "model name" of /proc/cpuinfo (the platform's processor name where it has none)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "model name":
            return value.strip()
    return platform.processor() or "unknown CPU"


def load_average() -> float:
    """The 1-minute load average (what `uptime` shows first)."""
    return os.getloadavg()[0]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a server that needs a second, known port)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def utc_stamp(fmt: str = "%Y-%m-%d %H:%M UTC") -> str:
    """The current time in UTC, for "measured at" lines."""
    return datetime.now(UTC).strftime(fmt)


# --- CPU time, and a quiet machine ---------------------------------------------------------------


def busy_cpu_seconds() -> float:
    """CPU seconds all processes on this machine spent busy (/proc/stat: user..steal, no idle).

    NaN where /proc/stat cannot be read.
    """
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    except OSError:
        return float("nan")
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of a running process (0 where it is gone)."""
    try:
        after_name = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(after_name[11]) + int(after_name[12])) / os.sysconf("SC_CLK_TCK")


def children_cpu_seconds() -> float:
    """User + system CPU seconds of this process's finished (waited-for) children."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def self_cpu_seconds() -> float:
    """User + system CPU seconds of this process."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class CpuMeter:
    """How much CPU *other* processes took during each phase: the machine may be shared.

    Others = all busy CPU time (/proc/stat) minus this script's, its finished children's and the
    running server's (``server_pid``), per second of the phase. On a machine of C cores, others near
    0 means a clean measurement; near C means the numbers are halved.
    """

    def __init__(self) -> None:
        self.server_pid: int | None = None
        self.phases: dict[str, dict[str, float]] = {}

    def _own_cpu_s(self) -> float:
        return self_cpu_seconds() + children_cpu_seconds() + self._server_cpu_s()

    def _server_cpu_s(self) -> float:
        return process_cpu_seconds(self.server_pid) if self.server_pid else 0.0

    @contextmanager
    def phase(self, name: str) -> Iterator[None]:
        """Record the cores others, this script (the clients) and the server used during the block,
        and the 1-minute load average at its end, as phase ``name`` (the script's cores include its
        finished children's: a ``qfleet benchmark`` run)."""
        started, busy = time.monotonic(), busy_cpu_seconds()
        own, server = self._own_cpu_s(), self._server_cpu_s()
        yield
        elapsed = max(time.monotonic() - started, 1e-9)
        own_used, server_used = self._own_cpu_s() - own, self._server_cpu_s() - server
        others = (busy_cpu_seconds() - busy) - own_used
        self.phases[name] = {
            "others_cores": round(max(others, 0.0) / elapsed, 2),
            "script_cores": round((own_used - server_used) / elapsed, 3),
            "server_cores": round(server_used / elapsed, 3),
            "load_average_1m": round(os.getloadavg()[0], 2),
        }

    def others_now(self, seconds: float = 2.0) -> float:
        """Cores that other processes use right now (sampled over ``seconds``)."""
        busy, own = busy_cpu_seconds(), self._own_cpu_s()
        time.sleep(seconds)
        return max((busy_cpu_seconds() - busy) - (self._own_cpu_s() - own), 0.0) / seconds

    def wait_quiet(self, max_cores: float, timeout_s: float) -> None:
        """Wait until others use at most ``max_cores``, or ``timeout_s`` has passed."""
        deadline = time.monotonic() + timeout_s
        while self.others_now() > max_cores and time.monotonic() < deadline:
            pass

    def measure(
        self, name: str, phase: Callable[[], T], *, max_cores: float, wait_s: float, attempts: int = 3
    ) -> T:
        """Run ``phase`` when the machine is quiet; repeat it (keeping the cleanest) if others interfered."""
        best: tuple[T, dict[str, float]] | None = None
        for attempt in range(1, attempts + 1):
            self.wait_quiet(max_cores, wait_s)
            with self.phase(name):
                value = phase()
            record = {**self.phases[name], "attempts": attempt}
            if best is None or record["others_cores"] < best[1]["others_cores"]:
                best = (value, record)
            if record["others_cores"] <= max_cores:
                break
        assert best is not None
        self.phases[name] = best[1]
        return best[0]


# --- memory of a process -------------------------------------------------------------------------


def status_kib(pid: int, *keys: str) -> dict[str, int]:
    """Fields of ``/proc/<pid>/status`` given in kB (``VmRSS``, ``VmHWM`` ...), as KiB."""
    found: dict[str, int] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in keys:
            found[key] = int(value.split()[0])
    return found


def rss_mib(pid: int) -> float:
    """Resident memory of a process (``smaps_rollup`` is exact; ``status``'s VmRSS is batched)."""
    for source, key in ((f"/proc/{pid}/smaps_rollup", "Rss:"), (f"/proc/{pid}/status", "VmRSS:")):
        try:
            lines = Path(source).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            if line.startswith(key):
                return int(line.split()[1]) / 1024
    return 0.0


# --- statistics ----------------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile by the nearest-rank method (the value at rank ceil(q * n)); 0 when empty."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(q * len(ordered) + 0.999999) - 1))] if ordered else 0.0


# --- a fleet that starts quantized (the operator benchmarks) ---------------------------------------

#: The namespace of the benchmark fleet.
NAMESPACE = "fleet"
#: The node tiers, each with the INT8 FPS per replica its recorded results claim.
TIERS = (("amx_int8", 2400.0), ("avx512_vnni", 579.0), ("avx2", 326.0))
#: Every model's demand: cameras x CAMERA_FPS x FACES_PER_FRAME, planned at UTILIZATION.
UTILIZATION = 0.8
CAMERA_FPS, FACES_PER_FRAME = 6, 1
MAX_REPLICAS = 64


def model_spec(source_uri: str, tier: str, cameras: int) -> dict[str, Any]:
    """A QuantizedModel spec for one ``tier`` serving ``cameras`` cameras (ONNX source at ``source_uri``)."""
    return {
        "source": {"format": "onnx", "uri": source_uri},
        "quantization": {"calibration": "pvc://data/calib"},
        "validation": {"lfw": "pvc://data/lfw.bin", "maxDrop": 0.001},
        "targets": [{"isa": tier}],
        "serving": {"resources": {"limits": {"cpu": "8"}}, "minReplicas": 1, "maxReplicas": MAX_REPLICAS},
        "demand": {"cameras": cameras, "cameraFps": CAMERA_FPS, "facesPerFrame": FACES_PER_FRAME,
                   "targetUtilization": UTILIZATION},
        "artifacts": {"uri": "pvc://models/qfleet"},
    }  # fmt: skip


def quantized_status(
    name: str, tier: str, key: str, fps: float, *, job: str, gate_message: str, seconds: float
) -> dict[str, Any]:
    """A status that already holds a passed ``fps`` result of Job ``job`` for pipeline ``key``.

    What the operator finds after a restart on an existing fleet: it serves that result, no Job runs.
    """
    artifact = f"pvc://models/qfleet/{name}/{key}/{tier}"
    record = {"pipelineKey": key, "precision": "int8", "artifact": f"{artifact}/int8/model.xml",
              "fpsPerReplica": fps, "accuracy": 0.996, "since": "2030-01-01T00:00:00Z"}  # fmt: skip
    result = {
        "pipelineKey": key, "job": job, "succeeded": True,
        "artifact": record["artifact"], "fp32Artifact": f"{artifact}/fp32/model.xml",
        "fp32Accuracy": 0.9963, "int8Accuracy": 0.996, "accuracyDrop": 0.0003, "fp32Fps": fps / 1.77,
        "int8Fps": fps, "gate": {"passed": True, "reason": "Passed", "message": gate_message},
        "versions": {}, "seconds": seconds, "finishedAt": "2030-01-01T00:00:00Z",
    }  # fmt: skip
    return {
        "variants": [{"isa": tier, "pipelineKey": key, "job": job, "state": "Succeeded",
                      "result": result, "served": record, "lastGood": record}],
    }  # fmt: skip


# --- qfleet in its own process -------------------------------------------------------------------


def qfleet_json(*args: str, timeout: float) -> dict[str, Any]:
    """``qfleet <args> --json -q`` in its own process; its last line of output, parsed.

    Raises ``subprocess.CalledProcessError`` when it fails and ``subprocess.TimeoutExpired`` when it
    runs longer than ``timeout`` seconds.
    """
    done = subprocess.run(
        [sys.executable, "-m", "qfleet.cli", *args, "--json", "-q"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return dict(json.loads(done.stdout.splitlines()[-1]))


@contextmanager
def server_process(
    model_xml: Path, *args: str, start_timeout: float = 300
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``qfleet serve`` on a free port in its own process, as in a pod; yields its URL and process.

    Ready once it logs "listening on <url>"; stopped (SIGTERM, then waited for) on leaving the block.
    """
    if not {"--grpc-port", "--no-grpc"} & set(args):
        args = ("--grpc-port", "0", *args)  # the default gRPC port would collide between servers
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)  # noqa: SIM115 - read while running
    process = subprocess.Popen(
        [sys.executable, "-m", "qfleet.cli", "serve", "--model", str(model_xml), "--port", "0", *args],
        stdout=subprocess.DEVNULL,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + start_timeout
        while not (found := re.search(r"listening on (http://\S+)", Path(log.name).read_text())):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{Path(log.name).read_text()}")
            time.sleep(0.1)
        yield found.group(1), process
    finally:
        process.terminate()
        process.wait(timeout=120)
        log.close()
        os.unlink(log.name)


# --- RESULTS.md ----------------------------------------------------------------------------------


def replace_section(path: Path, title: str, section: str) -> None:
    """Put ``section`` into ``path`` in place of the earlier section headed ``title`` (others untouched).

    A section runs from its ``## `` heading line to the next ``## `` heading or the end of the file;
    without one, ``section`` is appended (and a missing file starts as "# Benchmark results").
    """
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    pattern = re.compile(rf"^{re.escape(title)}\s*$.*?(?=^## |\Z)", re.MULTILINE | re.DOTALL)
    if pattern.search(text):
        text = pattern.sub(lambda _: section.rstrip("\n") + "\n\n", text, count=1).rstrip("\n") + "\n"
    else:
        text = text.rstrip("\n") + "\n\n" + section.rstrip("\n") + "\n"
    path.write_text(text)


def replace_marked_block(path: Path, begin_mark: str, end_mark: str, fragment: str) -> None:
    """Replace the text between ``begin_mark`` and ``end_mark`` in ``path`` (both must be there)."""
    text = path.read_text(encoding="utf-8")
    begin, end = text.find(begin_mark), text.find(end_mark)
    if begin < 0 or end < begin:
        raise SystemExit(f"{path}: no {begin_mark} ... {end_mark} block to replace")
    text = text[: begin + len(begin_mark)] + "\n\n" + fragment.strip() + "\n\n" + text[end:]
    path.write_text(text, encoding="utf-8")
