"""Drop the CUDA-only packages from a pip-compile lock (`make lock`): torch is installed on its own
(TORCH, TORCH_INDEX in the Makefile), and the CUDA packages its PyPI build lists would tie the lock
to that one build. Usage: python scripts/lock_filter.py LOCK [LOCK ...] (rewrites each in place)."""

import re
import sys
from pathlib import Path

CUDA_ONLY = re.compile(r"^(nvidia-|cuda-|triton==)", re.IGNORECASE)

for path in map(Path, sys.argv[1:]):
    blocks = re.split(r"\n(?=[A-Za-z0-9])", path.read_text())  # each pin with its '# via' lines
    kept = [b for b in blocks if not CUDA_ONLY.match(b)]
    path.write_text("\n".join(kept).rstrip("\n") + "\n")
    pins = sum(bool(re.match(r"[A-Za-z0-9][^\n]*==", b)) for b in kept)
    print(f"{path}: {pins} pins; {len(blocks) - len(kept)} CUDA-only ones left out")
