// detlab serve: the page. Plain JavaScript, no libraries; it talks to this server only
// (GET /api/models, GET /api/samples, POST /api/detect).
"use strict";

const MAX_CANVAS_SIDE = 640;
const MAX_UPSCALE = 3;
const MAX_POINT_LABELS = 10;  // the best points are labelled, the rest only marked

const page = {
  models: [],
  limits: null,
  image: null,          // the uploaded or sample image: {blob, name, bitmap (HTMLImageElement)}
  last: null,           // the last answer of /api/detect that was drawn
  insideOpen: false,
  view: 0,              // index of the look-inside view shown
  requests: 0,          // requests sent (the newest one wins)
  pending: 0,           // requests not answered yet
};
window.detlabPage = page;

const $ = (id) => document.getElementById(id);

function setStatus(text, state) {
  $("status").textContent = text;
  document.body.dataset.state = state;
}

// One well-separated colour a class (as detlab.data.drawing.class_colours).
function classColour(categoryId, alpha = 1) {
  const hue = (((categoryId - 1) * 0.618034) % 1) * 360;
  return `hsla(${hue.toFixed(0)}, 90%, 45%, ${alpha})`;
}

// ---- the token -------------------------------------------------------------------------------
// A server started with --token answers /api/ requests that carry it only. The page takes it once
// from the URL fragment (the address ending in #token=..., which browsers never send to a server), or
// from the form it shows when the server asks; it keeps it in this tab's session storage and
// removes it from the address bar.

const TOKEN_KEY = "detlab-serve-token";

class NeedsToken extends Error {}

