// A Node WebSocket client for the functional tests.
// Usage: node client.mjs <ws|browser> <ws-url> <token> <count> [app]
//   ws      - the `ws` library, as `new WebSocket(url, ['bearer.' + token])`
//   browser - Node's global WebSocket (the WHATWG API browsers implement), which fails a
//             handshake that offered protocols and got none selected
//   app     - offer `control-room.v1` first, as every documented client does, and say
//             which extensions were negotiated ("open <protocol> <extensions>")
// Prints "open <protocol>", then each message on its own line; exits 0 after <count>.
// Both flavours offer permessage-deflate, as browsers and `ws` do by default.
const [flavour, url, token, count, mode] = process.argv.slice(2);
let WebSocketImpl = globalThis.WebSocket;
if (flavour === "ws") {
  WebSocketImpl = (await import("ws")).default;
}
if (typeof WebSocketImpl === "undefined") {
  console.log("NO_WEBSOCKET");
  process.exit(0);
}
const offers = mode === "app" ? ["control-room.v1", "bearer." + token] : ["bearer." + token];
const ws = new WebSocketImpl(url, offers);
let left = Number(count);
ws.onopen = () =>
  console.log("open " + ws.protocol + (mode === "app" ? " " + (ws.extensions || "none") : ""));
ws.onmessage = (event) => {
  console.log(String(event.data));
  if (--left === 0) {
    ws.close();
    process.exit(0);
  }
};
ws.onerror = (event) => {
  console.error("error", event.message ?? "");
  process.exit(1);
};
setTimeout(() => {
  console.error("timeout");
  process.exit(2);
}, 15000);
