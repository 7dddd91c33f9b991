"""Run the benchmark: ``.venv/bin/python bench/run.py [--duration 10] [--scenarios ...]``.

See bench/README.md. Also runnable as ``python -m bench.run`` from the repository root.
"""

import sys
from pathlib import Path

# Run as a script, only bench/ is on sys.path; the harness imports itself as `bench.*`.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.harness import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main())
