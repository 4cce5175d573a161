/* vigil console: fills the four panels from the service's API. No framework, no build step.
   With a token set on the server, the token typed once is kept in this tab's sessionStorage and
   sent as "Authorization: Bearer" on every call (the API's own check). */
"use strict";

const TOKEN_KEY = "vigil.console.token";
const $ = (id) => document.getElementById(id);
const state = {
  session: null, models: [], points: [], count: 0, alarms: [], offset: null,
  tracker: { run: 0, active: false }, liveAbort: null,
};

function token() { return sessionStorage.getItem(TOKEN_KEY); }

function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  const t = token();
  if (t) headers.Authorization = "Bearer " + t;
  return fetch(path, Object.assign({}, options, { headers }));
}

async function errorText(response) {
  try {
    const body = await response.json();
    return `${response.status}: ${body.detail || JSON.stringify(body)}`;
  } catch (_) {
    return `${response.status} ${response.statusText}`;
  }
}

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === null || value === undefined) continue;
    if (key === "class") node.className = value;
    else if (key.startsWith("data-") || key === "href" || key === "download" || key === "src")
      node.setAttribute(key, value);
    else node[key] = value;
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const fmt = (x, digits = 4) => (x === null || x === undefined ? "–" : Number(x).toPrecision(digits));
const when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", " UTC") : "–");

/* --- sign-in ------------------------------------------------------------------------------ */

function showAuth() {
  const needs = state.session.token_required;
  $("login").hidden = !needs || Boolean(token());
  $("logout").hidden = !needs || !token();
  $("auth-state").textContent = !needs ? "no token required" : token() ? "signed in" : "";
}

async function signIn(event) {
  event.preventDefault();
  sessionStorage.setItem(TOKEN_KEY, $("token").value);
  const response = await api("/console/api/session/check", { method: "POST" });
  if (!response.ok) {
    sessionStorage.removeItem(TOKEN_KEY);
    showAuth();
    $("auth-state").textContent = "wrong token";
    $("auth-state").className = "error";
    return;
  }
  $("token").value = "";
  $("auth-state").className = "muted";
  showAuth();
  startLive();
}

function signOut() {
  sessionStorage.removeItem(TOKEN_KEY);
  if (state.liveAbort) state.liveAbort.abort();
  showAuth();
  $("live-status").textContent = "sign in to see the live stream";
}

/* --- models ------------------------------------------------------------------------------- */

function gateBadge(model) {
  const passed = model.gate.passed;
  const [cls, text] = passed === null ? ["", "gate: not recorded"]
    : passed ? ["pass", "gate PASSED"] : ["fail", "gate REJECTED"];
  return el("span", { class: `badge ${cls}`, "data-testid": "gate-verdict" }, text);
}

function promotionText(p) {
  if (p.by === "forced") return el("span", {}, el("span", { class: "badge forced" }, "forced"),
    ` by ${p.who} at ${when(p.at)}: ${p.reason || "(no reason)"}`);
  if (p.by === "gate") return `by the gate, at registration (${when(p.at)})`;
  return "not promoted by the gate or by force";
}

function modelCard(m) {
  const metrics = Object.entries(m.metrics);
  const refused = [
    ...m.refused_versions.map((r) => el("li", {}, `v${r.version}: refused by this server: ${r.reason}`)),
    ...m.gate_rejected_versions.map((r) => el("li", {},
      `v${r.version}: rejected by the gate (${when(r.registered_at)}): ${r.reasons.join("; ")}`)),
  ];
  return el("div", { class: "model", "data-testid": "model" },
    el("h3", {}, m.name, " ", el("span", { "data-testid": "model-version" }, `version ${m.version}`)),
    el("dl", { class: "kv" },
      el("dt", {}, "alias"), el("dd", {}, [m.alias, ...m.aliases].filter((a, i, all) => a && all.indexOf(a) === i).join(", ") || "–"),
      el("dt", {}, "model"), el("dd", {}, `${m.modality}, ${m.input_size.join("×")} input, ${m.channels} channel(s)` + (m.fps ? `, ${m.fps} fps` : "")),
      el("dt", {}, "threshold"), el("dd", { "data-testid": "threshold" }, fmt(m.threshold, 5)),
      el("dt", {}, "gate"), el("dd", {}, gateBadge(m)),
      el("dt", {}, "promoted"), el("dd", { "data-testid": "promotion" }, promotionText(m.promotion)),
    ),
    m.gate.reasons.length ? el("ul", { class: "reasons" }, m.gate.reasons.map((r) => el("li", {}, r))) : null,
    metrics.length ? el("table", { class: "metrics" },
      el("thead", {}, el("tr", {}, el("th", {}, "at the operating point"), el("th", {}, "value"))),
      el("tbody", {}, metrics.map(([k, v]) => el("tr", {}, el("td", {}, k), el("td", {}, fmt(v)))))) : null,
    el("h4", {}, "refused versions"),
    refused.length ? el("ul", { "data-testid": "refused" }, refused) : el("p", { class: "muted" }, "none"),
    m.registry_error ? el("p", { class: "error" }, m.registry_error) : null,
  );
}

