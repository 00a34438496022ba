// 1,000 socket.io clients subscribing and unsubscribing at random, for the end-to-end test of
// reference-counted LISTEN/UNLISTEN.
//
//   node churn.mjs <base url> <token (tenant, channels ch_*, mode rw)> <clients> <channels> <ops per client>
//
// Each client connects (socket.io-client 4.x, WebSocket), then does <ops> random toggles: subscribe to
// a channel it does not hold, or unsubscribe from one it holds, each awaited; then every client leaves
// a quarter of the channels (picked at random once), so some end with no subscriber. Then one extra client
// test_pubs once on every channel and every churn client must receive exactly one event per channel it
// still holds, and nothing else. Prints one JSON line: {"subscribed": [channels with a subscriber],
// "delivered_ok": bool, ...}, keeps every client connected until stdin closes, then disconnects them.
import { createRequire } from "node:module";
const require = createRequire(import.meta.url);
const { io } = require("socket.io-client");

const [base, token, nClients, nChannels, nOps] = process.argv.slice(2);
const clients = Number(nClients), channels = Number(nChannels), ops = Number(nOps);
const name = (i) => `ch_${i}`;

function once(socket, event, timeoutMs = 20000) {
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error(`no ${event} within ${timeoutMs} ms`)), timeoutMs);
    socket.once(event, (data) => { clearTimeout(t); resolve(data); });
    socket.once("error", (e) => { clearTimeout(t); reject(new Error(`error: ${JSON.stringify(e)}`)); });
  });
}

function connect() {
  const socket = io(base, { auth: { token }, transports: ["websocket"], forceNew: true, reconnection: false });
  return Promise.race([
    once(socket, "server_hello").then(() => socket),
    new Promise((_, reject) => socket.once("connect_error", (e) => reject(e))),
  ]);
}

async function churn(socket, held) {
  for (let k = 0; k < ops; k++) {
    const c = name(Math.floor(Math.random() * channels));
    if (held.has(c)) {
      const ack = once(socket, "unsubscribed");
      socket.emit("unsubscribe", { channel: c });
      await ack;
      held.delete(c);
    } else {
      const ack = once(socket, "subscribed");
      socket.emit("subscribe", { channel: c });
      await ack;
      held.add(c);
    }
  }
}

const sockets = [];
for (let i = 0; i < clients; i += 100) {
  const batch = await Promise.all(Array.from({ length: Math.min(100, clients - i) }, connect));
  sockets.push(...batch);
}
const held = sockets.map(() => new Set());
const received = sockets.map(() => []);
sockets.forEach((s, i) => s.on("event", (e) => received[i].push(e.channel)));
await Promise.all(sockets.map((s, i) => churn(s, held[i])));
const dropped = new Set();
while (dropped.size < Math.ceil(channels / 4)) dropped.add(name(Math.floor(Math.random() * channels)));
await Promise.all(sockets.map(async (s, i) => {
  for (const c of [...held[i]].filter((c) => dropped.has(c))) {
    const ack = once(s, "unsubscribed");
    s.emit("unsubscribe", { channel: c });
    await ack;
    held[i].delete(c);
  }
}));

const subscribed = [...new Set(held.flatMap((h) => [...h]))].sort();
const expected = held.reduce((n, h) => n + h.size, 0);

const publisher = await connect();
for (let c = 0; c < channels; c++) {
  const ack = once(publisher, "published");
  publisher.emit("test_pub", { channel: name(c), payload: { c } });
  await ack;
}
const deadline = Date.now() + 15000;
const count = () => received.reduce((n, r) => n + r.length, 0);
while (count() < expected && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
await new Promise((r) => setTimeout(r, 300)); // any stray event would arrive by now

let delivered_ok = true;
const problems = [];
received.forEach((r, i) => {
  const want = [...held[i]].sort().join(",");
  const got = [...r].sort().join(",");
  if (want !== got) {
    delivered_ok = false;
    if (problems.length < 5) problems.push({ client: i, want, got });
  }
});
console.log(JSON.stringify({ subscribed, expected_events: expected, received_events: count(), delivered_ok, problems }));
process.stdin.resume();
process.stdin.on("end", () => {
  for (const s of [...sockets, publisher]) s.close();
  setTimeout(() => process.exit(0), 200);
});
