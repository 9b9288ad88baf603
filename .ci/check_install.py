"""Fail CI when the fresh venv is not what a CPU machine must get: no CUDA packages, a CPU torch."""
import os
import re
import sys
from importlib import metadata

CUDA_DIST = re.compile(r"^(nvidia|cuda)[-_]", re.IGNORECASE)


# "Downloading s3fs-2026.9.0-py3-none-any.whl", "Processing /opt/wheels/torch-2.13.0+cpu-cp311-....whl"
FETCHED = re.compile(r"^(?:\s*Downloading|Processing) (?:\S*/)?([A-Za-z0-9_.]+)-(\d[^-]*?)(?:-py|-cp|\.tar\.gz|\.zip|-\d)",
                     re.MULTILINE)


def fetched_versions(pip_log: str) -> dict[str, set[str]]:
    """Packages pip fetched at more than one version: the mark of backtracking (a re-check of one version,
    which pip also announces as "looking at multiple versions", costs nothing and is not counted)."""
    with open(pip_log, encoding="utf-8", errors="replace") as fh:
        text = fh.read()
    seen: dict[str, set[str]] = {}
    for name, version in FETCHED.findall(text):
        seen.setdefault(name.lower().replace("_", "-"), set()).add(version)
    return {n: v for n, v in seen.items() if len(v) > 1}


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
    backtracked = fetched_versions(pip_log)
    if backtracked:
        problems.append("pip backtracked while resolving (fetched several versions of one package): " +
                        "; ".join(f"{name} {', '.join(sorted(v))}" for name, v in sorted(backtracked.items())))
    for p in problems:
        print(f"check_install: {p}", file=sys.stderr)
    if not problems:
        print(f"check_install: ok (torch {torch.__version__}, no CUDA distributions, no backtracking)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
