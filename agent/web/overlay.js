// The OBS overlay. URL parameters:
//   layout=bars|meter|line   emotions=joy,anger,surprise   theme=dark|light
//   smoothing=0..0.95 (weight of the past in each update)   minutes=2 (line layout)
//   names=1|0 (label rows)   scale=1 (a bar is full at this probability)
//   label=1 (a small "TEST MODEL" marker when the readings come from a test model; off by
//   default since the overlay goes on stream; the dashboard's preview turns it on)
// Survives OBS's "refresh browser when scene becomes active": it re-reads the last readings
// from the agent (the same values, so the same picture) and keeps them in localStorage too.
"use strict";

const params = new URLSearchParams(location.search);
const LAYOUTS = ["bars", "meter", "line"];
const layout = LAYOUTS.includes(params.get("layout")) ? params.get("layout") : "bars";
const theme = params.get("theme") === "light" ? "light" : "dark";
const names = params.get("names") !== "0";
const smoothing = Math.min(0.95, Math.max(0, parseFloat(params.get("smoothing") ?? "0.6") || 0));
const minutes = Math.min(60, Math.max(0.5, parseFloat(params.get("minutes") ?? "2") || 2));
const scale = Math.min(1, Math.max(0.05, parseFloat(params.get("scale") ?? "1") || 1));
const wanted = (params.get("emotions") || "joy,anger,surprise").split(",").map((s) => s.trim())
  .filter((l) => l in CAPTAFLOW_COLORS && l !== "message_rate");
const emotions = wanted.length ? wanted : ["joy", "anger", "surprise"];
const showLabel = params.get("label") === "1";
const storeKey = `captaflow-overlay:${location.search}`;
const root = document.getElementById("overlay");
root.classList.add(theme, layout);

let smooth = {};
let trail = []; // [time, {label: value}] for the line layout
let session = null;
try {
  const saved = JSON.parse(localStorage.getItem(storeKey) || "null");
  if (saved) ({ smooth, trail, session } = saved);
} catch (error) { /* a fresh start */ }

function update(reading) {
  for (const label of emotions) {
    const value = reading.scores[label];
    smooth[label] = smooth[label] === undefined ? value : smoothing * smooth[label] + (1 - smoothing) * value;
  }
  trail.push([reading.end, { ...smooth }]);
  const from = reading.end - minutes * 60;
  while (trail.length && trail[0][0] < from) trail.shift();
}

const rows = {};
function build() {
  root.replaceChildren();
  if (layout === "bars") {
    for (const label of emotions) {
      const row = document.createElement("div");
      row.className = "row";
      row.dataset.label = label;
      const name = document.createElement("span");
      name.className = "name";
      name.textContent = label;
      name.hidden = !names;
      const track = document.createElement("div");
      track.className = "track";
      const fill = document.createElement("div");
      fill.className = "fill";
      fill.style.background = CAPTAFLOW_COLORS[label];
      fill.style.width = "0%";
      track.append(fill);
      const value = document.createElement("span");
      value.className = "value";
      row.append(name, track, value);
      root.append(row);
      rows[label] = { fill, value };
    }
  } else if (layout === "meter") {
    const box = document.createElement("div");
    box.className = "meter";
    const word = document.createElement("div");
    word.className = "word";
    const track = document.createElement("div");
    track.className = "track";
    const fill = document.createElement("div");
    fill.className = "fill";
    track.append(fill);
    box.append(word, track);
    root.append(box);
    rows.meter = { word, fill };
  } else {
    const canvas = document.createElement("canvas");
    canvas.className = "line";
    root.append(canvas);
    rows.canvas = canvas;
  }
}

function paint() {
  if (layout === "bars") {
    for (const label of emotions) {
      const v = smooth[label] ?? 0;
      rows[label].fill.style.width = `${Math.min(100, (100 * v) / scale).toFixed(1)}%`;
      rows[label].value.textContent = smooth[label] === undefined ? "" : `${Math.round(100 * v)}%`;
    }
  } else if (layout === "meter") {
    const best = emotions.reduce((a, b) => ((smooth[b] ?? 0) > (smooth[a] ?? 0) ? b : a));
    const v = smooth[best] ?? 0;
    rows.meter.word.textContent = smooth[best] === undefined ? "" : best;
    rows.meter.word.style.color = CAPTAFLOW_COLORS[best];
    rows.meter.fill.style.width = `${Math.min(100, (100 * v) / scale).toFixed(1)}%`;
    rows.meter.fill.style.background = CAPTAFLOW_COLORS[best];
  } else {
    const canvas = rows.canvas;
    const ratio = window.devicePixelRatio || 1;
    canvas.width = canvas.clientWidth * ratio;
    canvas.height = canvas.clientHeight * ratio;
    const g = canvas.getContext("2d");
    g.clearRect(0, 0, canvas.width, canvas.height);
    if (trail.length < 2) return;
    const t1 = trail[trail.length - 1][0];
    const t0 = t1 - minutes * 60;
    for (const label of emotions) {
      g.strokeStyle = CAPTAFLOW_COLORS[label];
      g.lineWidth = 4 * ratio;
      g.lineJoin = "round";
      g.shadowColor = theme === "dark" ? "rgba(0,0,0,.8)" : "rgba(255,255,255,.8)";
      g.shadowBlur = 4 * ratio;
      g.beginPath();
      trail.forEach(([t, values], i) => {
        const x = ((t - t0) / (t1 - t0)) * canvas.width;
        const y = canvas.height - (Math.min(1, values[label] / scale)) * (canvas.height - 8 * ratio) - 4 * ratio;
        if (i === 0) g.moveTo(x, y); else g.lineTo(x, y);
      });
      g.stroke();
    }
  }
}

function save() {
  try {
    localStorage.setItem(storeKey, JSON.stringify({ smooth, trail, session }));
  } catch (error) { /* storage full or off: the agent still has the readings */ }
}

build();
paint();
let offline = null;
let fresh = true;
let marker = null;
function testModel(label) {
  if (!showLabel) return;
  if (label && !marker) {
    marker = document.createElement("div");
    marker.className = "test-model";
    document.body.append(marker);
  } else if (!label && marker) {
    marker.remove();
    marker = null;
  }
  if (marker) marker.textContent = `TEST MODEL: ${label}`;
}
captaflowLive({
  status(s) {
    testModel(s.model && s.model.test_model);
  },
  history: 200,
  session(id) {
    if (id !== session) {
      smooth = {};
      trail = [];
      session = id;
    }
  },
  reading(r) {
    if (fresh) {
      // The first batch replays the last readings: rebuild the same smoothed state.
      smooth = {};
      trail = [];
      fresh = false;
    }
    update(r);
    paint();
    save();
  },
  link(up) {
    if (up && offline) {
      offline.remove();
      offline = null;
    } else if (!up && !offline) {
      offline = document.createElement("div");
      offline.className = "offline";
      document.body.append(offline);
    }
  },
});
window.addEventListener("resize", paint);
