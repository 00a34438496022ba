"""A python-socketio client driven over stdio, for the end-to-end tests.

    python3 client.py <url> <auth JSON or "-"> [transport]

stdin: one JSON command per line: {"emit": "<event>", "data": <value>} or {"close": true}.
stdout: one JSON line per thing that happened: {"event": "<name>", "data": <value>}.
"""
import json
import sys
import threading

import socketio

url, auth_arg = sys.argv[1], sys.argv[2]
transports = [sys.argv[3]] if len(sys.argv) > 3 else None
auth = None if auth_arg == "-" else json.loads(auth_arg)
lock = threading.Lock()


def out(event, data=None):
    with lock:
        sys.stdout.write(json.dumps({"event": event, "data": data}) + "\n")
        sys.stdout.flush()


sio = socketio.Client(reconnection=False)


@sio.event
def connect():
    out("connect", {"transport": sio.transport()})


@sio.event
def connect_error(data):
    out("connect_error", data if isinstance(data, dict) else {"message": str(data)})


@sio.event
def disconnect(reason=None):
    out("disconnect", {"reason": str(reason)})


def relay(name):
    sio.on(name, lambda data=None: out(name, data))


for name in ["server_hello", "subscribed", "unsubscribed", "event", "published", "error"]:
    relay(name)

try:
    sio.connect(url, auth=auth, transports=transports, wait_timeout=10)
except socketio.exceptions.ConnectionError as e:
    out("connect_error", {"message": str(e)})

for line in sys.stdin:
    if not line.strip():
        continue
    cmd = json.loads(line)
    if cmd.get("close"):
        break
    if "data" in cmd:
        sio.emit(cmd["emit"], cmd["data"])
    else:
        sio.emit(cmd["emit"])
try:
    sio.disconnect()
except Exception:
    pass
