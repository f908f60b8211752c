"""Start-up cost of the command line: what ``import st_retrofit`` loads, and how long ``st-retrofit --help`` and
``st-retrofit validate recipes/quickstart.yaml`` take.

Each command runs in a fresh interpreter, ``--repeat`` times; the median is printed. ``-X importtime`` names the
slowest imports under ``import st_retrofit.recipe`` (cumulative microseconds, as Python reports them).

    python benchmarks/startup.py [--repeat 5]

Goals on a 2-core machine: ``--help`` under 1 s, ``validate`` under 5 s. The reference is the plain
``python -c "import sentence_transformers"`` measured in the same run: what any sentence-transformers script pays
before its first line, and so the price of checking ``train.args`` with the trainer's own argument class.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HEAVY = ("torch", "transformers", "sentence_transformers", "datasets", "mteb", "faiss", "openai", "peft")


def timed(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, cwd=REPO, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def import_report(module: str, top: int = 8) -> tuple[list[tuple[int, str]], list[str]]:
    """The ``top`` slowest imports (cumulative us) of ``module`` and the heavy packages it loaded."""
    probe = f"import {module}, sys; print(','.join(m for m in {HEAVY!r} if m in sys.modules))"
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", probe], cwd=REPO, check=True, capture_output=True, text=True
    )
    rows = []
    for line in out.stderr.splitlines():
        if line.startswith("import time:") and "|" in line and "cumulative" not in line:
            _, cumulative, name = (part.strip() for part in line.removeprefix("import time:").split("|"))
            rows.append((int(cumulative), name))
    heavy = [m for m in out.stdout.strip().split(",") if m]
    return sorted(rows, reverse=True)[:top], heavy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    cli = [sys.executable, "-m", "st_retrofit"]
    rows = [
        ("python -c pass (interpreter)", timed([sys.executable, "-c", "pass"], args.repeat), None),
        ("import st_retrofit", timed([sys.executable, "-c", "import st_retrofit"], args.repeat), None),
        ("st-retrofit --help", timed([*cli, "--help"], args.repeat), 1.0),
        ("import sentence_transformers (reference)", timed([sys.executable, "-c", "import sentence_transformers"],
                                                           args.repeat), None),
        ("st-retrofit validate recipes/quickstart.yaml", timed([*cli, "validate", "recipes/quickstart.yaml"],
                                                               args.repeat), 5.0),
    ]  # fmt: skip
    reference = rows[3][1]
    print(f"median of {args.repeat} runs, fresh interpreter each\n")
    print("| command | seconds | vs import sentence_transformers | goal |")
    print("|---|---|---|---|")
    for name, seconds, goal in rows:
        verdict = "" if goal is None else (f"< {goal:g} s: " + ("met" if seconds < goal else "MISSED"))
        print(f"| {name} | {seconds:.2f} | {seconds / reference:.2f} | {verdict} |")
    slowest, heavy = import_report("st_retrofit.recipe")
    print(f"\nimport st_retrofit.recipe loads heavy packages: {heavy or 'none'}; slowest imports (cumulative ms):")
    for microseconds, name in slowest:
        print(f"  {microseconds / 1000:8.1f}  {name}")


if __name__ == "__main__":
    main()
