// The metrics page: polls /metrics (Prometheus text) every second and draws a line chart per series.
"use strict";

const $ = (id) => document.getElementById(id);
const POLL_MS = 1000;
const POINTS = 120;  // the points a chart keeps (two minutes)
const WINDOW = 10;   // the samples a ratio looks back over, so that a quiet second leaves no gap

// One sample line: a name, optional {labels} (a quoted value may hold braces or spaces), a value.
const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(?:[^"}]|"(?:[^"\\]|\\.)*")*\})?\s+(\S+)/;

// A series' values summed over its label sets (one model per server), by sample name.
function parse(text) {
  const totals = {};
  for (const line of text.split("\n")) {
    const m = line.startsWith("#") ? null : SAMPLE.exec(line);
    const value = m ? Number(m[3]) : NaN;
    if (Number.isFinite(value)) totals[m[1]] = (totals[m[1]] || 0) + value;
  }
  return totals;
}

// A counter's increase per second between two samples; null across a reset or a missing series.
function rate(now, before, name) {
  if (!before) return null;
  const delta = now.values[name] - before.values[name];
  return delta >= 0 ? delta / (now.t - before.t) : null;
}

// The increase of one counter over another's between two samples, times `scale`; null when the second stood still.
function ratio(now, before, top, bottom, scale) {
  if (!before) return null;
  const over = now.values[bottom] - before.values[bottom];
  return over > 0 ? scale * (now.values[top] - before.values[top]) / over : null;
}

const CHARTS = [
  { id: "running", title: "requests running", unit: "", value: (s) => s.values["vllm:num_requests_running"] },
  { id: "waiting", title: "requests waiting", unit: "", value: (s) => s.values["vllm:num_requests_waiting"] },
  { id: "gen-tps", title: "generation", unit: "tok/s",
    value: (s, prev) => rate(s, prev, "vllm:generation_tokens_total") },
  { id: "kv", title: "KV cache usage", unit: "%", max: 100, value: (s) => 100 * s.values["vllm:kv_cache_usage_perc"] },
  { id: "hit-rate", title: `prefix cache hit rate (${WINDOW} s)`, unit: "%", max: 100,
    value: (s, _, old) => ratio(s, old, "vllm:prefix_cache_hits_total", "vllm:prefix_cache_queries_total", 100) },
  { id: "ttft", title: `mean TTFT (${WINDOW} s)`, unit: "ms",
    value: (s, _, old) => ratio(s, old, "vllm:time_to_first_token_seconds_sum",
      "vllm:time_to_first_token_seconds_count", 1000) },
];

function format(v) {
  if (v === null) return "–";
  if (Number.isInteger(v) || Math.abs(v) >= 100) return v.toFixed(0);
  return v.toFixed(Math.abs(v) >= 10 ? 1 : 2);
}

// The smallest 1, 2 or 5 times a power of ten at or above v.
function niceMax(v) {
  const power = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((k) => k * power).find((m) => m >= v);
}

function build(chart) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  figure.id = `chart-${chart.id}`;
  const caption = document.createElement("figcaption");
  chart.label = document.createElement("b");
  chart.label.className = "value";
  chart.label.setAttribute("data-testid", `value-${chart.id}`);
  chart.label.textContent = "–";
  caption.append(chart.title, " ", chart.label, chart.unit ? ` ${chart.unit}` : "");
  chart.canvas = document.createElement("canvas");
  figure.append(caption, chart.canvas);
  $("charts").append(figure);
  chart.points = [];
}

function draw(chart) {
  const canvas = chart.canvas, scale = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, h = canvas.clientHeight;
  if (canvas.width !== Math.round(w * scale) || canvas.height !== Math.round(h * scale)) {
    canvas.width = Math.round(w * scale);
    canvas.height = Math.round(h * scale);
  }
  const ctx = canvas.getContext("2d");
  ctx.setTransform(scale, 0, 0, scale, 0, 0);
  ctx.clearRect(0, 0, w, h);
  const style = getComputedStyle(canvas);
  const known = chart.points.filter((v) => v !== null);
  const top = chart.max || niceMax(Math.max(1, ...known.map((v) => v * 1.05)));  // the scale: at least 0 to 1
  const y = (v) => h - 2 - (h - 16) * (v / top);
  const x = (i) => w - (chart.points.length - 1 - i) * (w / (POINTS - 1));  // the newest point at the right edge
  ctx.fillStyle = ctx.strokeStyle = style.borderTopColor;  // the grid: the top of the scale and zero
  ctx.font = "10px sans-serif";
  ctx.fillText(format(top), 2, y(top) + 11);
  ctx.beginPath();
  ctx.moveTo(0, y(top)); ctx.lineTo(w, y(top));
  ctx.moveTo(0, y(0)); ctx.lineTo(w, y(0));
  ctx.stroke();
  ctx.strokeStyle = ctx.fillStyle = style.color;
  ctx.lineWidth = 1.5;
  ctx.beginPath();
  let drawing = false;
  chart.points.forEach((v, i) => {
    if (v === null) return (drawing = false);
    drawing ? ctx.lineTo(x(i), y(v)) : ctx.moveTo(x(i), y(v));
    drawing = true;
  });
  ctx.stroke();
  const newest = chart.points[chart.points.length - 1];
  if (newest != null) ctx.fillRect(w - 3, y(newest) - 1.5, 3, 3);
}

const samples = [];  // the latest WINDOW + 1 scrapes: {t (seconds), values}

async function poll() {
  try {
    const response = await fetch("/metrics", { cache: "no-store" });
    if (!response.ok) {
      const body = await response.json().catch(() => null);
      throw new Error((body && body.error && body.error.message) || `HTTP ${response.status}`);
    }
    const sample = { t: performance.now() / 1000, values: parse(await response.text()) };
    samples.push(sample);
    if (samples.length > WINDOW + 1) samples.shift();
    const previous = samples[samples.length - 2], oldest = samples.length > 1 ? samples[0] : undefined;
    for (const chart of CHARTS) {
      const v = chart.value(sample, previous, oldest);
      chart.points.push(Number.isFinite(v) ? v : null);
      if (chart.points.length > POINTS) chart.points.shift();
      chart.canvas.dataset.points = chart.points.filter((p) => p !== null).length;  // what a test can read
      chart.label.textContent = format(chart.points[chart.points.length - 1]);
      draw(chart);
    }
    $("status").textContent = `updated ${new Date().toLocaleTimeString()}`;
    $("status").classList.remove("bad");
  } catch (e) {
    $("status").textContent = `/metrics: ${e.message}`;
    $("status").classList.add("bad");
  }
  setTimeout(poll, POLL_MS);
}

CHARTS.forEach(build);
poll();
