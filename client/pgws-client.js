// pgws browser client (ES module, no dependencies, no build step).
//
//   import { PgwsClient } from '/client/pgws-client.js';
//   const client = new PgwsClient('ws://localhost:8080/ws', {
//     token,                      // a JWT; or, on a development server, tenant: 'acme'
//     topics: ['orders'],         // subscribed now and again after every reconnect
//     onMessage: (m) => …,        // { topic, seq, data }, or for a durable message
//                                 // { topic, offset, epoch, data }
//     onRecovered: (r) => …,      // after a reconnect: { recovered: true, replayed: N } once the
//                                 // N durable messages missed meanwhile arrived (through
//                                 // onMessage), or { recovered: false, reason }: reload
//     onGap: (notice) => …,       // the server lost Postgres for a while: re-read what you need
//     onStatus: (status) => …,    // 'connecting' | 'open' | 'closed'
//     onError: (err) => …,        // { code, message } for frames the server refused
//   });
//   await client.publish({ text: 'hi' }, 'chat');   // rejects with { code, message }
//
// It speaks the pgws.v1 protocol (PROTOCOL.md), passes the token as a `bearer.<token>` subprotocol
// (browsers cannot set headers), and reconnects with exponential back-off. It remembers the position
// of the last durable message (a server with --streams) and, on reconnect, subscribes from it, so
// the server sends what was missed before live messages: no gap, no duplicate.

export class PgwsClient {
  constructor(url, options = {}) {
    this.url = url;
    this.options = options;
    this.topics = new Set(options.topics || []);
    this.minBackoff = options.minBackoffMs ?? 250;
    this.maxBackoff = options.maxBackoffMs ?? 10000;
    this.backoff = this.minBackoff;
    this.pending = new Map();
    this.nextRef = 1;
    this.closing = false;
    this.socket = null;
    // The last durable message's place: { epoch, offset }, or null before the first.
    this.position = options.position ?? null;
    this.connect();
  }

  connect() {
    const { token, tenant } = this.options;
    let url = this.url;
    const protocols = ['pgws.v1'];
    if (token) {
      protocols.push('bearer.' + token);
    } else if (tenant) {
      url += (url.includes('?') ? '&' : '?') + 'tenant=' + encodeURIComponent(tenant);
    }
    this.status('connecting');
    const socket = new WebSocket(url, protocols);
    this.socket = socket;
    socket.addEventListener('open', () => {
      this.backoff = this.minBackoff;
      // Always subscribe once, first (before the application hears `open` and asks for more): a
      // session takes durable messages from its first subscribe, which recovers from the last
      // position when there is one.
      const frame = { type: 'subscribe', topics: [...this.topics] };
      if (this.position) frame.since = this.position;
      this.request(frame).catch(() => {});
      this.status('open');
    });
    socket.addEventListener('message', (event) => this.receive(event.data));
    // A socket is lost once: browsers follow a failed connect's `error` with `close`, but some
    // runtimes (Node's WebSocket) report a refused handshake with `error` alone.
    let lost = false;
    const lose = (code, reason) => {
      if (lost) return;
      lost = true;
      this.status('closed', code, reason);
      for (const { reject } of this.pending.values()) reject({ code: 'closed', message: 'connection closed' });
      this.pending.clear();
      if (!this.closing) {
        setTimeout(() => this.connect(), this.backoff);
        this.backoff = Math.min(this.backoff * 2, this.maxBackoff);
      }
    };
    socket.addEventListener('close', (event) => lose(event.code, event.reason));
    socket.addEventListener('error', () => {
      if (socket.readyState !== WebSocket.OPEN) lose(1006, 'connection failed');
    });
  }

  status(state, code, reason) {
    this.state = state;
    this.options.onStatus?.(state, code, reason);
  }

  receive(text) {
    let frame;
    try {
      frame = JSON.parse(text);
    } catch {
      return;
    }
    if (!('type' in frame)) {
      if (typeof frame.offset === 'number' && typeof frame.epoch === 'string') {
        this.position = { epoch: frame.epoch, offset: frame.offset };
      }
      this.options.onMessage?.(frame);
      return;
    }
    const waiting = frame.ref !== undefined ? this.pending.get(frame.ref) : undefined;
    if (waiting) this.pending.delete(frame.ref);
    if (frame.type === 'error') {
      if (waiting) waiting.reject(frame);
      this.options.onError?.(frame);
    } else if (frame.type === 'recovered') {
      // From here on the session stands at the report's position (also when nothing was sent).
      if (frame.epoch) this.position = { epoch: frame.epoch, offset: frame.offset };
      else if (!frame.recovered) this.position = null;
      this.options.onRecovered?.(frame);
    } else if (frame.type === 'gap') {
      this.options.onGap?.(frame);
    } else if (frame.type === 'welcome') {
      this.welcome = frame;
      this.options.onWelcome?.(frame);
    } else if (waiting) {
      waiting.resolve(frame);
    }
  }

  request(frame) {
    return new Promise((resolve, reject) => {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) {
        reject({ code: 'closed', message: 'not connected' });
        return;
      }
      const ref = this.nextRef++;
      this.pending.set(ref, { resolve, reject });
      this.socket.send(JSON.stringify({ ...frame, ref }));
    });
  }

  subscribe(topics) {
    topics.forEach((t) => this.topics.add(t));
    return this.request({ type: 'subscribe', topics });
  }

  unsubscribe(topics) {
    topics.forEach((t) => this.topics.delete(t));
    return this.request({ type: 'unsubscribe', topics });
  }

  publish(data, topic) {
    const frame = { type: 'publish', data };
    if (topic) frame.topic = topic;
    return this.request(frame);
  }

  close() {
    this.closing = true;
    this.socket?.close(1000);
  }
}
