// The dashboard: live charts, status, moments, and the OBS overlay URL with a preview.
"use strict";

const RECENT_SECONDS = 300;
const $ = (id) => document.getElementById(id);

// The tray opens /#token=...: keep it for this tab only and take it out of the address bar
// (streamers share their screen).
(function keepToken() {
  const found = /(?:^#|&)token=([^&]+)/.exec(location.hash);
  if (found) {
    sessionStorage.setItem("captaflow-token", decodeURIComponent(found[1]));
    history.replaceState(null, "", location.pathname + location.search);
  }
})();
const token = sessionStorage.getItem("captaflow-token");

let displayed = ["anger", "fear", "joy", "optimism", "sadness", "surprise"];
let readings = [];
const moments = new Map();
let streamStart = null;

function draw(canvas, items, fromTime) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth * ratio;
  const height = canvas.clientHeight * ratio;
  canvas.width = width;
  canvas.height = height;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  g.strokeStyle = "#2a2e3a";
  g.lineWidth = 1;
  for (let i = 1; i < 4; i++) {
    const y = (height * i) / 4;
    g.beginPath(); g.moveTo(0, y); g.lineTo(width, y); g.stroke();
  }
  const shown = items.filter((r) => r.end >= fromTime);
  if (!shown.length) return;
  const t0 = Math.min(fromTime, shown[0].start);
  const t1 = Math.max(shown[shown.length - 1].end, t0 + 1);
  const top = Math.max(0.5, ...shown.map((r) => Math.max(...displayed.map((l) => r.scores[l]))));
  const x = (t) => ((t - t0) / (t1 - t0)) * width;
  const y = (v) => height - (v / top) * (height - 6) - 3;
  // Many readings: one point per pixel column (the mean of its readings).
  const columns = Math.max(1, Math.floor(width / 2));
  const bucket = (t) => Math.min(columns - 1, Math.floor(((t - t0) / (t1 - t0)) * columns));
  for (const label of displayed) {
    const sums = new Map();
    for (const r of shown) {
      const b = bucket((r.start + r.end) / 2);
      const s = sums.get(b) || [0, 0, 0];
      s[0] += r.scores[label]; s[1] += 1; s[2] += (r.start + r.end) / 2;
      sums.set(b, s);
    }
    g.strokeStyle = CAPTAFLOW_COLORS[label];
    g.lineWidth = 2 * ratio;
    g.beginPath();
    let first = true;
    for (const b of [...sums.keys()].sort((a, c) => a - c)) {
      const [sum, n, ts] = sums.get(b);
      const px = x(ts / n), py = y(sum / n);
      if (first) g.moveTo(px, py); else g.lineTo(px, py);
      first = false;
    }
    g.stroke();
  }
  g.fillStyle = "#ffd36b";
  for (const m of moments.values()) {
    if (m.start < t0 || m.start > t1) continue;
    g.fillRect(x(m.start) - ratio, 0, 2 * ratio, height);
  }
}

let pending = false;
function redraw() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    const last = readings.length ? readings[readings.length - 1].end : Date.now() / 1000;
    draw($("recent"), readings, last - RECENT_SECONDS);
    draw($("whole"), readings, streamStart || (readings.length ? readings[0].start : last));
  });
}

function legend() {
  $("legend").replaceChildren(...displayed.map((label) => {
    const span = document.createElement("span");
    span.textContent = label;
    span.style.setProperty("--c", CAPTAFLOW_COLORS[label]);
    return span;
  }));
}

function showMoments() {
  const list = [...moments.values()].sort((a, b) => a.start - b.start);
  $("no-moments").hidden = list.length > 0;
  $("moments").replaceChildren(...list.map((m) => {
    const li = document.createElement("li");
    li.className = m.state;
    li.dataset.kind = m.kind;
    const when = document.createElement("b");
    when.textContent = m.vod_time;
    li.append(when, " ", m.label, m.state === "ended" ? "" : " (happening now)");
    return li;
  }));
}

