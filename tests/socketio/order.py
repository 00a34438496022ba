"""Many python-socketio clients in one process, each publishing on shared channels: does every client
see its own `published` before the `event` its `test_pub` caused? (socketio_pg's load test reads
them in that order.)

    python3 order.py <url> <transport> <clients> <rounds> [channels]

Prints one JSON line: {"clients": n, "rounds": r, "checked": k, "violations": [...], "failures": [...]}.
"""
import asyncio
import json
import sys

import socketio

url, transport = sys.argv[1], sys.argv[2]
clients, rounds = int(sys.argv[3]), int(sys.argv[4])
channels = int(sys.argv[5]) if len(sys.argv) > 5 else 5
TIMEOUT = 20


async def client(i, ready, go, report):
    sio = socketio.AsyncClient(reconnection=False)
    log = []
    arrived = asyncio.Event()

    async def on_published(data):
        log.append(("published", data.get("channel")))
        arrived.set()

    async def on_event(data):
        payload = data.get("payload") if isinstance(data, dict) else None
        if isinstance(payload, dict) and payload.get("client") == i:
            log.append(("event", payload.get("round")))
            arrived.set()

    async def on_subscribed(data):
        log.append(("subscribed", data.get("channel")))
        arrived.set()

    async def on_error(data):
        report["failures"].append({"client": i, "error": data})
        arrived.set()

    sio.on("published", on_published)
    sio.on("event", on_event)
    sio.on("subscribed", on_subscribed)
    sio.on("error", on_error)
    channel = f"shared{i % channels}"
    try:
        await sio.connect(url, transports=[transport], wait_timeout=TIMEOUT)
        await sio.emit("subscribe", {"channel": channel})
        await wait_for(log, arrived, lambda: ("subscribed", channel) in log)
        ready.set_result(None) if not ready.done() else None
        await go.wait()
        for r in range(rounds):
            start = len(log)
            await sio.emit("test_pub", {"channel": channel, "payload": {"client": i, "round": r}})
            await wait_for(
                log,
                arrived,
                lambda: ("event", r) in log[start:] and ("published", channel) in log[start:],
            )
            seen = log[start:]
            report["checked"] += 1
            if seen.index(("published", channel)) > seen.index(("event", r)):
                report["violations"].append({"client": i, "round": r, "seen": seen})
    except Exception as e:  # a timeout or a refused connection: reported, not raised
        report["failures"].append({"client": i, "error": repr(e)})
        if not ready.done():
            ready.set_result(None)
    finally:
        try:
            await sio.disconnect()
        except Exception:
            pass


async def wait_for(log, arrived, done):
    async def loop():
        while not done():
            arrived.clear()
            if done():
                return
            await arrived.wait()

    await asyncio.wait_for(loop(), TIMEOUT)


async def main():
    report = {"clients": clients, "rounds": rounds, "checked": 0, "violations": [], "failures": []}
    go = asyncio.Event()
    readies = [asyncio.get_running_loop().create_future() for _ in range(clients)]
    tasks = [asyncio.create_task(client(i, readies[i], go, report)) for i in range(clients)]
    await asyncio.gather(*readies)
    go.set()
    await asyncio.gather(*tasks)
    print(json.dumps(report), flush=True)


asyncio.run(main())