function takeTokenFromUrl() {
  const match = /(?:^#|&)token=([^&]*)/.exec(location.hash);
  if (!match) return;
  sessionStorage.setItem(TOKEN_KEY, decodeURIComponent(match[1]));
  history.replaceState(null, "", location.pathname + location.search);
}

function withToken(options = {}) {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return options;
  return { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` } };
}

function askForToken() {
  $("token-form").hidden = false;
  $("token").focus();
  setStatus("This server needs its token.", "error");
}

async function getJson(url) {
  const response = await fetch(url, withToken());
  if (response.status === 401) throw new NeedsToken("this server needs its token");
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function loadBitmap(blob) {
  return new Promise((resolve, reject) => {
    const url = URL.createObjectURL(blob);
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = () => { URL.revokeObjectURL(url); reject(new Error("the browser cannot show this image")); };
    image.src = url;
  });
}

function loadDataUrl(source) {
  return new Promise((resolve, reject) => {
    const image = new Image();
    image.onload = () => resolve(image);
    image.onerror = reject;
    image.src = source;
  });
}

// ---- input ------------------------------------------------------------------------------------

async function init() {
  try {
    const [models, samples] = await Promise.all([getJson("/api/models"), getJson("/api/samples")]);
    page.models = models.models;
    page.limits = models.limits;
    fillModels();
    fillSamples(samples.samples);
    $("limits").textContent = `Limits: ${(page.limits.max_upload_bytes / 1048576).toFixed(1)} MiB, ` +
      `${(page.limits.max_pixels / 1e6).toFixed(1)} Mpixels, ${page.limits.time_limit_s} s a request.`;
    setStatus("Choose an image, or a sample.", "ready");
    if (samples.samples.length) await chooseSample(samples.samples[0], $("samples").firstElementChild);
  } catch (error) {
    if (error instanceof NeedsToken) askForToken();
    else setStatus(`Cannot reach the server: ${error.message}`, "error");
  }
}

function fillModels() {
  const select = $("model");
  for (const model of page.models) {
    const option = document.createElement("option");
    option.value = model.name;
    option.textContent = `${model.name} (${model.method})`;
    select.append(option);
  }
  select.disabled = page.models.length === 0;
  showModelInfo();
}

function showModelInfo() {
  const model = page.models.find((m) => m.name === $("model").value);
  $("model-info").textContent = model ? `${model.method}; classes: ${model.classes.join(", ")}; ` +
    `images of at most ${(model.max_pixels / 1e6).toFixed(2)} Mpixels` : "";
  $("inside-method").textContent = model ? model.method : "";
}

function fillSamples(samples) {
  for (const sample of samples) {
    const button = document.createElement("button");
    button.type = "button";
    button.title = `sample ${sample.name}`;
    button.setAttribute("aria-pressed", "false");
    const thumbnail = document.createElement("img");
    thumbnail.src = sample.url;
    thumbnail.alt = `sample ${sample.name}`;
    button.append(thumbnail);
    button.addEventListener("click", () => chooseSample(sample, button));
    $("samples").append(button);
  }
}

async function chooseSample(sample, button) {
  const response = await fetch(sample.url);
  await useImage(await response.blob(), `${sample.name}.png`);
  for (const other of $("samples").children) other.setAttribute("aria-pressed", String(other === button));
}

async function useImage(blob, name) {
  let bitmap = null;
  try {
    bitmap = await loadBitmap(blob);
  } catch {
    bitmap = null;  // the server decides whether it is an image; the canvas then stays empty
  }
  page.image = { blob, name, bitmap };
  await detect();
}

function threshold() {
  return $("score-threshold").value === "" ? "0.5" : $("score-threshold").value;
}

// ---- detection --------------------------------------------------------------------------------

async function detect() {
  if (!page.image) return;
  const form = new FormData();
  form.append("image", page.image.blob, page.image.name);
  form.append("model", $("model").value);
  form.append("score_threshold", threshold());
  form.append("inside", String(page.insideOpen));
  const number = ++page.requests;
  setPending(+1);
  setStatus("Detecting…", "busy");
  const sent = performance.now();
  try {
    const response = await fetch("/api/detect", withToken({ method: "POST", body: form }));
    const answer = await response.json();
    if (number !== page.requests) return;  // a newer request was sent meanwhile: it will draw
    if (response.status === 401) {
      askForToken();
      return;
    }
    if (!response.ok) {
      showError(answer.error || `error ${response.status}`);
      return;
    }
    answer.roundTripMs = performance.now() - sent;
    page.last = answer;
    draw(answer);
    document.body.dataset.drawn = String(number);
    const count = answer.detections.length;
    setStatus(`${count} detection${count === 1 ? "" : "s"} by ${answer.model}.`, "ready");
  } catch (error) {
    if (number === page.requests) showError(`request failed: ${error.message}`);
  } finally {
    setPending(-1);
  }
}

// The page's state is in the DOM too (body data-pending, data-state, data-drawn), for tests and
// tools that may not evaluate scripts under the page's Content-Security-Policy.
function setPending(change) {
  page.pending += change;
  document.body.dataset.pending = String(page.pending);
}

function showError(message) {
  page.last = null;
  $("detections").replaceChildren();
  $("timing").textContent = "";
  $("stages").replaceChildren();
  $("views").replaceChildren();
  clearCanvas($("canvas"));
  clearCanvas($("inside-canvas"));
  setStatus(message, "error");
}

function clearCanvas(canvas) {
  canvas.getContext("2d").clearRect(0, 0, canvas.width, canvas.height);
}

// Size the canvas for an image of width x height; returns the drawing scale.
function fitCanvas(canvas, width, height, maxUpscale = MAX_UPSCALE) {
  const scale = Math.min(maxUpscale, MAX_CANVAS_SIDE / Math.max(width, height));
  canvas.width = Math.max(1, Math.round(width * scale));
  canvas.height = Math.max(1, Math.round(height * scale));
  return scale;
}

function drawImage(canvas, answer, dim = 1) {
  const scale = fitCanvas(canvas, answer.image.width, answer.image.height);
  const context = canvas.getContext("2d");
  context.clearRect(0, 0, canvas.width, canvas.height);
  if (page.image && page.image.bitmap) {
    context.globalAlpha = dim;
    context.drawImage(page.image.bitmap, 0, 0, canvas.width, canvas.height);
    context.globalAlpha = 1;
  }
  return { context, scale };
}

function label(context, text, x, y, colour) {
  context.font = "600 12px system-ui, sans-serif";
  const width = context.measureText(text).width + 6;
  const top = Math.max(0, y - 16);
  context.fillStyle = colour;
  context.fillRect(x, top, width, 16);
  context.fillStyle = "#fff";
  context.fillText(text, x + 3, top + 12);
}

function draw(answer) {
  const { context, scale } = drawImage($("canvas"), answer);
  // Worst first, so the best boxes and their labels end up on top.
  for (const detection of [...answer.detections].reverse()) {
    const [x, y, w, h] = detection.bbox.map((v) => v * scale);
    const colour = classColour(detection.category_id);
    context.lineWidth = 4;
    context.strokeStyle = "rgba(0, 0, 0, 0.55)";  // a dark rim: the box shows on any background
    context.strokeRect(x, y, w, h);
    context.lineWidth = 2;
    context.strokeStyle = colour;
    context.strokeRect(x, y, w, h);
    label(context, `${detection.category_name} ${detection.score.toFixed(2)}`, x, y, colour);
    if (detection.keypoints) drawKeypoints(context, detection.keypoints, scale);
  }
  fillTable(answer.detections);
  const t = answer.timings;
  $("timing").textContent = `${answer.image.width} × ${answer.image.height} px · server ${t.total_ms.toFixed(0)} ms ` +
    `(model ${t.model_ms.toFixed(0)}, decode ${t.decode_ms.toFixed(0)}, queue ${t.queue_ms.toFixed(0)}) · ` +
    `round trip ${answer.roundTripMs.toFixed(0)} ms`;
  if (page.insideOpen) drawInside(answer);
}

function drawKeypoints(context, flat, scale) {
  context.fillStyle = "#ffd400";
  for (let i = 0; i + 1 < flat.length; i += 3) {
    context.beginPath();
    context.arc(flat[i] * scale, flat[i + 1] * scale, 3, 0, 2 * Math.PI);
    context.fill();
  }
}

function fillTable(detections) {
  const rows = detections.map((detection, index) => {
    const row = document.createElement("tr");
    const cells = [String(index + 1), detection.category_name, detection.score.toFixed(3),
      ...detection.bbox.map((v) => v.toFixed(1))];
    cells.forEach((text, column) => {
      const cell = document.createElement("td");
      if (column === 1) {
        const swatch = document.createElement("span");
        swatch.className = "swatch";
        swatch.style.background = classColour(detection.category_id);
        cell.append(swatch);
      }
      cell.append(text);
      row.append(cell);
    });
    return row;
  });
  $("detections").replaceChildren(...rows);
}

// ---- look inside ------------------------------------------------------------------------------

function toggleInside() {
  page.insideOpen = !page.insideOpen;
  $("inside").hidden = !page.insideOpen;
  $("inside-toggle").setAttribute("aria-expanded", String(page.insideOpen));
  $("inside-toggle").textContent = page.insideOpen ? "Hide the inside" : "Look inside";
  if (page.insideOpen) {
    if (page.last && page.last.inside) drawInside(page.last);
    else detect();
  }
}

function drawInside(answer) {
  if (!answer.inside) return;
  const stages = answer.inside.stages;
  const longest = Math.max(...stages.map((s) => s.ms), 1e-3);
  $("stages").replaceChildren(...stages.map((stage) => {
    const item = document.createElement("li");
    const ms = document.createElement("span");
    ms.className = "ms";
    ms.textContent = `${stage.ms.toFixed(1)} ms`;
    const bar = document.createElement("span");
    bar.className = "bar";
    bar.style.width = `${(100 * stage.ms / longest).toFixed(1)}%`;
    item.append(ms, stage.name, bar);
    return item;
  }));
  const views = answer.inside.views;
  if (page.view >= views.length) page.view = 0;
  $("views").replaceChildren(...views.map((view, index) => {
    const button = document.createElement("button");
    button.type = "button";
    button.setAttribute("role", "tab");
    button.setAttribute("aria-selected", String(index === page.view));
    button.textContent = shortTitle(view);
    button.addEventListener("click", () => { page.view = index; drawInside(answer); });
    return button;
  }));
  drawView(answer, views[page.view]);
}

function shortTitle(view) {
  return view.title.split(":")[0];
}

async function drawView(answer, view) {
  const canvas = $("inside-canvas");
  $("view-controls").hidden = !(view && view.kind === "boxes" && view.boxes.length > 1);
  $("view-title").textContent = view ? view.title : "This model has no stage to show.";
  if (!view) { drawImage(canvas, answer); return; }
  if (view.kind === "window") { await drawWindow(canvas, view); return; }
  const { context, scale } = drawImage(canvas, answer, view.kind === "heatmap" ? 0.55 : 0.8);
  if (view.kind === "boxes") drawBoxesView(context, view, scale);
  else if (view.kind === "heatmap") drawHeatmap(context, view, scale);
  else if (view.kind === "points") drawPoints(context, view, scale);
}

function drawBoxesView(context, view, scale) {
  const slider = $("box-count");
  slider.max = String(Math.max(1, view.boxes.length));
  const shown = Math.min(Number(slider.value), view.boxes.length);
  $("box-count-value").textContent = `${shown} of ${view.boxes.length}`;
  drawBoxes(context, view.boxes.slice(0, shown), view.labels, scale);
}

// Boxes [x1, y1, x2, y2] (best first) in the pixels of what is drawn at `scale`; thin and
// see-through without labels. The best is drawn last, on top.
function drawBoxes(context, boxes, labels, scale) {
  context.lineWidth = labels ? 2 : 1;
  for (let index = boxes.length - 1; index >= 0; index -= 1) {
    const [x1, y1, x2, y2] = boxes[index];
    const colour = `hsla(${((index * 0.618034) % 1) * 360}, 85%, 50%, ${labels ? 1 : 0.8})`;
    context.strokeStyle = colour;
    context.strokeRect(x1 * scale, y1 * scale, (x2 - x1) * scale, (y2 - y1) * scale);
    if (labels) label(context, labels[index], x1 * scale, y1 * scale, colour);
  }
}

// Values in [0, 1] -> transparent blue to opaque yellow-red.
function heat(value) {
  const hue = 240 - 220 * value;
  return `hsla(${hue.toFixed(0)}, 95%, 50%, ${(0.15 + 0.7 * value).toFixed(2)})`;
}

function drawHeatmap(context, view, scale) {
  const rows = view.values.length;
  const columns = rows ? view.values[0].length : 0;
  const [x1, y1, x2, y2] = view.region.map((v) => v * scale);
  const cellWidth = (x2 - x1) / columns;
  const cellHeight = (y2 - y1) / rows;
  view.values.forEach((row, i) => row.forEach((value, j) => {
    context.fillStyle = heat(value);
    context.fillRect(x1 + j * cellWidth, y1 + i * cellHeight, cellWidth, cellHeight);
  }));
  if (view.grid) {
    context.strokeStyle = "rgba(255, 255, 255, 0.8)";
    context.lineWidth = 1;
    for (let i = 0; i <= rows; i += 1) line(context, x1, y1 + i * cellHeight, x2, y1 + i * cellHeight);
    for (let j = 0; j <= columns; j += 1) line(context, x1 + j * cellWidth, y1, x1 + j * cellWidth, y2);
  }
  if (view.labels) {
    // Two lines a cell: its label (e.g. "circle 0.83"), then its value.
    const size = Math.max(8, Math.min(13, cellWidth / 7));
    context.font = `600 ${size}px system-ui, sans-serif`;
    context.fillStyle = "#fff";
    context.shadowColor = "rgba(0, 0, 0, 0.9)";
    context.shadowBlur = 3;
    view.labels.forEach((row, i) => row.forEach((text, j) => {
      const x = x1 + j * cellWidth + 3;
      context.fillText(text, x, y1 + i * cellHeight + size + 2, cellWidth - 6);
      context.fillText(`conf ${view.values[i][j].toFixed(2)}`, x, y1 + i * cellHeight + 2 * size + 4, cellWidth - 6);
    }));
    context.shadowBlur = 0;
  }
}

function line(context, x1, y1, x2, y2) {
  context.beginPath();
  context.moveTo(x1, y1);
  context.lineTo(x2, y2);
  context.stroke();
}

function drawPoints(context, view, scale) {
  view.points.forEach(([x, y], index) => {
    context.fillStyle = "#ffd400";
    context.strokeStyle = "#000";
    context.beginPath();
    context.arc(x * scale, y * scale, 4, 0, 2 * Math.PI);
    context.fill();
    context.stroke();
    if (view.labels && index < MAX_POINT_LABELS) {
      const score = view.scores ? ` ${view.scores[index].toFixed(2)}` : "";
      label(context, `${view.labels[index]}${score}`, x * scale + 5, y * scale, "rgba(0, 0, 0, 0.7)");
    }
  });
}

async function drawWindow(canvas, view) {
  const window_ = await loadDataUrl(view.src);
  const scale = fitCanvas(canvas, view.size, view.size, Infinity);  // a small window, shown large
  const context = canvas.getContext("2d");
  context.imageSmoothingEnabled = false;  // show the network's pixels as they are
  context.drawImage(window_, 0, 0, canvas.width, canvas.height);
  context.imageSmoothingEnabled = true;
  if (view.boxes) drawBoxes(context, view.boxes, view.labels, scale);
  if (view.points) drawPoints(context, { points: view.points }, scale);
}

// ---- wiring -----------------------------------------------------------------------------------

let thresholdTimer = null;
function thresholdChanged(value) {
  $("score-value").textContent = Number(value).toFixed(2);
  clearTimeout(thresholdTimer);
  thresholdTimer = setTimeout(detect, 200);
}

document.addEventListener("DOMContentLoaded", () => {
  $("model").addEventListener("change", () => { showModelInfo(); page.view = 0; detect(); });
  $("file").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (!file) return;
    for (const button of $("samples").children) button.setAttribute("aria-pressed", "false");
    if (page.limits && file.size > page.limits.max_upload_bytes) {
      // The server would refuse it too (413); say so without sending it.
      showError(`${file.name} has ${file.size} bytes, more than the server's limit of ${page.limits.max_upload_bytes}`);
      return;
    }
    useImage(file, file.name);
  });
  $("score-range").addEventListener("input", (event) => {
    $("score-threshold").value = event.target.value;
    thresholdChanged(event.target.value);
  });
  $("score-threshold").addEventListener("input", (event) => {
    $("score-range").value = event.target.value;
    thresholdChanged(event.target.value);
  });
  $("box-count").addEventListener("input", () => { if (page.last) drawInside(page.last); });
  $("inside-toggle").addEventListener("click", toggleInside);
  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(TOKEN_KEY, $("token").value.trim());
    $("token-form").hidden = true;
    if (page.models.length) detect();
    else init();
  });
  takeTokenFromUrl();
  init();
});
