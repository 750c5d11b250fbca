#!/usr/bin/env python3
"""Hostile clients against a dstrain metrics endpoint on loopback, bounded in count and time:
an oversized head, garbage, 100 connections held at once, and a slow client. Prints one line per
check and exits 1 when the server answered any of them wrongly. Usage: hostile_clients.py PORT"""
import socket
import sys
import time

port = int(sys.argv[1])
failures = 0


def check(name, ok, detail=""):
    global failures
    print(("ok   " if ok else "FAIL ") + name + (": " + detail if detail and not ok else ""))
    failures += 0 if ok else 1


def exchange(data, timeout=5.0):
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass  # the server may close before the whole request is sent
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk
    except (socket.timeout, ConnectionResetError):
        return out
    finally:
        s.close()


r = exchange(b"GET /metrics HTTP/1.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
check("oversized head gets 431", r.startswith(b"HTTP/1.1 431 "), repr(r[:40]))
for junk in (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", b"HELLO\r\n\r\n",
             b"GET /metrics HTTP/9.9\r\n\r\n"):
    r = exchange(junk)
    check("garbage %r gets 400" % junk[:8], r.startswith(b"HTTP/1.1 400 "), repr(r[:40]))

held = [socket.create_connection(("127.0.0.1", port), timeout=5) for _ in range(100)]
time.sleep(0.5)
closed = 0
for s in held:
    s.setblocking(False)
    try:
        closed += s.recv(1) == b""
    except BlockingIOError:
        pass
for s in held:
    s.close()
time.sleep(0.5)  # the server sees the closes and frees the slots
check("100 connections: those over the cap of 64 closed", closed == 36, "closed %d" % closed)

t0 = time.time()
s = socket.create_connection(("127.0.0.1", port), timeout=15)
s.sendall(b"GET /metr")
try:
    r = s.recv(1)
except (socket.timeout, ConnectionResetError):
    r = None
waited = time.time() - t0
s.close()
check("slow client closed after the timeout", r == b"" and 4 < waited < 12, "%r after %.1fs" % (r, waited))

time.sleep(0.2)
r = exchange(b"GET /healthz HTTP/1.1\r\n\r\n")
check("healthz still answers", r.startswith(b"HTTP/1.1 200 OK") and r.endswith(b"ok\n"), repr(r))
sys.exit(1 if failures else 0)
