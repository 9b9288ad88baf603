"""SkyStore gateway soak: 64 concurrent clients on loopback for a bounded time, some of them disconnecting
mid-request and some sending malformed requests.

What it measures
  The real gateway (``skystore_connector.testing.local_gateway``, one local-directory region) runs in a child
  process, so its file descriptors and memory are its own. 64 client threads hammer it until --seconds run
  out, each picking per request:
    normal      boto3: PUT (1-256 KiB), GET, ranged GET, HEAD, ListObjectsV2, DELETE, conditional PUT
                (If-None-Match: *), CopyObject, a small multipart upload;
    disconnect  a raw socket that sends a signed PUT's headers and part of its body, or reads the first bytes
                of a 4 MiB GET, then closes (half of them with a TCP reset);
    malformed   a raw socket with a broken request line, bad Content-Length, a header without a colon, a
                64 KiB header, or a signed DeleteObjects with junk XML;
    unsigned    httpx requests without a signature or with a forged one.
  Every 2 s the child's open file descriptors and resident memory are sampled.
  Pass criteria: no 500 (any 5xx but 501), file descriptors back to their idle level once the clients stop
  (no leaked handle), resident memory flat after warm-up (growth under 32 MiB from the 25% mark to the end),
  every key a client last wrote reads back with the bytes it wrote, and no write left pending.

The machine is shared: the request rate is whatever the cores give; the criteria do not depend on it.

Usage: nice -n 5 python bench/skystore_soak.py [--seconds 90] [--clients 64] [--out bench/results]
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import socket
import struct
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "bench")):
    if p not in sys.path:
        sys.path.insert(0, p)

from _common import DEFAULT_OUT, log, print_table, pyplot, save_png, write_json  # noqa: E402

NAME = "skystore_soak"
REGION = "aws-us-east-1"
BUCKET = "soak"
PART = 64 * 1024
BIG = 4 * 1024 * 1024
MEMORY_GROWTH_LIMIT_MIB = 32

CHILD = f"""
import json, os, sys
from skystore_connector.testing import local_gateway
with local_gateway([{REGION!r}], min_part_size={PART}, max_object_size=64 * 1024 * 1024) as gw:
    print(json.dumps({{"endpoint": gw.endpoint({REGION!r}), "key": gw.access_key, "secret": gw.secret_key,
                       "root": str(gw.root)}}), flush=True)
    sys.stdin.read()  # serve until the parent closes our stdin
    counts = gw.store.meta.counts()
    temps = sum(1 for d, _, files in os.walk(gw.region_dir({REGION!r})) for f in files if ".tmp" in f)
    print(json.dumps({{"counts": counts, "temp_files": temps}}), flush=True)