async function loadModels() {
  const response = await fetch("/console/api/models");
  if (!response.ok) { $("models").textContent = await errorText(response); return; }
  const data = await response.json();
  state.models = data.models;
  $("models").className = "";
  $("models").replaceChildren(...data.models.map(modelCard),
    data.registry_reachable === false ? el("p", { class: "error" }, `registry unreachable: ${data.registry_error}`) : "");
}

/* --- score a part ------------------------------------------------------------------------- */

function isImage(file) { return file.type.startsWith("image/") || /\.(png|jpe?g|bmp|tiff?|webp)$/i.test(file.name); }

async function scoreFiles(list) {
  const files = [...list].filter(isImage).sort((a, b) => a.name.localeCompare(b.name, undefined, { numeric: true }));
  const status = $("score-status");
  $("results").replaceChildren();
  if (!files.length) { status.textContent = "no image files in the drop"; return; }
  const model = state.models[0];
  status.className = "muted";
  status.textContent = `scoring ${files.length} image(s)…`;
  if (model && model.modality === "video") {
    if (files.length < 2) { status.textContent = "a video model scores a clip: drop 2 or more frames"; return; }
    const form = new FormData();
    files.forEach((f) => form.append("files", f, f.name));
    const response = await api("/score/clip?heatmap=true", { method: "POST", body: form });
    if (!response.ok) { status.className = "error"; status.textContent = await errorText(response); return; }
    const answer = await response.json();
    files.forEach((f, i) => addResult(f, answer.results[i], answer));
  } else {
    for (const file of files) {
      const form = new FormData();
      form.append("file", file, file.name);
      const response = await api("/score?heatmap=true", { method: "POST", body: form });
      if (!response.ok) { addError(file, await errorText(response)); continue; }
      const answer = await response.json();
      addResult(file, answer, answer);
    }
  }
  status.textContent = `${files.length} image(s) scored`;
}

function addError(file, message) {
  $("results").append(el("div", { class: "result error", "data-testid": "result" }, `${file.name}: ${message}`));
}

function addResult(file, result, answer) {
  const input = el("img", { class: "input-img", src: URL.createObjectURL(file), alt: file.name });
  const overlayUrl = result.heatmap_png ? "data:image/png;base64," + result.heatmap_png : null;
  const overlay = overlayUrl ? el("img", { class: "overlay-img", src: overlayUrl, alt: "heat map" }) : null;
  const sizes = el("div", { class: "muted sizes" });
  const showSizes = () => {
    if (!input.naturalWidth || (overlay && !overlay.naturalWidth)) return;
    sizes.textContent = `input ${input.naturalWidth}×${input.naturalHeight}` +
      (overlay ? ` · overlay ${overlay.naturalWidth}×${overlay.naturalHeight}` : "");
  };
  input.addEventListener("load", showSizes);
  if (overlay) overlay.addEventListener("load", showSizes);
  const score = result.score;
  const threshold = answer.threshold;
  const verdict = score === null ? ["", "no score yet (first frame of a clip)"]
    : result.is_anomaly ? ["anomaly", "ANOMALY"] : ["normal", "normal"];
  const scale = Math.max(score || 0, threshold) * 1.25 || 1;
  const name = file.name.replace(/\.[^.]+$/, "");
  $("results").append(el("div", { class: "result", "data-testid": "result" },
    el("div", { class: "pair" },
      el("figure", {}, input, el("figcaption", {}, file.name)),
      overlay ? el("figure", {}, overlay, el("figcaption", {}, "heat map overlay")) : null,
      el("div", {},
        el("span", { class: `badge ${verdict[0]}`, "data-testid": "verdict" }, verdict[1]),
        el("div", { "data-testid": "score" }, `score ${fmt(score, 5)} vs threshold ${fmt(threshold, 5)}`),
        el("div", { class: "bar" }, el("span", { style: `width:${100 * (score || 0) / scale}%` }),
          el("i", { style: `left:${100 * threshold / scale}%` })),
        el("div", { class: "muted" }, `model ${answer.model_name} v${answer.model_version}`),
        sizes,
        overlayUrl ? el("a", { href: overlayUrl, download: `${name}-overlay.png`, "data-testid": "download" }, "download overlay PNG") : null,
      ))));
}

