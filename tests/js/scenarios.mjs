// Drives the real `centrifuge` npm SDK against Tether; run by tests/integration/test_js_sdk.py.
//
//   node scenarios.mjs <scenario>
//
// Inputs (environment):
//   TETHER_WS_URL      ws://127.0.0.1:PORT/connection/websocket (required)
//   TETHER_TOKEN       connection token (may be empty)
//   TETHER_CHANNEL     channel to subscribe to (scenarios that subscribe)
//   TETHER_TIMEOUT_MS  overall deadline; past it the program prints {"event":"timeout"} and
//                      exits 2 (default 20000)
//   TETHER_GET_TOKEN   "1": install a getToken callback that asks the test for a fresh token
//                      (prints {"event":"token_requested"}, waits for a `token` command)
//   TETHER_PUBLISH     JSON array of payloads the `publish` scenario publishes, in order
//   TETHER_PUBLISH_CHANNEL  channel the `publish_unsubscribed` scenario publishes to
//   TETHER_ENCODING    "json" (default: the SDK's default build) or "protobuf" (the SDK's
//                      Protobuf build, `centrifuge/build/protobuf`: binary frames, the
//                      centrifuge-protobuf subprotocol). Payloads are JSON documents either
//                      way: with Protobuf they travel as their UTF-8 bytes, and are decoded
//                      back before they are reported, as an app sending JSON would do.
//   TETHER_DELTA       "fossil": subscribe with delta compression
//   TETHER_GET_STATE   "zero": subscribe with a getState callback that returns the zero
//                      position (offset 0, empty epoch), as an app that has no state yet
//   TETHER_SINCE       `read`: also read history since this offset (with the epoch of the
//                      stream's top), forwards, and the newest two in reverse
//   TETHER_RPC_METHOD, TETHER_RPC_DATA, TETHER_SEND   what the `rpc` scenario sends
//
// Output: one JSON object per line on stdout, {"event": NAME, ...}: what the SDK reported.
// Input: one JSON object per line on stdin, from the test:
//   {"cmd": "token", "token": "..."}   answer to a getToken request
//   {"cmd": "stop"}                    disconnect, print {"event":"done"}, exit 0
//
// Scenarios:
//   connect     connect only; runs until `stop` or until the client is disconnected for good
//   subscribe   connect, subscribe to TETHER_CHANNEL, report everything; runs until `stop`
//               or a terminal disconnect
//   publish     connect, subscribe, publish TETHER_PUBLISH through the subscription (each
//               result or error reported), then exit
//   publish_unsubscribed   connect, publish one payload to TETHER_PUBLISH_CHANNEL without a
//               subscription (client.publish), report the result or error, then exit
//   read        connect, subscribe, then report presence, presence stats and history, exit
//   delta       connect, subscribe with delta: 'fossil', report each publication (data as
//               the SDK rebuilt it) until TETHER_EXPECT of them came, then report the
//               subscription's deltaStats() as {"event":"delta_stats", ...} and exit
//   rpc         connect, call TETHER_RPC_METHOD with TETHER_RPC_DATA (JSON), report the
//               result or error; then send TETHER_SEND (JSON) as an async message if
//               given (and one more RPC, so that the send was handled); exit
//
// Exit status: 0 scenario finished, 1 unexpected exception, 2 timeout.

import { createInterface } from 'node:readline';
import { Centrifuge as CentrifugeJson } from 'centrifuge';
import { Centrifuge as CentrifugeProtobuf } from 'centrifuge/build/protobuf';
import WebSocket from 'ws';

const scenario = process.argv[2];
const env = process.env;
const url = required('TETHER_WS_URL');
const channel = env.TETHER_CHANNEL || '';
const timeoutMs = Number(env.TETHER_TIMEOUT_MS || 20000);
const protobuf = env.TETHER_ENCODING === 'protobuf';
const Centrifuge = protobuf ? CentrifugeProtobuf : CentrifugeJson;

// The Protobuf build hands uint64 fields (offsets) over as protobufjs Long objects.
function num(value) {
  return value !== null && typeof value === 'object' && 'low' in value ? value.toNumber() : value;
}
function position(pos) {
  return pos ? { offset: num(pos.offset), epoch: pos.epoch } : null;
}

// A JSON document as this encoding's SDK publishes it, and back.
function encode(data) {
  return protobuf ? new TextEncoder().encode(JSON.stringify(data)) : data;
}
function decode(data) {
  return protobuf && data instanceof Uint8Array ? JSON.parse(new TextDecoder().decode(data)) : data;
}