"""


def sample(pid: int) -> tuple[int, float]:
    """(open file descriptors, resident MiB) of ``pid``."""
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    with open(f"/proc/{pid}/status") as f:
        rss = next(int(line.split()[1]) for line in f if line.startswith("VmRSS:"))
    return fds, rss / 1024


class Soak:
    def __init__(self, info: dict, seconds: float, clients: int, seed: int):
        self.info = info
        self.host, self.port = info["endpoint"].removeprefix("http://").rsplit(":", 1)
        self.port = int(self.port)
        self.seconds, self.clients, self.seed = seconds, clients, seed
        self.statuses: Counter = Counter()
        self.kinds: Counter = Counter()
        self.server_errors: list = []
        self.client_errors: Counter = Counter()
        self.written: dict[str, str] = {}  # key -> md5 of the bytes its last successful PUT wrote
        self.lock = threading.Lock()

    # -- helpers --

    def boto(self):
        import boto3
        from botocore.config import Config as BotoConfig
        return boto3.session.Session().client(
            "s3", endpoint_url=self.info["endpoint"], aws_access_key_id=self.info["key"],
            aws_secret_access_key=self.info["secret"], region_name=REGION,
            config=BotoConfig(s3={"addressing_style": "path"}, retries={"max_attempts": 1},
                              connect_timeout=10, read_timeout=60, max_pool_connections=2))

    def signed_head(self, method: str, path: str, headers: dict, body_hash: str = "UNSIGNED-PAYLOAD") -> bytes:
        from botocore.auth import SigV4Auth
        from botocore.awsrequest import AWSRequest
        from botocore.credentials import Credentials
        request = AWSRequest(method=method, url=self.info["endpoint"] + path,
                             headers=dict(headers, **{"X-Amz-Content-SHA256": body_hash}))
        SigV4Auth(Credentials(self.info["key"], self.info["secret"]), "s3", REGION).add_auth(request)
        lines = "".join(f"{k}: {v}\r\n" for k, v in request.prepare().headers.items())
        return f"{method} {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n{lines}\r\n".encode()

    def record(self, kind: str, status: int | None, detail: str = "") -> None:
        with self.lock:
            self.kinds[kind] += 1
            if status is not None:
                self.statuses[status] += 1
                if status >= 500 and status != 501:
                    self.server_errors.append((kind, status, detail[:200]))

    def raw(self, kind: str, data: bytes, *, read: bool = True, reset: bool = False, read_bytes: int = 0) -> None:
        sock = socket.create_connection((self.host, self.port), timeout=20)
        try:
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.sendall(data)
            if read or read_bytes:
                reply = sock.recv(max(read_bytes, 4096))
                status = int(reply.split(b" ", 2)[1]) if reply.startswith(b"HTTP/1.1 ") else None
                self.record(kind, status, reply[:200].decode("latin-1"))
            else:
                self.record(kind, None)
        except (ConnectionError, socket.timeout, OSError) as e:
            with self.lock:
                self.client_errors[f"{kind}: {type(e).__name__}"] += 1
        finally:
            sock.close()

    # -- request kinds --

    def normal(self, s3, rng: random.Random, tid: int) -> None:
        from botocore.exceptions import ClientError
        key = f"t{tid}/k{rng.randrange(8)}"
        op = rng.random()
        try:
            if op < 0.3:
                data = rng.randbytes(rng.randint(1, 256) * 1024)
                s3.put_object(Bucket=BUCKET, Key=key, Body=data)
                with self.lock:
                    self.written[key] = hashlib.md5(data).hexdigest()
            elif op < 0.5:
                s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            elif op < 0.6:
                s3.get_object(Bucket=BUCKET, Key=key, Range="bytes=100-4000")["Body"].read()
            elif op < 0.68:
                s3.head_object(Bucket=BUCKET, Key=key)
            elif op < 0.76:
                s3.list_objects_v2(Bucket=BUCKET, Prefix=f"t{tid}/")
            elif op < 0.84:
                s3.delete_object(Bucket=BUCKET, Key=key)
                with self.lock:
                    self.written.pop(key, None)
            elif op < 0.9:
                data = rng.randbytes(1024)
                try:
                    s3.put_object(Bucket=BUCKET, Key=key, Body=data, IfNoneMatch="*")
                    with self.lock:
                        self.written[key] = hashlib.md5(data).hexdigest()
                except ClientError as e:
                    if e.response["Error"]["Code"] != "PreconditionFailed":
                        raise
                    self.record("normal", 412)
                    return
            elif op < 0.96:
                source = f"t{tid}/k{rng.randrange(8)}"
                s3.copy_object(Bucket=BUCKET, Key=key, CopySource={"Bucket": BUCKET, "Key": source})
                with self.lock:
                    if source in self.written:
                        self.written[key] = self.written[source]
                    else:
                        self.written.pop(key, None)
            else:
                parts = [rng.randbytes(PART), rng.randbytes(1000)]
                upload = s3.create_multipart_upload(Bucket=BUCKET, Key=key)["UploadId"]
                listed = [{"PartNumber": n, "ETag": s3.upload_part(Bucket=BUCKET, Key=key, UploadId=upload,
                                                                   PartNumber=n, Body=d)["ETag"]}
                          for n, d in enumerate(parts, 1)]
                s3.complete_multipart_upload(Bucket=BUCKET, Key=key, UploadId=upload,
                                             MultipartUpload={"Parts": listed})
                with self.lock:
                    self.written[key] = hashlib.md5(b"".join(parts)).hexdigest()
            self.record("normal", 200)
        except ClientError as e:
            status = e.response["ResponseMetadata"]["HTTPStatusCode"]
            if status == 404:  # a key this thread deleted or never wrote: an ordinary answer
                self.record("normal", 404)
            else:
                self.record("normal", status, e.response["Error"].get("Message", ""))
        except Exception as e:  # noqa: BLE001 - a transport failure is counted, not fatal
            with self.lock:
                self.client_errors[f"normal: {type(e).__name__}"] += 1

    def disconnect(self, rng: random.Random, tid: int) -> None:
        reset = rng.random() < 0.5
        if rng.random() < 0.6:
            size = rng.randint(64, 2048) * 1024
            head = self.signed_head("PUT", f"/{BUCKET}/t{tid}/cut{rng.randrange(4)}", {"Content-Length": str(size)})
            self.raw("disconnect", head + rng.randbytes(rng.randrange(size // 2)), read=False, reset=reset)
        else:
            self.raw("disconnect", self.signed_head("GET", f"/{BUCKET}/big", {}), read=False, read_bytes=2048,
                     reset=reset)

    def malformed(self, rng: random.Random, tid: int) -> None:
        choice = rng.randrange(6)
        if choice == 0:
            self.raw("malformed", rng.randbytes(200) + b"\r\n\r\n")
        elif choice == 1:
            self.raw("malformed", f"GET /{BUCKET} HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n".encode())
        elif choice == 2:
            self.raw("malformed", f"GET /{BUCKET} HTTP/1.1\r\nHost: x\r\nno colon here\r\n\r\n".encode())
        elif choice == 3:
            self.raw("malformed", f"GET /{BUCKET} HTTP/1.1\r\nHost: x\r\nX-Big: {'a' * 65536}\r\n\r\n".encode())
        else:
            body = rng.choice([b"<Delete><Object>", b"\x00\xff" * 50, b"<Delete><Object><Key></Key></Object></Delete>",
                               b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]><Delete>&x;</Delete>'])
            digest = hashlib.sha256(body).hexdigest()
            head = self.signed_head("POST", f"/{BUCKET}?delete", {"Content-Length": str(len(body))}, digest)
            self.raw("malformed", head + body)

    def unsigned(self, client, rng: random.Random, tid: int) -> None:
        import httpx
        url = f"{self.info['endpoint']}/{BUCKET}/t{tid}/k{rng.randrange(8)}"
        headers = {} if rng.random() < 0.5 else {
            "Authorization": f"AWS4-HMAC-SHA256 Credential={self.info['key']}/20260101/{REGION}/s3/aws4_request, "
                             "SignedHeaders=host, Signature=" + "0" * 64, "x-amz-date": "20260101T000000Z",
            "x-amz-content-sha256": "UNSIGNED-PAYLOAD"}
        try:
            response = client.request(rng.choice(["GET", "PUT", "DELETE"]), url, headers=headers, content=b"x")
            self.record("unsigned", response.status_code, response.text)
        except httpx.HTTPError as e:
            with self.lock:
                self.client_errors[f"unsigned: {type(e).__name__}"] += 1

    def client(self, tid: int, box: dict, start: threading.Barrier) -> None:
        import httpx
        rng = random.Random(self.seed * 1000 + tid)
        s3 = self.boto()
        start.wait()
        try:
            with httpx.Client(timeout=20) as plain:
                while time.monotonic() < box["deadline"]:
                    pick = rng.random()
                    if pick < 0.55:
                        self.normal(s3, rng, tid)
                    elif pick < 0.75:
                        self.disconnect(rng, tid)
                    elif pick < 0.9:
                        self.malformed(rng, tid)
                    else:
                        self.unsigned(plain, rng, tid)
        finally:
            s3.close()  # its keep-alive sockets would count as the gateway's open fds

    def run(self, seconds: float, pid: int, samples: list | None = None) -> float:
        """All clients for ``seconds``; samples (t, fds, rss) every 2 s into ``samples``; returns the time."""
        deadline = time.monotonic() + seconds + 60  # reset below, once every client is ready
        barrier = threading.Barrier(self.clients + 1)
        box = {"deadline": deadline}
        threads = [threading.Thread(target=self.client, args=(i, box, barrier), daemon=True)
                   for i in range(self.clients)]
        for t in threads:
            t.start()
        box["deadline"] = time.monotonic() + seconds + 30  # client setup time
        barrier.wait()
        started = time.monotonic()
        box["deadline"] = started + seconds
        while any(t.is_alive() for t in threads):
            if samples is not None:
                fds, rss = sample(pid)
                samples.append((round(time.monotonic() - started, 1), fds, round(rss, 1)))
            time.sleep(2)
        return time.monotonic() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=90)
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--warmup", type=float, default=10, help="seconds of load before the idle baseline")
    parser.add_argument("--out", default=DEFAULT_OUT)
    args = parser.parse_args()

    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]))
    gateway_log = Path(args.out) / f"{NAME}.gateway.log"
    gateway_log.parent.mkdir(parents=True, exist_ok=True)
    child = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=open(gateway_log, "w"), env=env, text=True)
    try:
        info = json.loads(child.stdout.readline())
        soak = Soak(info, args.seconds, args.clients, args.seed)
        setup = soak.boto()
        setup.create_bucket(Bucket=BUCKET)
        setup.put_object(Bucket=BUCKET, Key="big", Body=os.urandom(BIG))
        time.sleep(1)
        cold_fds, cold_rss = sample(child.pid)
        # a short warm-up fills the pools (database connections, worker threads) the soak then reuses
        soak.run(args.warmup, child.pid)
        time.sleep(3)
        idle_fds, idle_rss = sample(child.pid)
        soak.kinds.clear(), soak.statuses.clear()
        log(f"gateway pid {child.pid}: {cold_fds} fds cold, {idle_fds} fds / {idle_rss:.1f} MiB after warm-up; "
            f"{args.clients} clients for {args.seconds:g} s")
        samples = []  # (seconds, fds, rss MiB)
        elapsed = soak.run(args.seconds, child.pid, samples)
        time.sleep(3)  # let the gateway finish what the last clients left (drains, closes)
        drained_fds, drained_rss = sample(child.pid)
        samples.append((round(elapsed + 3, 1), drained_fds, round(drained_rss, 1)))

        corrupt = []
        for key, md5 in sorted(soak.written.items()):
            body = setup.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            if hashlib.md5(body).hexdigest() != md5:
                corrupt.append(key)
        child.stdin.close()
        after = json.loads(child.stdout.readline())
    finally:
        if child.poll() is None:
            child.stdin.close() if not child.stdin.closed else None
            try:
                child.wait(30)
            except subprocess.TimeoutExpired:
                child.kill()

    loaded = [s for s in samples if s[0] >= 0.25 * args.seconds]
    growth = loaded[-1][2] - loaded[0][2] if len(loaded) > 1 else 0.0
    requests = sum(soak.kinds.values())
    pending = {k: v for k, v in after["counts"].items() if k.endswith(".pending") and v}
    logged = gateway_log.read_text(errors="replace")
    tracebacks = logged.count("Traceback (most recent call last)")
    result = {
        "clients": args.clients, "seconds": round(elapsed, 1), "requests": requests,
        "requests_per_second": round(requests / elapsed, 1), "by_kind": dict(soak.kinds),
        "statuses": dict(sorted(soak.statuses.items())), "server_errors": len(soak.server_errors),
        "server_error_samples": soak.server_errors[:5], "client_side_transport_errors": dict(soak.client_errors),
        "fds": {"cold": cold_fds, "idle_after_warmup": idle_fds, "max_under_load": max(s[1] for s in samples), "after_drain": drained_fds},
        "rss_mib": {"idle": round(idle_rss, 1), "at_25pct": loaded[0][2] if loaded else None,
                    "end": loaded[-1][2] if loaded else None, "max": max(s[2] for s in samples),
                    "growth_after_warmup": round(growth, 1)},
        "keys_checked": len(soak.written), "keys_corrupt": corrupt, "pending_rows_after": pending,
        "temp_files_after": after["temp_files"], "gateway_tracebacks": tracebacks,
        "gateway_log": str(gateway_log), "samples": samples,
    }
    checks = {"no 500": result["server_errors"] == 0 and tracebacks == 0,
              # pools may open a few more connections under load; a leak grows with the requests served
              "no leaked fd": drained_fds <= idle_fds + 8,
              "memory flat": growth < MEMORY_GROWTH_LIMIT_MIB,
              "data intact": not corrupt,
              "nothing pending": not pending and after["temp_files"] == 0}
    result["checks"] = checks
    result["passed"] = all(checks.values())
    write_json(result, args.out, NAME)
    print_table(["kind", "requests"], sorted(soak.kinds.items()), title="requests by kind")
    print_table(["status", "count"], sorted(soak.statuses.items()), title="answers")
    print_table(["figure", "value"], [
        ["requests/s", result["requests_per_second"]], ["fds idle / max / after", f"{idle_fds} / "
         f"{result['fds']['max_under_load']} / {drained_fds}"],
        ["RSS MiB idle / 25% / end / max", f"{result['rss_mib']['idle']} / {result['rss_mib']['at_25pct']} / "
         f"{result['rss_mib']['end']} / {result['rss_mib']['max']}"],
        ["keys checked / corrupt", f"{len(soak.written)} / {len(corrupt)}"]]
        + [[name, "ok" if ok else "FAILED"] for name, ok in checks.items()], title="soak")

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([s[0] for s in samples], [s[2] for s in samples], label="gateway RSS (MiB)")
    ax.set_xlabel("seconds")
    ax.set_ylabel("MiB")
    ax2 = ax.twinx()
    ax2.plot([s[0] for s in samples], [s[1] for s in samples], color="tab:orange", label="open fds")
    ax2.set_ylabel("open file descriptors")
    ax.set_title(f"SkyStore soak: {args.clients} clients, {requests} requests, {result['server_errors']} 5xx")
    fig.legend(loc="lower right")
    save_png(fig, NAME, args.out)
    sys.exit(0 if result["passed"] else 1)


if __name__ == "__main__":
    main()
