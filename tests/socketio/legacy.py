"""socketio_pg's live-test client: socketIO-client 0.7.2 (Engine.IO 3; polling, then WebSocket).

    python3 legacy.py <host> <port> <channel> <rounds>

Prints one JSON line: {"hello": …, "transport": …, "rounds": [[first, second], …], "disconnect_secs": s}
where each round lists the two events its test_pub brought, in arrival order.
"""
import json
import sys
import time

from socketIO_client import SocketIO
from socketIO_client.exceptions import TimeoutError as RecvTimeout

host, port, channel, rounds = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4])
seen = []


def relay(name):
    return lambda data=None: seen.append([name, data])


t0 = time.time()
sio = SocketIO(host, port)
connected_secs = time.time() - t0
for name in ["server_hello", "subscribed", "published", "event", "error"]:
    sio.on(name, relay(name))


def pump():
    """What `wait` does, with a short receive timeout: `wait` sets one second, so every call would
    sit a second on the WebSocket once the expected packets are in."""
    sio._transport.set_timeout(seconds=0.05)
    try:
        sio._process_packets()
    except RecvTimeout:
        pass


def wait_for(done, timeout=10):
    end = time.time() + timeout
    while not done() and time.time() < end:
        pump()
    if not done():
        raise SystemExit(json.dumps({"timeout": True, "seen": seen}))


wait_for(lambda: any(e[0] == "server_hello" for e in seen))
hello = next(e[1] for e in seen if e[0] == "server_hello")
sio.emit("subscribe", {"channel": channel})
wait_for(lambda: any(e[0] == "subscribed" for e in seen))
order = []
for r in range(rounds):
    start = len(seen)
    sio.emit("test_pub", {"channel": channel, "payload": {"round": r}})
    wait_for(lambda: len([e for e in seen[start:] if e[0] in ("published", "event")]) >= 2)
    order.append([e[0] for e in seen[start:] if e[0] in ("published", "event")][:2])
transport = sio.transport_name
began = time.time()
sio.disconnect()
print(json.dumps({
    "hello": hello,
    "transport": transport,
    "rounds": order,
    "errors": [e for e in seen if e[0] == "error"],
    "disconnect_secs": time.time() - began,
    "connect_secs": connected_secs,
    "total_secs": time.time() - t0,
}), flush=True)