function required(name) {
  const value = env[name];
  if (!value) {
    emit('fatal', { message: `environment variable ${name} is required` });
    process.exit(1);
  }
  return value;
}

function emit(event, fields = {}) {
  // stdout is a pipe: writes are synchronous on Linux, so nothing is lost at exit.
  process.stdout.write(JSON.stringify({ event, ...fields }) + '\n');
}

function errorFields(err) {
  if (err && typeof err === 'object' && 'code' in err) {
    return { code: err.code, message: err.message, temporary: err.temporary === true };
  }
  return { code: null, message: String(err) };
}

// -- commands from the test (stdin) ------------------------------------------------------

const tokenWaiters = [];
let client = null;

let finishing = false;

function finish(status) {
  // disconnect() emits `disconnected`, which some scenarios answer with finish(): once only.
  if (finishing) return;
  finishing = true;
  if (client !== null) {
    client.disconnect();
  }
  emit('done', { status });
  process.exit(status);
}

const stdin = createInterface({ input: process.stdin });
stdin.on('line', (line) => {
  if (!line.trim()) return;
  let cmd;
  try {
    cmd = JSON.parse(line);
  } catch (e) {
    emit('fatal', { message: `bad command line: ${line}` });
    process.exit(1);
  }
  if (cmd.cmd === 'token') {
    const waiter = tokenWaiters.shift();
    if (waiter) waiter(cmd.token);
  } else if (cmd.cmd === 'stop') {
    finish(0);
  } else {
    emit('fatal', { message: `unknown command: ${line}` });
    process.exit(1);
  }
});
// The test owns this process: if it goes away, so do we.
stdin.on('close', () => finish(0));

const deadline = setTimeout(() => {
  emit('timeout', { scenario, after_ms: timeoutMs });
  process.exit(2);
}, timeoutMs);
deadline.unref();

process.on('unhandledRejection', (reason) => {
  emit('fatal', { message: String(reason && reason.stack ? reason.stack : reason) });
  process.exit(1);
});
process.on('uncaughtException', (err) => {
  emit('fatal', { message: String(err && err.stack ? err.stack : err) });
  process.exit(1);
});

// -- the SDK ---------------------------------------------------------------------------

function newClient() {
  const options = {
    token: env.TETHER_TOKEN || '',
    // Node 20 has no global WebSocket: the SDK needs the constructor passed in.
    websocket: WebSocket,
    minReconnectDelay: 200,
    maxReconnectDelay: 1000,
    timeout: 5000,
    // No browser here: no online/offline events to listen to.
    networkEventTarget: null,
  };
  if (env.TETHER_GET_TOKEN === '1') {
    options.getToken = () =>
      new Promise((resolve) => {
        tokenWaiters.push(resolve);
        emit('token_requested');
      });
  }
  const c = new Centrifuge(url, options);
  c.on('connecting', (ctx) => emit('connecting', { code: ctx.code, reason: ctx.reason }));
  c.on('connected', (ctx) => emit('connected', { client: ctx.client, transport: ctx.transport }));
  c.on('disconnected', (ctx) => emit('disconnected', { code: ctx.code, reason: ctx.reason }));
  c.on('error', (ctx) => emit('error', { type: ctx.type, ...errorFields(ctx.error) }));
  // Server-side subscriptions (token channels, the personal channel) report here.
  c.on('subscribed', (ctx) => emit('server_subscribed', { channel: ctx.channel }));
  c.on('publication', (ctx) =>
    emit('server_publication', { channel: ctx.channel, data: decode(ctx.data) }),
  );
  return c;
}

function newSubscription(c, name) {
  const options = env.TETHER_DELTA ? { delta: env.TETHER_DELTA } : {};
  if (env.TETHER_GET_STATE === 'zero') {
    options.getState = async () => {
      emit('get_state');
      return { offset: 0, epoch: '' };
    };
  }
  const sub = c.newSubscription(name, options);
  sub.on('subscribing', (ctx) =>
    emit('subscribing', { channel: ctx.channel, code: ctx.code, reason: ctx.reason }),
  );
  sub.on('subscribed', (ctx) =>
    emit('subscribed', {
      channel: ctx.channel,
      recoverable: ctx.recoverable,
      positioned: ctx.positioned,
      wasRecovering: ctx.wasRecovering,
      recovered: ctx.recovered,
      hasRecoveredPublications: ctx.hasRecoveredPublications,
      streamPosition: position(ctx.streamPosition),
    }),
  );
  sub.on('unsubscribed', (ctx) =>
    emit('unsubscribed', { channel: ctx.channel, code: ctx.code, reason: ctx.reason }),
  );
  sub.on('publication', (ctx) =>
    emit('publication', {
      channel: ctx.channel,
      offset: num(ctx.offset ?? null),
      data: decode(ctx.data),
      user: ctx.info ? ctx.info.user : null,
    }),
  );
  sub.on('join', (ctx) => emit('join', { channel: ctx.channel, user: ctx.info.user }));
  sub.on('leave', (ctx) => emit('leave', { channel: ctx.channel, user: ctx.info.user }));
  sub.on('error', (ctx) => emit('sub_error', { type: ctx.type, ...errorFields(ctx.error) }));
  return sub;
}

