#!/usr/bin/env python3
"""Holds many half-sent requests against a running service, as one hostile client would,
and reports whether others are still served meanwhile.

Opens --connections connections, sends each a request line and one header and never
finishes the head, holds them for --hold seconds, then lets go. Every second it times a
GET /healthz and a payment, each on a new connection, and reads the service's memory
and open descriptors from /proc (--pid, or the pid in .data/wallet.pid). Needs an
open-files limit above --connections (`ulimit -n`).

    ./loadtest/slow-clients.py --connections 20000 --hold 30
"""

import argparse
import json
import os
import selectors
import socket
import time
import urllib.error
import urllib.request
import uuid


def proc_status(pid):
    """VmRSS and VmHWM in MiB, and the number of open descriptors."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    fields[key] = int(value.split()[0]) / 1024
        fields["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        pass
    return fields


def timed(request, timeout):
    started = time.monotonic()
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as e:
        status = e.code
    except OSError as e:
        status = type(e).__name__
    return status, (time.monotonic() - started) * 1000


def call(base, key, method, path, body=None):
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(base + path, data=data, method=method)
    request.add_header("Authorization", f"Bearer {key}")
    if data is not None:
        request.add_header("Content-Type", "application/json")
    return request


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8080")
    parser.add_argument("--connections", type=int, default=20_000)
    parser.add_argument("--hold", type=float, default=30)
    parser.add_argument("--after", type=float, default=10, help="seconds watched after letting go")
    parser.add_argument("--pid", type=int)
    parser.add_argument("--checkout-key", default="dev-checkout-key")
    parser.add_argument("--funding-key", default="dev-funding-key")
    args = parser.parse_args()
    pid = args.pid
    if pid is None and os.path.exists(".data/wallet.pid"):
        pid = int(open(".data/wallet.pid").read())
    host, port = args.url.removeprefix("http://").split(":")
    base = args.url

    user = f"slow-{uuid.uuid4().hex[:8]}"
    urllib.request.urlopen(call(base, args.checkout_key, "POST", "/api/v1/wallets", {"userId": user}), timeout=5)
    urllib.request.urlopen(
        call(base, args.funding_key, "POST", f"/api/v1/wallets/{user}/top-ups",
             {"topUpId": f"{user}-t", "amount": "1000000"}),
        timeout=5,
    )

    def probe(label):
        health = timed(urllib.request.Request(base + "/healthz"), 5)
        order = f"{user}-{uuid.uuid4().hex[:8]}"
        pay = timed(call(base, args.checkout_key, "POST", "/api/v1/payments",
                         {"orderId": order, "userId": user, "amount": "10"}), 5)
        print(json.dumps({
            "t": label,
            "held": held_open(),
            "healthz": [health[0], round(health[1], 1)],
            "payment": [pay[0], round(pay[1], 1)],
            **({k: round(v, 1) for k, v in proc_status(pid).items()} if pid else {}),
        }), flush=True)

    selector = selectors.DefaultSelector()
    sockets = []

    def held_open():
        for key, _ in selector.select(timeout=0):
            s = key.fileobj
            try:
                data = s.recv(4096)
            except OSError:
                data = b""
            if not data:
                selector.unregister(s)
                s.close()
                sockets.remove(s)
        return len(sockets)

    probe("before")
    started = time.monotonic()
    for _ in range(args.connections):
        s = socket.socket()
        try:
            s.connect((host, int(port)))
            s.sendall(b"POST /api/v1/payments HTTP/1.1\r\nHost: wallet\r\n")
        except OSError as e:
            print(json.dumps({"connect_failed": type(e).__name__, "opened": len(sockets)}), flush=True)
            s.close()
            break
        s.setblocking(False)
        selector.register(s, selectors.EVENT_READ)
        sockets.append(s)
    print(json.dumps({"opened": len(sockets), "seconds": round(time.monotonic() - started, 1)}), flush=True)
    deadline = time.monotonic() + args.hold
    while time.monotonic() < deadline:
        probe(f"held {round(time.monotonic() - started)} s")
        time.sleep(1)
    for s in sockets:
        selector.unregister(s)
        s.close()
    sockets.clear()
    let_go = time.monotonic()
    while time.monotonic() - let_go < args.after:
        time.sleep(1)
        probe(f"released {round(time.monotonic() - let_go)} s")


if __name__ == "__main__":
    main()
