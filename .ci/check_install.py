"""Fail CI when the fresh venv is not what a CPU machine must get: no CUDA packages, a CPU torch."""
import os
import re
import sys
from importlib import metadata

CUDA_DIST = re.compile(r"^(nvidia|cuda)[-_]", re.IGNORECASE)


def main(pip_log: str) -> int:
    problems = []
    cuda = sorted(d.metadata["Name"] for d in metadata.distributions() if CUDA_DIST.match(d.metadata["Name"] or ""))
    if cuda:
        problems.append(f"CUDA distributions installed: {', '.join(cuda)}")
    import torch

    has_gpu = os.path.exists("/dev/nvidia0")
    if torch.version.cuda and not has_gpu:
        problems.append(f"torch {torch.__version__} is a CUDA build (torch.version.cuda={torch.version.cuda}) "
                        "on a machine without a GPU")
    with open(pip_log, encoding="utf-8", errors="replace") as fh:
        backtracks = sorted(set(re.findall(r"pip is looking at multiple versions of (\S+)", fh.read())))
    if backtracks:
        problems.append(f"pip backtracked while resolving: {', '.join(backtracks)}")
    for p in problems:
        print(f"check_install: {p}", file=sys.stderr)
    if not problems:
        print(f"check_install: ok (torch {torch.__version__}, no CUDA distributions, no backtracking)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
