#!/usr/bin/env python3
"""The agent's side of bench/credential-gateway.sh: requests to the Messages API mock, either
through the credential gateway (plain HTTP on loopback) or directly (TLS, verified against the
bench's CA), on one kept-alive connection per thread.

    api-client.py TARGET latency N              N small POSTs one after another: p50 p99 in ms
    api-client.py TARGET upload N BYTES         N POSTs of BYTES each: MB/s
    api-client.py TARGET download N BYTES       N GETs of BYTES each: MB/s
    api-client.py TARGET streams C SECONDS      C concurrent event streams for SECONDS: events

TARGET is `gateway` (http://127.0.0.1:10080) or `direct:ADDRESS:CA_FILE` (https to ADDRESS:443,
certificate checked for api.anthropic.com)."""
import http.client
import socket
import ssl
import sys
import threading
import time

target, mode = sys.argv[1], sys.argv[2]


def connect():
    if target == "gateway":
        return http.client.HTTPConnection("127.0.0.1", 10080, timeout=30)
    _, address, ca = target.split(":", 2)
    context = ssl.create_default_context(cafile=ca)
    raw = socket.create_connection((address, 443), timeout=30)
    raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    conn = http.client.HTTPConnection("api.anthropic.com", 443, timeout=30)
    conn.sock = context.wrap_socket(raw, server_hostname="api.anthropic.com")
    return conn


HEADERS = {"x-api-key": "the-agents-own-or-a-placeholder", "content-type": "application/json"}


def request(conn, method, path, body=None):
    conn.request(method, path, body=body, headers=HEADERS)
    response = conn.getresponse()
    data = response.read()
    if response.status != 200:
        sys.exit(f"{method} {path}: {response.status} {data[:200]!r}")
    return data


def percentile(values, p):
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * p))]


if mode == "latency":
    n = int(sys.argv[3])
    conn = connect()
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}]}'
    request(conn, "POST", "/v1/messages/count_tokens", body)  # the connection is open now
    times = []
    for _ in range(n):
        start = time.perf_counter()
        request(conn, "POST", "/v1/messages/count_tokens", body)
        times.append((time.perf_counter() - start) * 1e3)
    print(f"{percentile(times, 0.5):.3f} {percentile(times, 0.99):.3f}")
elif mode in ("upload", "download"):
    n, size = int(sys.argv[3]), int(sys.argv[4])
    conn = connect()
    payload = b"y" * size
    start = time.perf_counter()
    for _ in range(n):
        if mode == "upload":
            request(conn, "POST", "/v1/messages/count_tokens", payload)
        else:
            got = request(conn, "GET", f"/v1/models/testkit-download?bytes={size}")
            assert len(got) == size
    print(f"{n * size / (time.perf_counter() - start) / 1e6:.1f}")
elif mode == "streams":
    count, seconds = int(sys.argv[3]), float(sys.argv[4])
    events = [0] * count

    def stream(i):
        conn = connect()
        conn.request("GET", f"/v1/models/testkit-sse?events={int(seconds * 10)}&interval_ms=100",
                     headers=HEADERS)
        response = conn.getresponse()
        while True:
            line = response.readline()
            if not line:
                break
            if line.startswith(b"data: "):
                events[i] += 1

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    print(sum(events))
else:
    sys.exit(f"unknown mode {mode}")