function setupDrop() {
  const zone = $("dropzone"), input = $("files");
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => { e.preventDefault(); zone.classList.remove("over"); scoreFiles(e.dataTransfer.files); });
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  input.addEventListener("change", () => { scoreFiles(input.files); input.value = ""; });
}

/* --- live --------------------------------------------------------------------------------- */

function addPoint(p) {
  /* The alarm rule of `vigil watch` (AlertTracker): above the threshold alert_frames in a row. */
  const t = state.tracker, n = state.session.alert_frames;
  if (p.score >= p.threshold) {
    t.run += 1;
    if (!t.active && t.run >= n) { t.active = true; state.alarms.push({ start: state.count - n + 1, end: null }); }
  } else {
    t.run = 0;
    if (t.active) { t.active = false; state.alarms[state.alarms.length - 1].end = state.count; }
  }
  state.points.push(p);
  state.count += 1;
  if (state.points.length > 2000) state.points.shift();
}

function drawTimeline() {
  const canvas = $("timeline"), ctx = canvas.getContext("2d");
  const w = canvas.width, h = canvas.height, pad = 6;
  const pts = state.points, first = state.count - pts.length;
  canvas.dataset.points = String(state.count);
  ctx.clearRect(0, 0, w, h);
  if (!pts.length) return;
  const top = Math.max(...pts.map((p) => Math.max(p.score, p.threshold))) * 1.1 || 1;
  const x = (i) => pad + ((i - first) / Math.max(pts.length - 1, 1)) * (w - 2 * pad);
  const y = (v) => h - pad - (v / top) * (h - 2 * pad);
  ctx.fillStyle = "rgba(192, 57, 43, 0.18)";
  for (const a of state.alarms) {
    const end = a.end === null ? state.count - 1 : a.end;
    if (end < first) continue;
    ctx.fillRect(x(Math.max(a.start, first)), 0, Math.max(x(end) - x(Math.max(a.start, first)), 2), h);
  }
  ctx.strokeStyle = "#c0392b"; ctx.setLineDash([5, 4]); ctx.beginPath();
  pts.forEach((p, i) => (i ? ctx.lineTo(x(first + i), y(p.threshold)) : ctx.moveTo(x(first), y(p.threshold))));
  ctx.stroke(); ctx.setLineDash([]);
  ctx.strokeStyle = "#2b6cb0"; ctx.lineWidth = 1.5; ctx.beginPath();
  pts.forEach((p, i) => (i ? ctx.lineTo(x(first + i), y(p.score)) : ctx.moveTo(x(first), y(p.score))));
  ctx.stroke();
  ctx.fillStyle = "#c0392b";
  pts.forEach((p, i) => { if (p.is_anomaly) ctx.fillRect(x(first + i) - 1.5, y(p.score) - 1.5, 3, 3); });
}

function liveStatus() {
  const last = state.points[state.points.length - 1];
  const open = state.tracker.active ? " · ALARM" : "";
  $("live-status").textContent = last
    ? `${state.count} point(s) · last ${when(last.time)}: score ${fmt(last.score)} vs ${fmt(last.threshold)}` +
      ` · ${state.alarms.length} alarm(s)${open}`
    : `waiting for scores in ${state.session.score_log}`;
  $("live-status").className = state.tracker.active ? "error" : "muted";
}

async function showFrame(frame) {
  const load = async (name) => {
    const response = await api(`/console/api/live/latest/${name}?stamp=${frame.stamp}`);
    return response.ok ? URL.createObjectURL(await response.blob()) : null;
  };
  const [input, overlay] = await Promise.all([load("frame.png"), load("overlay.png")]);
  if (!input || !overlay) return;
  for (const [id, url] of [["live-input", input], ["live-overlay", overlay]]) {
    const img = $(id);
    if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
    img.src = url;
  }
  $("live-frame").hidden = false;
  $("live-caption").textContent = `heat map · ${when(frame.time)} · score ${fmt(frame.score)}` +
    (frame.is_anomaly ? " · ANOMALY" : "");
}

function handleEvent(block) {
  let event = "message", data = "";
  for (const line of block.split("\n")) {
    if (!line || line.startsWith(":")) continue;
    const cut = line.indexOf(":");
    const field = cut < 0 ? line : line.slice(0, cut);
    const value = cut < 0 ? "" : line.slice(cut + 1).replace(/^ /, "");
    if (field === "event") event = value;
    else if (field === "data") data += value;
    else if (field === "id") state.offset = Number(value);
  }
  if (event === "points") {
    const body = JSON.parse(data);
    if (body.initial) { state.points = []; state.alarms = []; state.count = 0; state.tracker = { run: 0, active: false }; }
    body.points.forEach(addPoint);
    drawTimeline();
    liveStatus();
  } else if (event === "frame") {
    showFrame(JSON.parse(data));
  }
}

