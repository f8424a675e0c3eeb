// Peer: Socket.IO on Node.js (npm `socket.io`), one process, WebSocket transport only,
// with the settings of the Socket.IO "performance tuning" guide: the native `ws` add-ons
// (bufferutil, utf-8-validate) installed, no per-message deflate, and the initial HTTP
// request dropped after the handshake to save memory per connection.
// Events: `join` (rooms, acknowledged) and `pub` ({room, msgs}: each message emitted to
// the room as event `msg`).
// usage: node socketio_server.js PORT
"use strict";
const { Server } = require("socket.io");

const port = Number(process.argv[2]);
const io = new Server(port, {
  transports: ["websocket"],
  perMessageDeflate: false,
  serveClient: false,
});

io.engine.on("connection", (rawSocket) => {
  rawSocket.request = null;
});

io.on("connection", (socket) => {
  socket.on("join", (rooms, ack) => {
    socket.join(rooms);
    if (typeof ack === "function") ack("ok");
  });
  socket.on("pub", (data) => {
    for (const m of data.msgs) io.to(data.room).emit("msg", m);
  });
});

console.log(`socket.io (node) peer on ws://127.0.0.1:${port}/socket.io/`);
