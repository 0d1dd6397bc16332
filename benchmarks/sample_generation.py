"""Time, size and peak memory of ``geoplant sample`` per preset (one subprocess per run).

Usage::

    python benchmarks/sample_generation.py --presets tiny small large --layout glc24

Prints one JSON object per preset and writes them all to ``benchmarks/out/sample.json``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

_CHILD = """
import json, resource, sys, time
from geoplant.synthetic.release import write_release
t = time.perf_counter()
s = write_release(sys.argv[1], layout=sys.argv[2], preset=sys.argv[3], seed=0, progress=False)
print(json.dumps({"seconds": round(time.perf_counter() - t, 2), "files": s.n_files,
                  "megabytes": round(s.bytes / 1e6, 1), "counts": s.counts,
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", nargs="+", default=["tiny", "small"])
    parser.add_argument("--layout", default="glc24", choices=["glc24", "geoplant"])
    parser.add_argument("--workdir", default=None, help="where to write (default: a temp dir)")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        for preset in args.presets:
            out = Path(tmp) / preset
            proc = subprocess.run([sys.executable, "-c", _CHILD, str(out), args.layout, preset],
                                  capture_output=True, text=True, check=True)
            result = {"preset": preset, "layout": args.layout,
                      **json.loads(proc.stdout.strip().splitlines()[-1])}
            print(json.dumps(result), flush=True)
            results.append(result)
            subprocess.run(["rm", "-rf", str(out)], check=True)
    target = Path(__file__).parent / "out" / "sample.json"
    target.parent.mkdir(exist_ok=True)
    target.write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
