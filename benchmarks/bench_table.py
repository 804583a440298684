"""Print the README table from ``lb bench --json`` outputs, or run the issue's configurations.

    python benchmarks/bench_table.py results/*.json       # tables from saved runs
    python benchmarks/bench_table.py --run cpu            # HRNet-W18 + FAN at published size, CPU
    python benchmarks/bench_table.py --run gpu            # HRNet-W18 LB T=20, batches 32..256, bf16

Not part of the test run (minutes on a CPU); the smoke test in tests/test_bench.py keeps
``lb bench`` itself from rotting.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

CONFIGS = {
    # 2-core CPU: the target is >= 3x over the per-image baseline at batch 16
    # (the engine's fast settings: bf16 autocast where the CPU has native bf16, torch.compile)
    "cpu": dict(extractors=("hrnet:weights=none", "fan:weights=none"), attacks=("lb",), batches=(16,),
                steps=20, baseline_faces=2, amp="bf16", channels_last=True, compile=True),
    # one GPU: HRNet-W18, LB (T=20); target >= 500 faces/s on an H100
    "gpu": dict(extractors=("hrnet:weights=none", "fan:weights=none"), attacks=("lb",), batches=(32, 128, 256),
                steps=20, baseline_faces=4, amp="bf16", channels_last=True, repeat=2),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("files", nargs="*", help="JSON files written by `lb bench --json`")
    ap.add_argument("--run", choices=sorted(CONFIGS), help="run a configuration now")
    ap.add_argument("--compile", action="store_true", help="torch.compile the networks (--run)")
    ap.add_argument("--save", help="write the run's JSON here (--run)")
    args = ap.parse_args()
    from lbcore.apps.bench import BenchOptions, format_table, run_bench, speedup_table_markdown

    results = [json.loads(Path(f).read_text()) for f in args.files]
    if args.run:
        config = {**CONFIGS[args.run]}
        config["compile"] = bool(config.get("compile")) or args.compile
        res = run_bench(BenchOptions(**config),
                        progress=lambda s: print(s, file=sys.stderr, flush=True))
        if args.save:
            with open(args.save, "w") as fh:
                json.dump(res, fh, indent=2)
        print("\n".join(format_table(res)))
        results.append(res)
    if not results:
        ap.error("give JSON files or --run")
    print(speedup_table_markdown(results))


if __name__ == "__main__":
    main()