async function startLive() {
  $("alert-frames").textContent = state.session.alert_frames;
  if (!state.session.score_log) {
    $("live-status").textContent = "no score log: start `vigil serve --score-log PATH` with the file `vigil watch --score-log PATH` writes";
    return;
  }
  if (state.session.token_required && !token()) { $("live-status").textContent = "sign in to see the live stream"; return; }
  if (state.liveAbort) state.liveAbort.abort();
  const abort = new AbortController();
  state.liveAbort = abort;
  state.offset = null;
  while (!abort.signal.aborted) {
    try {
      const query = state.offset === null ? "" : `?offset=${state.offset}`;
      const response = await api(`/console/api/live/stream${query}`, { signal: abort.signal });
      if (!response.ok) {
        $("live-status").textContent = await errorText(response);
        $("live-status").className = "error";
        if (response.status === 401 || response.status === 404) return;
        await new Promise((r) => setTimeout(r, 2000));
        continue;
      }
      const reader = response.body.getReader(), decoder = new TextDecoder();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += decoder.decode(value, { stream: true });
        let cut;
        while ((cut = buffer.indexOf("\n\n")) >= 0) { handleEvent(buffer.slice(0, cut)); buffer = buffer.slice(cut + 2); }
      }
    } catch (error) {
      if (abort.signal.aborted) return;
      $("live-status").textContent = `stream interrupted (${error}); reconnecting`;
      await new Promise((r) => setTimeout(r, 1000));
    }
  }
}

/* --- retraining --------------------------------------------------------------------------- */

function cycleRow(c) {
  const datasets = Object.entries(c.datasets || {}).map(([name, d]) => el("div", {},
    `${name}: data ${d.data_version_before || "–"} → ${d.data_version_after || "–"} · `,
    d.verdict ? el("span", { class: `badge ${d.verdict === "pass" ? "pass" : d.verdict === "fail" ? "fail" : ""}` }, d.verdict) : "no candidate",
    ` · champion ${d.champion_before || "–"} → ${d.champion_after ?? d.champion_before ?? "–"}`));
  return el("tr", { "data-testid": "cycle" },
    el("td", {}, when(c.started), el("div", { class: "muted" }, c.cycle_id)),
    el("td", {}, c.status),
    el("td", {}, (c.trigger || []).join(", ") || "none"),
    el("td", {}, datasets),
    el("td", {}, c.duration_s === null || c.duration_s === undefined ? "–" : `${fmt(c.duration_s, 3)} s`),
    el("td", { class: c.error ? "error" : "" }, c.error ? `${c.error.step}: ${c.error.message}` : ""));
}

async function loadRetrain() {
  const response = await fetch("/console/api/retrain");
  if (!response.ok) { $("retrain-status").textContent = await errorText(response); return; }
  const data = await response.json();
  const body = $("cycles").querySelector("tbody");
  body.replaceChildren(...data.cycles.map(cycleRow));
  if (!data.cycles.length) body.append(el("tr", {}, el("td", { colSpan: 6, class: "muted" }, data.error || `no cycles recorded in ${data.records}`)));
  const out = $("retrain-output");
  out.hidden = !data.output.length;
  out.textContent = data.output.join("\n");
  $("retrain-run").disabled = data.running;
  if (data.running) $("retrain-status").textContent = `cycle running since ${when(data.started_at)}…`;
  else if (data.last && state.startedHere) {
    $("retrain-status").textContent = `last cycle from here: ${data.last.status}` + (data.last.error ? ` (${data.last.error.step}: ${data.last.error.message})` : "");
    state.startedHere = false;
  }
  clearTimeout(state.retrainTimer);
  state.retrainTimer = setTimeout(loadRetrain, data.running ? 2000 : 10000);
}

async function runCycle() {
  const status = $("retrain-status");
  status.className = "muted";
  status.textContent = "starting…";
  const response = await api("/console/api/retrain/run", { method: "POST" });
  if (response.status === 202) {
    state.startedHere = true;
    status.textContent = "cycle started";
  } else {
    status.className = "error";
    status.textContent = `refused: ${await errorText(response)}`;
  }
  status.dataset.code = String(response.status);
  loadRetrain();
}

/* --- start -------------------------------------------------------------------------------- */

async function main() {
  state.session = await (await fetch("/console/api/session")).json();
  showAuth();
  $("login").addEventListener("submit", signIn);
  $("logout").addEventListener("click", signOut);
  $("retrain-run").addEventListener("click", runCycle);
  setupDrop();
  await loadModels();
  setInterval(loadModels, 15000);
  loadRetrain();
  startLive();
  document.body.dataset.ready = "true";
}

main();
