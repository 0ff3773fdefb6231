"""Does the fleet keep the camera demand covered while it changes? And how long does a change take?

Each change of ``tests/support/transitions.py`` runs on a fresh emulated cluster with the real
``qfleet operator`` process: the model is quantized for real (the tiny test model, 1 s
benchmarks), served, then changed: serving CPU, a new tier taking over, replicas that cannot be
scheduled, a new model whose pods crash-loop, a new source model on two tiers, a lost status.
The cluster's Deployment controller rolls pods as Kubernetes does (maxSurge 1, maxUnavailable 0,
readiness after 0.3 s) and logs the ready capacity (sum over Ready serving pods of measured FPS x
targetUtilization) at every pass.

Per change it prints the lowest ready capacity during the change divided by
``min(demand, ready capacity just before)`` (goal: >= 1.0 on every row) and the seconds from the
change until the fleet settled (the quantization Job included where the change needs one).

    python benchmarks/transitions.py [--repeat N] [--only NAME] [--no-write]
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))  # the tests package: its emulated cluster and scenarios

from _common import RESULTS, cpu_model, replace_section, script_parser, utc_stamp  # noqa: E402
from tests.support.operator_fixtures import NAMESPACE, model_cluster, write_datasets  # noqa: E402
from tests.support.transitions import SCENARIOS, Transition  # noqa: E402

TITLE = "## Capacity through changes"


async def run_one(name: str, data: Path, root: Path) -> Transition:
    async with model_cluster(root, data) as cluster:
        await cluster.start_operator("--namespace", NAMESPACE)
        return await SCENARIOS[name](cluster)


async def run_all(names: list[str], repeat: int) -> dict[str, list[Transition]]:
    results: dict[str, list[Transition]] = {name: [] for name in names}
    with tempfile.TemporaryDirectory(prefix="qfleet-transitions-") as folder:
        data = write_datasets(Path(folder) / "data")
        for round_ in range(repeat):
            for index, name in enumerate(names):
                result = await run_one(name, data, Path(folder) / f"run-{round_}-{index}")
                results[name].append(result)
                print(
                    f"  {name}: min ratio {result.ratio:.3f}, settled in {result.settle_seconds:.1f} s",
                    flush=True,
                )
    return results


def table(results: dict[str, list[Transition]]) -> str:
    lines = [
        "| Change | Demand (faces/s) | Ready capacity before | Lowest during / min(demand, before) | Settled in (s, median) |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for name, runs in results.items():
        worst = min(runs, key=lambda run: run.ratio)
        settle = statistics.median(run.settle_seconds for run in runs)
        lines.append(
            f"| {name} | {worst.demand:.0f} | {worst.capacity_before:.0f} | "
            f"{worst.ratio:.2f} | {settle:.1f} |"
        )
    return "\n".join(lines)


def host_description() -> str:
    from qfleet.isa import detect_host_tier, has_native_bf16

    tier = detect_host_tier()
    bf16 = "native bf16" if has_native_bf16(tier) else "no native bf16"
    return f"{cpu_model()} (tier {tier}, {bf16}; {os.cpu_count()} cores)"


def main() -> int:
    parser = script_parser(__doc__)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each change (the worst ratio is kept)")
    parser.add_argument("--only", choices=sorted(SCENARIOS), action="append", help="run only these changes")
    parser.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    args = parser.parse_args()
    names = args.only or list(SCENARIOS)
    results = asyncio.run(run_all(names, args.repeat))
    text = table(results)
    print(text)
    failed = [name for name, runs in results.items() if min(run.ratio for run in runs) < 1.0]
    if not args.no_write:
        section = (
            f"{TITLE}\n\n"
            f"`benchmarks/transitions.py --repeat {args.repeat}` on {host_description()}, {utc_stamp()}: the real "
            "operator on the emulated cluster (pods ready 0.3 s after they are scheduled, maxSurge 1, "
            "maxUnavailable 0), the tiny test model quantized and benchmarked for real (1 CPU per "
            "replica unless the change says otherwise). The ratio is the lowest ready capacity seen "
            "during the change over min(demand, ready capacity just before it); goal >= 1.00 on "
            "every row. Settling includes the quantization Job where the change needs one.\n\n"
            f"{text}\n"
        )
        replace_section(RESULTS, TITLE, section)
    if failed:
        print(f"capacity fell below the demand during: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
