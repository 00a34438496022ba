// A socket.io client driven over stdio, for the end-to-end tests.
//
//   node client.mjs <v4|v2> <url> <auth JSON or "-"> [transport]
//
// The auth JSON may carry "extraHeaders": {name: value}, sent with every HTTP request of the
// connection (Node only) instead of being part of the auth payload.
//
// stdin: one JSON command per line: {"emit": "<event>", "data": <value>} (data omitted: no argument)
//        or {"close": true}.
// stdout: one JSON line per thing that happened: {"event": "<name>", "data": <value>}, where name is a
//         server event or one of connect, connect_error, disconnect.
import { createRequire } from "node:module";
import readline from "node:readline";

const require = createRequire(import.meta.url);
const [kind, url, authArg, transport] = process.argv.slice(2);
let auth = authArg && authArg !== "-" ? JSON.parse(authArg) : null;
let extraHeaders = null;
if (auth && auth.extraHeaders) {
  ({ extraHeaders, ...auth } = auth);
  if (Object.keys(auth).length === 0) auth = null;
}
const out = (event, data) => process.stdout.write(JSON.stringify({ event, data: data ?? null }) + "\n");

let socket;
if (kind === "v2") {
  // The 2.x client has no auth payload: socketio_pg's clients put everything in the query string.
  const io = require("socket.io-client-v2");
  const opts = { forceNew: true, reconnection: false };
  if (auth) opts.query = auth;
  if (transport) opts.transports = [transport];
  if (extraHeaders) opts.extraHeaders = extraHeaders;
  socket = io(url, opts);
} else {
  const { io } = require("socket.io-client");
  const opts = { forceNew: true, reconnection: false };
  if (auth) opts.auth = auth;
  if (transport) opts.transports = [transport];
  if (extraHeaders) opts.extraHeaders = extraHeaders;
  socket = io(url, opts);
}

socket.on("connect", () => out("connect", { transport: socket.io.engine.transport.name }));
socket.on("connect_error", (e) => out("connect_error", { message: e && (e.message ?? String(e)) }));
socket.on("disconnect", (reason) => out("disconnect", { reason }));
if (kind === "v2") {
  // 2.x delivers connection refusals as `error` with the middleware's message as a string.
  socket.on("error", (e) => out("error", typeof e === "string" ? { message: e } : e));
} else {
  socket.on("error", (e) => out("error", e));
}
for (const name of ["server_hello", "subscribed", "unsubscribed", "event", "published"]) {
  socket.on(name, (data) => out(name, data));
}

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.close) {
    socket.close();
    setTimeout(() => process.exit(0), 50);
  } else if ("data" in cmd) {
    socket.emit(cmd.emit, cmd.data);
  } else {
    socket.emit(cmd.emit);
  }
});
lines.on("close", () => process.exit(0));