function publicationFields(pub) {
  return { offset: num(pub.offset ?? null), data: decode(pub.data), user: pub.info ? pub.info.user : null };
}

async function attempt(event, fn) {
  try {
    emit(event, { ok: true, ...(await fn()) });
  } catch (err) {
    emit(event, { ok: false, error: errorFields(err) });
  }
}

// -- scenarios -------------------------------------------------------------------------

async function subscribed(c) {
  const sub = newSubscription(c, required('TETHER_CHANNEL'));
  sub.subscribe();
  c.connect();
  await sub.ready();
  return sub;
}

const scenarios = {
  connect(c) {
    c.on('disconnected', () => finish(0));
    c.connect();
  },

  async subscribe(c) {
    c.on('disconnected', () => finish(0));
    await subscribed(c);
  },

  async publish(c) {
    const sub = await subscribed(c);
    for (const data of JSON.parse(env.TETHER_PUBLISH || '[]')) {
      await attempt('published', async () => {
        await sub.publish(encode(data));
        return { data };
      });
    }
    finish(0);
  },

  async publish_unsubscribed(c) {
    c.connect();
    await c.ready();
    await attempt('published', async () => {
      await c.publish(required('TETHER_PUBLISH_CHANNEL'), encode({ text: 'not allowed' }));
      return {};
    });
    finish(0);
  },

  async delta(c) {
    const expect = Number(required('TETHER_EXPECT'));
    const sub = newSubscription(c, required('TETHER_CHANNEL'));
    let seen = 0;
    sub.on('publication', () => {
      seen += 1;
      if (seen === expect) {
        emit('delta_stats', sub.deltaStats());
        finish(0);
      }
    });
    sub.subscribe();
    c.connect();
  },

  async rpc(c) {
    c.connect();
    await c.ready();
    await attempt('rpc', async () => {
      const data = encode(JSON.parse(env.TETHER_RPC_DATA || 'null'));
      const result = await c.rpc(required('TETHER_RPC_METHOD'), data);
      return { data: decode(result.data) };
    });
    if (env.TETHER_SEND) {
      await attempt('sent', async () => {
        await c.send(encode(JSON.parse(env.TETHER_SEND)));
        // The server runs a connection's commands in order: once a later RPC is answered
        // the send was handled (a close right after it would cancel what is queued).
        await c.rpc(required('TETHER_RPC_METHOD'), encode(null));
        return {};
      });
    }
    finish(0);
  },

  async read(c) {
    const sub = await subscribed(c);
    await attempt('presence', async () => {
      const result = await sub.presence();
      const clients = Object.values(result.clients).map((info) => ({
        client: info.client,
        user: info.user,
      }));
      return { clients };
    });
    await attempt('presence_stats', async () => {
      const stats = await sub.presenceStats();
      return { numClients: stats.numClients, numUsers: stats.numUsers };
    });
    await attempt('history', async () => {
      const result = await sub.history({ limit: 100 });
      return {
        publications: result.publications.map(publicationFields),
        offset: num(result.offset),
        epoch: result.epoch,
      };
    });
    if (env.TETHER_SINCE) {
      await attempt('history_since', async () => {
        const top = await sub.history({ limit: 0 });
        const since = { offset: Number(env.TETHER_SINCE), epoch: top.epoch };
        const result = await sub.history({ limit: 100, since });
        return { publications: result.publications.map(publicationFields) };
      });
      await attempt('history_reverse', async () => {
        const result = await sub.history({ limit: 2, reverse: true });
        return { publications: result.publications.map(publicationFields) };
      });
    }
    finish(0);
  },
};

const run = scenarios[scenario];
if (run === undefined) {
  emit('fatal', { message: `unknown scenario ${JSON.stringify(scenario)}` });
  process.exit(1);
}
client = newClient();
await run(client);
