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
let previewLabel = false; // the preview (not the copied URL) marks a test model: label=1

// VOD time (from the session's first reading) as h:mm:ss / hh:mm:ss.
function vodTime(seconds) {
  const s = Math.max(0, Math.round(seconds));
  const pad = (n) => String(n).padStart(2, "0");
  return `${pad(Math.floor(s / 3600))}:${pad(Math.floor((s % 3600) / 60))}:${pad(s % 60)}`;
}

// A tick step (seconds) that gives about `count` time labels over `span`.
function timeStep(span, count) {
  const steps = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600];
  return steps.find((s) => span / s <= count) || 43200;
}

// One chart: the displayed emotions from `fromTime` (reading window times, i.e. stream/VOD
// time, never the wall clock: a fast replay shows the right span) to the last reading, with a
// value axis (probability, %) on the left and VOD-time labels below.
function draw(canvas, items, fromTime, toTime) {
  const ratio = window.devicePixelRatio || 1;
  const width = canvas.clientWidth * ratio;
  const height = canvas.clientHeight * ratio;
  canvas.width = width;
  canvas.height = height;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, width, height);
  const left = 40 * ratio, bottom = 18 * ratio, topPad = 6 * ratio;
  const plotW = Math.max(1, width - left - 4 * ratio), plotH = Math.max(1, height - bottom - topPad);
  const shown = items.filter((r) => r.end >= fromTime);
  const top = shown.length
    ? Math.min(1, Math.ceil(10 * Math.max(0.2, ...shown.map((r) => Math.max(...displayed.map((l) => r.scores[l]))))) / 10)
    : 1;
  const t0 = fromTime;
  const t1 = Math.max(toTime, t0 + 1);
  const x = (t) => left + ((t - t0) / (t1 - t0)) * plotW;
  const y = (v) => topPad + plotH - (v / top) * plotH;
  g.font = `${11 * ratio}px system-ui, sans-serif`;
  g.fillStyle = "#9aa0ad";
  g.strokeStyle = "#2a2e3a";
  g.lineWidth = 1;
  g.textAlign = "right";
  g.textBaseline = "middle";
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4, py = y(v);
    g.beginPath(); g.moveTo(left, py); g.lineTo(width, py); g.stroke();
    g.fillText(`${Math.round(100 * v)}%`, left - 4 * ratio, py);
  }
  g.textAlign = "center";
  g.textBaseline = "top";
  const origin = streamStart ?? t0;
  const step = timeStep(t1 - t0, Math.max(2, Math.floor(plotW / (80 * ratio))));
  const firstTick = origin + Math.ceil((t0 - origin) / step) * step;
  for (let t = firstTick; t <= t1 + 1e-6; t += step) {
    const px = x(t);
    g.beginPath(); g.moveTo(px, topPad + plotH); g.lineTo(px, topPad + plotH + 3 * ratio); g.stroke();
    g.fillText(vodTime(t - origin), Math.min(Math.max(px, left + 24 * ratio), width - 26 * ratio), topPad + plotH + 4 * ratio);
  }
  if (!shown.length) return;
  g.save();
  g.beginPath(); g.rect(left, 0, plotW + 4 * ratio, topPad + plotH); g.clip();
  // Many readings: one point per two pixel columns (the mean of its readings).
  const columns = Math.max(1, Math.floor(plotW / 2));
  const bucket = (t) => Math.min(columns - 1, Math.max(0, Math.floor(((t - t0) / (t1 - t0)) * columns)));
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
    g.fillRect(x(m.start) - ratio, topPad, 2 * ratio, plotH);
  }
  g.restore();
}

let pending = false;
function redraw() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(() => {
    pending = false;
    // Stream time: the last reading's window end, not the wall clock.
    const last = readings.length ? readings[readings.length - 1].end : (streamStart ?? 0) + RECENT_SECONDS;
    const first = streamStart ?? (readings.length ? readings[0].start : last - RECENT_SECONDS);
    draw($("recent"), readings, Math.max(first, last - RECENT_SECONDS), Math.max(last, first + RECENT_SECONDS));
    draw($("whole"), readings, first, last);
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
  const hint = !token
    ? "open the dashboard from the tray to control the agent"
    : running ? "running" : "stopped";
  $("start").title = $("stop").title = hint;
  $("control-hint").textContent = hint;
  // One chat rate: messages that reached the agent in the last 10 s, per minute (the API's).
  if (typeof s.messages_per_minute === "number") {
    $("rate").textContent = Math.round(s.messages_per_minute).toLocaleString();
  }
  const testModel = s.model && s.model.test_model;
  $("test-model").hidden = !testModel;
  $("test-model").textContent = testModel ? `TEST MODEL: ${testModel} — these emotions are random` : "";
  $("notice").hidden = !s.duplicates_note;
  $("notice").textContent = s.duplicates_note || "";
  if (previewLabel !== Boolean(testModel)) {
    previewLabel = Boolean(testModel);
    overlayUrl();
  }
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
    $("notice").hidden = true;
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
  const preview = previewLabel ? `${url}&label=1` : url;
  if ($("preview").src !== preview) $("preview").src = preview;
}

["o-layout", "o-theme", "o-smoothing"].forEach((id) => $(id).addEventListener("change", overlayUrl));
$("copy").addEventListener("click", () => {
  $("overlay-url").select();
  navigator.clipboard?.writeText($("overlay-url").value);
});
legend();
emotionBoxes();
window.addEventListener("resize", redraw);
