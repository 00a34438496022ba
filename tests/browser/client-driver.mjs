// Drives client/pgws-client.js under Node (its WHATWG WebSocket) for the end-to-end tests.
//
//   node --experimental-websocket client-driver.mjs <ws url> <options JSON>
//
// stdout: one JSON line per thing the client reported or did:
//   {"status": "connecting"|"open"|"closed", "code": <close code>}
//   {"ready": true}              after an `open`, once the client's own re-subscription was answered
//   {"message": {topic, seq, data}}
//   {"gap": <notice>}
//   {"recovered": <report>}      after a reconnect with a durable position
//   {"retry_ms": <n>}            each reconnect delay the client scheduled
// stdin: one JSON command per line:
//   {"oversize": <n>}            sends a text frame of n bytes on the current socket (the server
//                                closes a connection whose message is over --max-client-message)
//   {"drop": true}               closes the current socket only: the client reconnects
//   {"close": true}              closes the client and exits
import readline from "node:readline";

// Record every delay the client asks for: its back-off is the argument of its setTimeout. (Timers
// set by anything else, such as the WebSocket implementation, are not the client's.)
const realSetTimeout = globalThis.setTimeout;
globalThis.setTimeout = (fn, ms, ...rest) => {
  if (new Error().stack.includes("pgws-client.js")) out({ retry_ms: ms });
  return realSetTimeout(fn, ms, ...rest);
};

// Node's own WebSocket is used as it is: it reports a refused handshake with `error` alone (no
// `close`), which the client must handle as a browser's `close` (it does).
const { PgwsClient } = await import("../../client/pgws-client.js");
const [url, optionsArg] = process.argv.slice(2);

function out(line) {
  process.stdout.write(JSON.stringify(line) + "\n");
}

const client = new PgwsClient(url, {
  ...JSON.parse(optionsArg),
  onStatus: (status, code) => {
    out(code === undefined ? { status } : { status, code });
    if (status === "open") {
      // Requests are answered in order: once this one is, so is the client's own subscribe,
      // which it sent from the same `open` handler just before this microtask ran.
      queueMicrotask(() =>
        client.request({ type: "subscribe", topics: [] }).then(() => out({ ready: true }), () => {}),
      );
    }
  },
  onMessage: (message) => out({ message }),
  onGap: (gap) => out({ gap }),
  onRecovered: (recovered) => out({ recovered }),
});

const lines = readline.createInterface({ input: process.stdin });
lines.on("line", (line) => {
  if (!line.trim()) return;
  const cmd = JSON.parse(line);
  if (cmd.oversize) {
    client.socket.send("x".repeat(cmd.oversize));
  } else if (cmd.drop) {
    client.socket.close(1000);
  } else if (cmd.close) {
    client.close();
    process.exit(0);
  }
});
lines.on("close", () => process.exit(0));
