"""SkyStore gateway throughput on loopback: boto3 GET and PUT through the gateway vs the same files directly.

What it measures
  One gateway (``skystore_connector.testing.local_gateway``, one local-directory region) on 127.0.0.1, one
  boto3 client. For 1 MiB and 64 MiB objects of random bytes:
    direct read     open + read of the object's blob file in the region directory (page cache warm);
    gateway GET     get_object(...)["Body"].read() (SigV4, HTTP/1.1 over loopback, blob read by the store);
    direct write    open + write + fsync of a new file in the same file system (what the store does per blob);
    gateway PUT     put_object with boto3's defaults over plain HTTP (the payload SHA-256 signed, a CRC32
                    header: both hashed by the client and verified by the gateway, plus the store's MD5);
    gateway PUT unsigned  the same with payload_signing_enabled=False (UNSIGNED-PAYLOAD, as over TLS).
  Each figure is the median (and the best) of --repeat rounds after one warm-up, as MiB/s; the operations take
  turns within a round. Ratios gateway / direct are taken in the same run. Aim: GET at least half of direct
  reads. (A 1 MiB GET is one HTTP request: its cost is latency, ~2-5 ms of boto3 and gateway work, against
  a 0.1 ms page-cache read, so the aim is about large objects.)

The machine is shared: timings are noisy, ratios within one run are what to compare.

Usage: python bench/skystore_throughput.py [--quick] [--repeat N] [--out bench/results]
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from _common import DEFAULT_OUT, log, print_table, save_bar_chart, write_json  # noqa: E402
from skystore_connector.testing import local_gateway  # noqa: E402

NAME = "skystore_throughput"
MiB = 1024 * 1024
SIZES = {"1MiB": 1 * MiB, "64MiB": 64 * MiB}
REGION = "aws-us-east-1"
BUCKET = "bench"
TARGET_GET_RATIO = 0.5


def timed_interleaved(ops: dict, repeat: int) -> tuple[dict, dict]:
    """Median and best seconds of each op over ``repeat`` rounds (after one warm-up round); the ops take turns
    within a round, so a burst of load from elsewhere hits all of them alike."""
    for fn in ops.values():
        fn()
    times = {name: [] for name in ops}
    for _ in range(repeat):
        for name, fn in ops.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return ({n: statistics.median(t) for n, t in times.items()}, {n: min(t) for n, t in times.items()})


def blob_path(gw, key: str) -> Path:
    version, copies = gw.store.meta.current(BUCKET, key)
    return gw.region_dir(REGION) / next(c.path for c in copies if c.region == REGION)


def read_file(path: Path) -> int:
    with open(path, "rb", buffering=0) as f:
        return len(f.read())


def write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def measure(gw, label: str, size: int, repeat: int, scratch: Path) -> dict:
    data = os.urandom(size)
    client = gw.client(REGION)
    unsigned = gw.client(REGION, s3={"addressing_style": "path", "payload_signing_enabled": False})
    key = f"object-{label}"
    client.put_object(Bucket=BUCKET, Key=key, Body=data)
    path = blob_path(gw, key)

    def gateway_get() -> None:
        body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
        assert len(body) == size

    median, best = timed_interleaved({
        "direct read": lambda: read_file(path),
        "gateway GET": gateway_get,
        "direct write": lambda: write_file(scratch / f"direct-{label}", data),
        "gateway PUT": lambda: client.put_object(Bucket=BUCKET, Key=f"put-{label}", Body=data),
        "gateway PUT unsigned": lambda: unsigned.put_object(Bucket=BUCKET, Key=f"put-u-{label}", Body=data),
    }, repeat)
    mib_s = {k: round(size / MiB / v, 1) for k, v in median.items()}
    best_mib_s = {k: round(size / MiB / v, 1) for k, v in best.items()}
    result = {"bytes": size, "repeat": repeat, "median_seconds": {k: round(v, 5) for k, v in median.items()},
              "mib_per_s": mib_s, "best_mib_per_s": best_mib_s,
              "get_ratio": round(mib_s["gateway GET"] / mib_s["direct read"], 3),
              "get_ratio_best": round(best_mib_s["gateway GET"] / best_mib_s["direct read"], 3),
              "put_ratio": round(mib_s["gateway PUT"] / mib_s["direct write"], 3),
              "put_unsigned_ratio": round(mib_s["gateway PUT unsigned"] / mib_s["direct write"], 3)}
    log(f"{label}: {mib_s} GET ratio {result['get_ratio']} PUT ratio {result['put_ratio']}")
    return result


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="3 runs per figure")
    ap.add_argument("--repeat", type=int, default=9)
    ap.add_argument("--out", default=DEFAULT_OUT)
    args = ap.parse_args()
    repeat = 3 if args.quick else args.repeat
    results = {}
    with local_gateway([REGION]) as gw, tempfile.TemporaryDirectory(prefix="skystore-direct-",
                                                                    dir=gw.root) as scratch:
        gw.client(REGION).create_bucket(Bucket=BUCKET)
        for label, size in SIZES.items():
            results[label] = measure(gw, label, size, repeat, Path(scratch))
    target = {"get_ratio_at_least": TARGET_GET_RATIO}
    for label, r in results.items():
        target[f"get_ratio_{label}"] = r["get_ratio"]
        target[f"met_{label}"] = r["get_ratio"] >= TARGET_GET_RATIO
    report = {"quick": args.quick, "cpus": os.cpu_count(), "load_average": os.getloadavg(), "sizes": results,
              "target": target}
    write_json(report, args.out, NAME)
    rows = [[label, op, r["mib_per_s"][op], r["best_mib_per_s"][op], r["median_seconds"][op]]
            for label, r in results.items() for op in r["mib_per_s"]]
    print_table(["size", "operation", "MiB/s (median)", "MiB/s (best)", "median s"], rows,
                title="SkyStore gateway throughput (loopback)")
    print_table(["size", "GET / read", "GET / read (best)", "PUT / write", "PUT unsigned / write"],
                [[label, r["get_ratio"], r["get_ratio_best"], r["put_ratio"], r["put_unsigned_ratio"]]
                 for label, r in results.items()], title="gateway / direct (same run, medians unless marked)")
    save_bar_chart({f"{op.split()[-1]} {label}": {"direct": r["mib_per_s"]["direct read" if "GET" in op else
                                                                            "direct write"],
                                                  "gateway": r["mib_per_s"][op]}
                    for label, r in results.items() for op in ("gateway GET", "gateway PUT")},
                   "MiB/s", "SkyStore gateway vs direct file I/O (loopback, higher is better)", args.out, NAME)
    return 0


if __name__ == "__main__":
    sys.exit(main())
