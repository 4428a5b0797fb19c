"""`python -m benchmarks [NAME ...]`: run the performance benchmarks one after another (never
side by side: each would load the other's machine) and print every figure against its target.

Names: cli, dataplane, gates, memory, reconcile (all when none is given). The detection
benchmark of the statistics side runs on its own: `python -m benchmarks.detection`.
"""

from __future__ import annotations

import json
import subprocess
import sys

from benchmarks.common import RESULTS, ROOT

MODULES = {
    "cli": "benchmarks.cli_start",
    "dataplane": "benchmarks.dataplane",
    "gates": "benchmarks.gate_queries",
    "memory": "benchmarks.memory",
    "reconcile": "benchmarks.reconcile_fleet",
}


def main(argv: list[str]) -> int:
    names = argv or list(MODULES)
    unknown = sorted(set(names) - set(MODULES))
    if unknown:
        print(f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(MODULES)}")
        return 2
    failed = []
    for name in names:
        print(f"== {name}", flush=True)
        done = subprocess.run([sys.executable, "-m", MODULES[name]], cwd=ROOT)
        if done.returncode:
            failed.append(name)
    print("\n| benchmark | figure | value | target | holds |\n| --- | --- | --- | --- | --- |")
    for name in names:
        path = RESULTS / f"{name}.json"
        if not path.exists():
            continue
        for figure, check in json.loads(path.read_text()).get("checks", {}).items():
            holds = "yes" if check["holds"] else "**no**"
            print(f"| {name} | {figure} | {check['value']} | {check['target']} | {holds} |")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
