// CaptaFlow's live feed for the dashboard, the overlay and your own pages.
// History first (/api/readings, /api/moments), then pushes over the /live WebSocket; it
// reconnects by itself (0.5 s doubling to 10 s) and catches up on what it missed by `seq`.
"use strict";

const CAPTAFLOW_COLORS = {
  anger: "#d62728", anticipation: "#ff7f0e", disgust: "#8c8c1a", fear: "#9467bd",
  joy: "#e6ac00", love: "#e377c2", optimism: "#2ca02c", pessimism: "#8c564b",
  sadness: "#1f77b4", surprise: "#17becf", trust: "#3b6e8f", message_rate: "#888888",
};

function captaflowLive(handlers) {
  const on = Object.assign(
    { reading() {}, moment() {}, status() {}, session() {}, link() {}, reply() {} },
    handlers,
  );
  const history = handlers.history === undefined ? null : handlers.history; // null = all
  let lastSeq = 0;
  let sessionId;
  let socket = null;
  let delay = 500;
  let catchingUp = false;
  let held = [];

  function take(reading) {
    if (reading.seq <= lastSeq) return;
    lastSeq = reading.seq;
    on.reading(reading);
  }

  function newSession(id) {
    if (id === sessionId) return;
    sessionId = id;
    on.session(id);
  }

  async function catchUp() {
    catchingUp = true;
    try {
      const query = lastSeq === 0 && history !== null ? `last=${history}` : `since=${lastSeq}`;
      const answer = await (await fetch(`/api/readings?${query}`, { cache: "no-store" })).json();
      if (answer.session_id !== sessionId) newSession(answer.session_id);
      answer.readings.forEach(take);
      const moments = await (await fetch("/api/moments", { cache: "no-store" })).json();
      moments.moments.forEach(on.moment);
      const status = await (await fetch("/api/status", { cache: "no-store" })).json();
      on.status(status);
    } finally {
      catchingUp = false;
      const queued = held;
      held = [];
      queued.forEach(handle);
    }
  }

  function handle(message) {
    if (catchingUp && (message.type === "reading" || message.type === "session")) {
      held.push(message);
      return;
    }
    if (message.type === "reading") {
      if (message.reading.session_id !== sessionId) newSession(message.reading.session_id);
      take(message.reading);
    } else if (message.type === "session") newSession(message.session_id);
    else if (message.type === "moment") on.moment(message.moment);
    else if (message.type === "status") on.status(message.status);
    else if (message.type === "hello") on.status(message.status);
    else on.reply(message);
  }

  function connect() {
    socket = new WebSocket(`ws://${location.host}/live`);
    socket.onopen = () => {
      delay = 500;
      on.link(true);
      catchUp().catch(() => {});
    };
    socket.onmessage = (event) => {
      try {
        handle(JSON.parse(event.data));
      } catch (error) {
        console.warn("captaflow: bad message", error);
      }
    };
    socket.onclose = () => {
      on.link(false);
      setTimeout(connect, delay);
      delay = Math.min(delay * 2, 10000);
    };
  }

  connect();
  return {
    send(message) {
      if (socket && socket.readyState === WebSocket.OPEN) {
        socket.send(JSON.stringify(message));
        return true;
      }
      return false;
    },
    get lastSeq() { return lastSeq; },
  };
}
