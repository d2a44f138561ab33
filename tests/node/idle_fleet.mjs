// N raw `ws` sockets (default options: permessage-deflate offered, as the Action Cable client
// with `ws` does), each subscribed to GatewayChannel, then idle. Prints
// "up <n> <retried> <extensions>" once all are confirmed, then stays until killed. A socket
// that fails before its confirmation (a reset while the server is busy accepting) opens again
// after a second, as the Action Cable client would; <retried> counts those. Env: BASE_URL
// (ws://host:port), KEYS (a JSON file of {"phones": {"slot": {"api_key": ...}}}).
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import WebSocket from "ws";

const keys = Object.values(JSON.parse(readFileSync(process.env.KEYS, "utf8")).phones).map((e) => e.api_key);
let confirmed = 0;
let retried = 0;
let extensions = "";

function open(key) {
  const ws = new WebSocket(`${process.env.BASE_URL}/cable?api_key=${key}`, ["actioncable-v1-json"]);
  const identifier = JSON.stringify({
    channel: "GatewayChannel", api_key_digest: createHash("sha256").update(key).digest("hex"),
  });
  let up = false;
  ws.on("open", () => { extensions = ws.extensions; });
  ws.on("message", (data) => {
    const frame = JSON.parse(data.toString());
    if (frame.type === "welcome") ws.send(JSON.stringify({ command: "subscribe", identifier }));
    if (frame.type === "confirm_subscription" && !up) {
      up = true;
      if (++confirmed === keys.length) console.log(`up ${confirmed} ${retried} ${JSON.stringify(extensions)}`);
    }
  });
  ws.on("error", (err) => console.error(String(err)));
  ws.on("close", () => {
    if (!up) {
      retried += 1;
      setTimeout(() => open(key), 1000);
    }
  });
}

for (const key of keys) {
  open(key);
  await new Promise((resolve) => setTimeout(resolve, 2));
}
