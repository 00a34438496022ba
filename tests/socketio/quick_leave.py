"""Polling-only python-socketio clients that disconnect right after connecting: how long does each
disconnect take?

    python3 quick_leave.py <url> <clients>

Prints one JSON line: {"disconnect_secs": [...], "failures": [...]}.
"""
import asyncio
import json
import sys
import time

import socketio

url, clients = sys.argv[1], int(sys.argv[2])


async def client(i, report):
    sio = socketio.AsyncClient(reconnection=False)
    try:
        await sio.connect(url, transports=["polling"], wait_timeout=10)
        began = time.monotonic()
        await sio.disconnect()
        report["disconnect_secs"].append(time.monotonic() - began)
    except Exception as e:
        report["failures"].append({"client": i, "error": repr(e)})


async def main():
    report = {"disconnect_secs": [], "failures": []}
    await asyncio.gather(*(client(i, report) for i in range(clients)))
    print(json.dumps(report), flush=True)


asyncio.run(main())
