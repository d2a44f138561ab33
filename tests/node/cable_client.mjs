// A gateway phone played by the real @rails/actioncable client, for end-to-end tests of /cable.
//
// Env: CABLE_URL (ws://host:port/cable?api_key=...), API_KEY, EXPECT_MESSAGES (default 1),
// TIMEOUT_MS (default 15000), DIGEST_OVERRIDE (subscribe with this digest instead of
// sha256(API_KEY)), GRACE_MS (default 300), CABLE_DEBUG=1 (the client's own log, on stderr).
//
// Prints one JSON line per event on stdout: connected, performed, received, rejected,
// disconnected, done, timeout. Exit codes: 0 done, 2 timeout, 3 subscription rejected,
// 4 disconnected by the server with no reconnect (e.g. unauthorized), 1 bad usage/crash.
import { createHash } from "node:crypto";
import WebSocket from "ws";
import { adapters, createConsumer, logger } from "@rails/actioncable";

const env = process.env;
const url = env.CABLE_URL;
const expected = Number(env.EXPECT_MESSAGES ?? 1);
const timeoutMs = Number(env.TIMEOUT_MS ?? 15000);
const graceMs = Number(env.GRACE_MS ?? 300);

function emit(event) {
  process.stdout.write(JSON.stringify(event) + "\n");
}

function exit(code) {
  // stdout may be a pipe: let it drain before leaving.
  process.stdout.write("", () => process.exit(code));
}

if (!url || !/^wss?:\/\//i.test(url) || (!env.API_KEY && !env.DIGEST_OVERRIDE)) {
  process.stderr.write("need CABLE_URL=ws://... and API_KEY (or DIGEST_OVERRIDE)\n");
  process.exit(1);
}

// The client is written for browsers: it listens for "visibilitychange" on the global
// object when its connection monitor starts and stops. Node has no such global.
for (const name of ["addEventListener", "removeEventListener"]) {
  if (typeof globalThis[name] !== "function") globalThis[name] = () => {};
}
// `document` is only touched for non-ws:// URLs, <meta> config and visibility events, none
// of which happen here, so it is deliberately left undefined.

// The `ws` class, tapped to remember the server's last disconnect frame (the client does not
// pass its reason to callbacks). Subclass statics stay enumerable, which getState() needs.
let lastDisconnect = null;
class TappedWebSocket extends WebSocket {
  constructor(address, protocols, options) {
    super(address, protocols, options);
    lastDisconnect = null;
    this.addEventListener("message", (event) => {
      try {
        const frame = JSON.parse(event.data);
        if (frame && frame.type === "disconnect") lastDisconnect = frame;
      } catch {
        // not JSON: the client itself will complain
      }
    });
  }
}
adapters.WebSocket = TappedWebSocket;
if (env.CABLE_DEBUG) {
  adapters.logger = { log: (...args) => console.error(...args) };
  logger.enabled = true;
}

const digest = env.DIGEST_OVERRIDE || createHash("sha256").update(env.API_KEY).digest("hex");
const consumer = createConsumer(url);
let handled = 0;
let heartbeatSent = false;
let finishing = false;

function perform(action, data) {
  const sent = subscription.perform(action, data);
  emit({ event: "performed", action, sent, data });
}

function finish() {
  if (finishing) return;
  finishing = true;
  setTimeout(() => {
    emit({ event: "done", handled });
    consumer.disconnect();
    setTimeout(() => exit(0), 100);
  }, graceMs);
}

const subscription = consumer.subscriptions.create(
  { channel: "GatewayChannel", api_key_digest: digest },
  {
    connected({ reconnected } = {}) {
      emit({ event: "connected", reconnected: Boolean(reconnected) });
      if (!heartbeatSent) {
        heartbeatSent = true;
        perform("heartbeat", { battery_level: 85, signal_strength: 4, messages_in_queue: 0 });
      }
      if (expected <= 0) finish();
    },
    rejected() {
      emit({ event: "rejected" });
      exit(3);
    },
    disconnected({ willAttemptReconnect } = {}) {
      heartbeatSent = false; // a new connection says hello again
      emit({ event: "disconnected", willAttemptReconnect, server: lastDisconnect });
      if (!willAttemptReconnect && !finishing) exit(4);
    },
    received(message) {
      emit({ event: "received", message });
      if (message && message.action === "send_sms" && !finishing) {
        const { message_id } = message;
        perform("delivery_report", { message_id, status: "sent" });
        perform("delivery_report", { message_id, status: "delivered" });
        handled += 1;
        if (handled >= expected) finish();
      }
    },
  },
);

setTimeout(() => {
  if (finishing) return;
  emit({ event: "timeout", handled });
  exit(2);
}, timeoutMs);
