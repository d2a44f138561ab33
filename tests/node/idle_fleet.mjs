// N raw `ws` sockets (default options: permessage-deflate offered, as the Action Cable client
// with `ws` does), each subscribed to GatewayChannel, then idle. Prints "up <n> <extensions>"
// once all are confirmed, then stays until killed. Env: BASE_URL (ws://host:port), KEYS (a
// JSON file of {"phones": {"slot": {"api_key": ...}}}).
import { createHash } from "node:crypto";
import { readFileSync } from "node:fs";
import WebSocket from "ws";

const keys = Object.values(JSON.parse(readFileSync(process.env.KEYS, "utf8")).phones).map((e) => e.api_key);
let confirmed = 0;
let extensions = "";
for (const key of keys) {
  const ws = new WebSocket(`${process.env.BASE_URL}/cable?api_key=${key}`, ["actioncable-v1-json"]);
  const identifier = JSON.stringify({
    channel: "GatewayChannel", api_key_digest: createHash("sha256").update(key).digest("hex"),
  });
  ws.on("open", () => { extensions = ws.extensions; });
  ws.on("message", (data) => {
    const frame = JSON.parse(data.toString());
    if (frame.type === "welcome") ws.send(JSON.stringify({ command: "subscribe", identifier }));
    if (frame.type === "confirm_subscription" && ++confirmed === keys.length) {
      console.log(`up ${confirmed} ${JSON.stringify(extensions)}`);
    }
  });
  ws.on("error", (err) => console.error(String(err)));
  await new Promise((resolve) => setTimeout(resolve, 2));
}
