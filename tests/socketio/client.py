"""A python-socketio client driven over stdio, for the end-to-end tests.

    python3 client.py <url> <auth JSON or "-"> [transport]

stdin: one JSON command per line: {"emit": "<event>", "data": <value>} or {"close": true}.
stdout: one JSON line per thing that happened: {"event": "<name>", "data": <value>}.

It uses `socketio.AsyncClient`: the synchronous `socketio.Client` hands every incoming message to a new
thread (python-engineio's `run_async=True`), so its handlers may see messages out of the order the server
sent them. The asyncio client starts one task per message in arrival order, and handlers that do not
await run in that order.
"""
import asyncio
import json
import sys

import socketio

url, auth_arg = sys.argv[1], sys.argv[2]
transports = [sys.argv[3]] if len(sys.argv) > 3 else None
auth = None if auth_arg == "-" else json.loads(auth_arg)


def out(event, data=None):
    sys.stdout.write(json.dumps({"event": event, "data": data}) + "\n")
    sys.stdout.flush()


sio = socketio.AsyncClient(reconnection=False)


@sio.event
async def connect():
    out("connect", {"transport": sio.transport()})


@sio.event
async def connect_error(data):
    out("connect_error", data if isinstance(data, dict) else {"message": str(data)})


@sio.event
async def disconnect(reason=None):
    out("disconnect", {"reason": str(reason)})


def relay(name):
    async def handler(data=None):
        out(name, data)

    sio.on(name, handler)


for name in ["server_hello", "subscribed", "unsubscribed", "event", "published", "error"]:
    relay(name)


async def main():
    try:
        await sio.connect(url, auth=auth, transports=transports, wait_timeout=10)
    except socketio.exceptions.ConnectionError as e:
        out("connect_error", {"message": str(e)})
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            break
        if not line.strip():
            continue
        cmd = json.loads(line)
        if cmd.get("close"):
            break
        if "data" in cmd:
            await sio.emit(cmd["emit"], cmd["data"])
        else:
            await sio.emit(cmd["emit"])
    try:
        await sio.disconnect()
    except Exception:
        pass


asyncio.run(main())