function setStatus(s) {
  if (s.displayed && s.displayed.join() !== displayed.join()) {
    displayed = s.displayed;
    legend();
    emotionBoxes();
  }
  const pill = $("state");
  pill.textContent = `${s.state}${s.channel ? " · " + s.channel : ""}`;
  pill.className = `pill ${s.state}`;
  $("source").textContent = s.source ? s.source.state : "—";
  $("upload").textContent = [s.upload_state, s.parts_waiting ? `${s.parts_waiting} part(s) waiting` : "", s.problem || ""]
    .filter(Boolean).join(" · ");
  const markers = s.twitch_markers || "off";
  $("markers").textContent = markers;
  $("markers-toggle").textContent = markers === "off" ? "turn on" : "turn off";
  $("markers-toggle").disabled = !token;
  if (s.stream_start) streamStart = s.stream_start;
  const running = ["running", "trouble", "starting"].includes(s.state);
  $("start").disabled = !token || running;
  $("stop").disabled = !token || !running;
  $("start").title = $("stop").title = token ? "" : "open the dashboard from the tray to control the agent";
}

const feed = captaflowLive({
  session(id) {
    readings = [];
    moments.clear();
    streamStart = null;
    $("session").textContent = id ? `session ${id}` : "";
    showMoments();
    redraw();
  },
  reading(r) {
    readings.push(r);
    if (readings.length > 50000) readings.shift();
    if (streamStart === null) streamStart = r.start - r.vod_seconds;
    const count = $("reading-count");
    count.dataset.count = String(readings.length);
    count.textContent = readings.length.toLocaleString();
    $("dominant").textContent = r.dominant;
    $("dominant").style.color = CAPTAFLOW_COLORS[r.dominant] || "";
    const recent = readings.slice(-10);
    const span = Math.max(1, recent[recent.length - 1].end - recent[0].start);
    const messages = recent.reduce((n, x) => n + x.messages, 0);
    $("rate").textContent = Math.round((60 * messages) / span).toLocaleString();
    redraw();
  },
  moment(m) {
    moments.set(m.id, m);
    showMoments();
    redraw();
  },
  status: setStatus,
  link(up) {
    if (!up) $("state").textContent = "reconnecting…";
  },
  reply(message) {
    if (message.type === "error") alert(`CaptaFlow: ${message.error}`);
    else if (message.type === "control" && message.action.startsWith("markers")) {
      $("markers").textContent = message.detail;
    }
  },
});

function control(action) {
  feed.send({ type: "control", action, token });
}
$("start").addEventListener("click", () => control("start"));
$("stop").addEventListener("click", () => control("stop"));
$("markers-toggle").addEventListener("click", () =>
  control($("markers").textContent === "off" ? "markers_on" : "markers_off"));

// ---- the OBS overlay URL ----
function emotionBoxes() {
  const holder = $("o-emotions");
  const chosen = new Set(["joy", "anger", "surprise"].filter((l) => displayed.includes(l)));
  if (!chosen.size) displayed.slice(0, 3).forEach((l) => chosen.add(l));
  holder.replaceChildren(...displayed.map((label) => {
    const box = document.createElement("label");
    const input = document.createElement("input");
    input.type = "checkbox";
    input.value = label;
    input.checked = chosen.has(label);
    input.addEventListener("change", overlayUrl);
    box.append(input, " ", label);
    return box;
  }));
  overlayUrl();
}

function overlayUrl() {
  const emotions = [...document.querySelectorAll("#o-emotions input:checked")].map((i) => i.value);
  const query = new URLSearchParams({
    layout: $("o-layout").value,
    emotions: emotions.join(","),
    theme: $("o-theme").value,
    smoothing: $("o-smoothing").value,
  });
  const url = `${location.origin}/overlay?${query}`;
  $("overlay-url").value = url;
  if ($("preview").src !== url) $("preview").src = url;
}

["o-layout", "o-theme", "o-smoothing"].forEach((id) => $(id).addEventListener("change", overlayUrl));
$("copy").addEventListener("click", () => {
  $("overlay-url").select();
  navigator.clipboard?.writeText($("overlay-url").value);
});
legend();
emotionBoxes();
window.addEventListener("resize", redraw);
