#!/usr/bin/env python3
"""Bounded scrape load on a loopback metrics endpoint: RATE GET /metrics a second until the
endpoint goes away (the run ended) or MAX_SECONDS pass. Prints requests made and failures.
Usage: scrape_load.py PORT RATE MAX_SECONDS"""
import socket
import sys
import time

port, rate, max_seconds = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
assert 0 < rate <= 100 and 0 < max_seconds <= 3600
done = failed = 0
t0 = time.time()
while time.time() - t0 < max_seconds:
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=2)
    except OSError:
        break  # the trainer closed its endpoint
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        body = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        ok = body.startswith(b"HTTP/1.1 200 OK") and b"dstrain_step " in body
        done += ok
        failed += not ok
    except OSError:
        failed += 1
    finally:
        s.close()
    next_at = t0 + (done + failed) / rate
    time.sleep(max(0.0, next_at - time.time()))
print("scrapes %d failed %d in %.1fs" % (done, failed, time.time() - t0))
