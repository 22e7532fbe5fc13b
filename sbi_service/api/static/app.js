// The sbi-service dashboard: three pages over the REST API (#models, #jobs, #sample).
// No build step. The API key is kept in localStorage and sent as the X-API-Key header.
"use strict";

const KEY_STORAGE = "sbi-service-api-key";
const page = document.getElementById("page");
let timer = null; // the polling of the jobs page

function esc(value) {
  return String(value ?? "").replace(/[&<>"']/g, (c) => ({
    "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;",
  })[c]);
}

function badge(state) {
  return `<span class="badge ${esc(state)}">${esc(String(state).replace("_", " "))}</span>`;
}

function showError(message) {
  const box = document.getElementById("error");
  box.hidden = !message;
  box.textContent = message || "";
}

// fetch with the key; JSON in and out; an error answer becomes an Error naming its fields.
async function api(path, options = {}) {
  const headers = { ...(options.headers || {}) };
  const key = localStorage.getItem(KEY_STORAGE);
  if (key) headers["X-API-Key"] = key;
  if (options.json !== undefined) {
    headers["Content-Type"] = "application/json";
    options = { ...options, body: JSON.stringify(options.json) };
  }
  const response = await fetch(path, { ...options, headers });
  if (!response.ok) {
    let text = `${response.status} ${response.statusText}`;
    try {
      const body = await response.json();
      text = `${response.status}: ` + body.detail.map((d) => `${d.field}: ${d.message}`).join("\n");
    } catch (e) { /* not JSON: keep the status line */ }
    throw new Error(text);
  }
  return (response.headers.get("content-type") || "").includes("json")
    ? response.json() : response.text();
}

// The diagnostic gate's options, shared by the train form and the diagnose buttons.
const gate = { num_simulations: 200, num_posterior_samples: 300 };

function bindGateOptions() {
  const sims = document.getElementById("gate-sims");
  const samples = document.getElementById("gate-samples");
  sims.addEventListener("input", () => { gate.num_simulations = Number(sims.value); });
  samples.addEventListener("input", () => { gate.num_posterior_samples = Number(samples.value); });
}

// -- models -------------------------------------------------------------------------
async function modelsPage() {
  const models = await api("/v1/models");
  const rows = models.map((m) => {
    const c = m.config;
    const versions = m.version_details.slice().reverse().map((v) => {
      const checks = v.checks
        ? `${v.checks.filter((k) => k.passed).length}/${v.checks.length} checks passed` : "";
      const report = v.report
        ? `<button class="show-report" data-url="${esc(v.report)}">report</button>` : "";
      const served = v.version === m.served_version ? " <strong>served</strong>" : "";
      return `<tr class="version-row" data-model="${esc(m.model)}" data-version="${v.version}">
        <td>v${v.version}${served}</td><td>${badge(v.verdict)}</td><td>${esc(checks)}</td>
        <td>${new Date(v.created_at * 1000).toLocaleString()}</td>
        <td>${report}
          <button class="diagnose" data-model="${esc(m.model)}" data-version="${v.version}">diagnose</button>
          <button class="promote" data-model="${esc(m.model)}" data-version="${v.version}">serve this</button>
          <a href="#sample?model=${encodeURIComponent(m.model)}&version=${v.version}">sample</a></td></tr>`;
    }).join("");
    const promotions = m.promotions.map((p) =>
      `<li>v${p.version}${p.forced ? " (forced)" : ""} by ${esc(p.actor)}, ` +
      `${new Date(p.at * 1000).toLocaleString()}, verdict then: ${esc(p.verdict)}</li>`).join("");
    return `<section class="model" id="model-${esc(m.model)}">
      <h2>${esc(m.model)} <span class="muted">${esc(c.estimator.kind)}, ` +
      `${esc(c.simulator || c.data || "uploaded data")}, policy ${esc(m.serve_policy)}</span></h2>
      ${m.not_served_because ? `<p class="muted">not served: ${esc(m.not_served_because)}</p>` : ""}
      <table><tr><th>version</th><th>verdict</th><th>checks</th><th>created</th><th></th></tr>
      ${versions}</table>
      ${promotions ? `<p>Promotions:</p><ul>${promotions}</ul>` : ""}</section>`;
  }).join("");
  page.innerHTML = `<section><form class="inline" id="gate-options">
      <label>diagnose with <input id="gate-sims" type="number" min="10" value="${gate.num_simulations}"> test simulations</label>
      <label>and <input id="gate-samples" type="number" min="10" value="${gate.num_posterior_samples}"> posterior samples each</label>
    </form></section>` +
    (rows || "<section><p>No models yet: start a train job on the Jobs page.</p></section>") +
    `<section id="report-box" hidden><h2 id="report-title"></h2><iframe id="report-frame"></iframe></section>`;
  bindGateOptions();
  page.querySelectorAll(".show-report").forEach((b) => b.addEventListener("click", () => run(async () => {
    const html = await api(b.dataset.url, { headers: { Accept: "text/html" } });
    document.getElementById("report-title").textContent = b.dataset.url;
    document.getElementById("report-frame").srcdoc = html;
    document.getElementById("report-box").hidden = false;
  })));
  page.querySelectorAll(".diagnose").forEach((b) => b.addEventListener("click", () => run(async () => {
    await api("/v1/jobs", { method: "POST", json: {
      kind: "diagnose", model: b.dataset.model, version: Number(b.dataset.version), ...gate } });
    location.hash = "#jobs";
  })));
  page.querySelectorAll(".promote").forEach((b) => b.addEventListener("click", () => run(async () => {
    const path = `/v1/models/${encodeURIComponent(b.dataset.model)}/reload`;
    const version = Number(b.dataset.version);
    try {
      await api(path, { method: "POST", json: { version } });
    } catch (e) {
      // 409: the policy refuses this version; an operator may force it (recorded).
      if (!e.message.startsWith("409") || !confirm(`${e.message}\n\nForce v${version}?`)) throw e;
      await api(path, { method: "POST", json: { version, force: true } });
    }
    await modelsPage();
  })));
}

// -- jobs ---------------------------------------------------------------------------
async function jobsPage() {
  const simulators = await api("/v1/simulators");
  const options = simulators.filter((s) => !s.error)
    .map((s) => `<option value="${esc(s.name)}">${esc(s.name)}</option>`).join("");
  page.innerHTML = `<section><h2>Train a model</h2>
    <form id="train-form" class="inline">
      <label>name <input id="train-name" required value="model"></label>
      <label>simulator <select id="train-simulator">${options}</select></label>
      <label>simulations <input id="train-num" type="number" min="10" value="2000"></label>
      <label>estimator <select id="train-estimator">
        <option>auto</option><option>nsf</option><option>maf</option><option>npse</option><option>fmpe</option></select></label>
      <label>seed <input id="train-seed" type="number" min="0" value="0"></label>
      <label>max epochs <input id="train-epochs" type="number" min="1" value="50"></label>
      <label><input id="train-gate" type="checkbox" checked> run the diagnostic gate after training</label>
      <button type="submit" id="train-submit">Train</button>
    </form>
    <form class="inline" id="gate-options">
      <label>the gate: <input id="gate-sims" type="number" min="10" value="${gate.num_simulations}"> test simulations</label>
      <label><input id="gate-samples" type="number" min="10" value="${gate.num_posterior_samples}"> posterior samples each</label>
    </form></section>
    <section><h2>Jobs</h2><div id="jobs-table"></div></section>`;
  document.getElementById("train-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const job = {
      kind: "train",
      name: document.getElementById("train-name").value,
      simulator: document.getElementById("train-simulator").value,
      num_simulations: Number(document.getElementById("train-num").value),
      estimator: document.getElementById("train-estimator").value,
      seed: Number(document.getElementById("train-seed").value),
      train: { max_epochs: Number(document.getElementById("train-epochs").value) },
    };
    if (document.getElementById("train-gate").checked) job.diagnose = { ...gate };
    await run(() => api("/v1/jobs", { method: "POST", json: job }).then(refreshJobs));
  });
  bindGateOptions();
  await refreshJobs();
  timer = setInterval(() => refreshJobs().catch((e) => showError(e.message)), 1000);
}

async function refreshJobs() {
  const jobs = await api("/v1/jobs?limit=30");
  const rows = jobs.map((j) => {
    const target = j.request.name || j.request.model || "";
    let outcome = esc(j.error || "");
    const r = j.result;
    if (r) {
      const verdict = r.diagnosis ? r.diagnosis.passed : r.passed;
      outcome = `${esc(r.model)} v${r.version}` +
        (verdict === undefined ? "" : " " + badge(verdict ? "passed" : "failed"));
    }
    return `<tr class="job-row" data-id="${esc(j.id)}" data-state="${esc(j.state)}">
      <td>${esc(j.id)}</td><td>${esc(j.kind)}</td><td>${esc(target)}</td><td>${badge(j.state)}</td>
      <td><progress max="1" value="${j.progress}"></progress> ${Math.round(j.progress * 100)}%</td>
      <td class="outcome">${outcome}</td></tr>`;
  }).join("");
  const table = document.getElementById("jobs-table");
  if (table) {
    table.innerHTML = `<table><tr><th>id</th><th>kind</th><th>model</th><th>state</th>
      <th>progress</th><th>outcome</th></tr>${rows}</table>`;
  }
}

// -- sample ---------------------------------------------------------------------------
async function samplePage(params) {
  const models = await api("/v1/models");
  const chosen = params.get("model") || (models[0] && models[0].model) || "";
  const options = models.map((m) =>
    `<option ${m.model === chosen ? "selected" : ""}>${esc(m.model)}</option>`).join("");
  page.innerHTML = `<section><h2>Posterior samples for an observation</h2>
    <form id="sample-form" class="inline">
      <label>model <select id="sample-model">${options}</select></label>
      <label>version <input id="sample-version" type="number" min="1"
        placeholder="served" value="${esc(params.get("version") || "")}"></label>
      <label>samples <input id="sample-num" type="number" min="1" value="2000"></label>
      <label>seed <input id="sample-seed" type="number" min="0" value="0"></label>
      <p class="muted" id="sample-shape"></p>
      <textarea id="sample-x" rows="3" placeholder="one observation: numbers separated by commas or spaces, or a JSON array"></textarea>
      <label>or upload <input id="sample-file" type="file" accept=".npy,.json,.txt,.csv"></label>
      <button type="submit" id="sample-submit">Draw samples</button>
    </form></section>
    <section id="sample-result" hidden><div class="result-head" id="sample-head"></div>
      <canvas id="pairplot" width="560" height="560"></canvas>
      <h2>Summary</h2><div id="sample-summary"></div></section>`;
  const describe = () => {
    const m = models.find((x) => x.model === document.getElementById("sample-model").value);
    document.getElementById("sample-shape").textContent = m
      ? `x has shape [${m.config.x_shape}]; theta has ${m.config.dim_theta} parameters` : "";
  };
  document.getElementById("sample-model").addEventListener("change", describe);
  describe();
  document.getElementById("sample-file").addEventListener("change", async (event) => {
    const file = event.target.files[0];
    if (!file) return;
    await run(async () => {
      const values = file.name.endsWith(".npy")
        ? parseNpy(await file.arrayBuffer()) : parseNumbers(await file.text());
      document.getElementById("sample-x").value = JSON.stringify(values);
    });
  });
  document.getElementById("sample-form").addEventListener("submit", (event) => {
    event.preventDefault();
    run(drawSamples);
  });
}

async function drawSamples() {
  const model = document.getElementById("sample-model").value;
  const version = document.getElementById("sample-version").value;
  const body = {
    observations: [parseNumbers(document.getElementById("sample-x").value)],
    num_samples: Number(document.getElementById("sample-num").value),
    seed: Number(document.getElementById("sample-seed").value),
    summary: true,
  };
  if (version) body.version = Number(version);
  const out = await api(`/v1/models/${encodeURIComponent(model)}/samples`,
    { method: "POST", json: body });
  document.getElementById("sample-result").hidden = false;
  document.getElementById("sample-head").innerHTML =
    `${esc(out.model)} v${out.version} ${badge(out.verdict)} seed ${out.seed}, ` +
    `${body.num_samples} samples`;
  pairPlot(document.getElementById("pairplot"), out.samples[0]);
  const s = out.summary;
  const rows = s.mean[0].map((_, i) => `<tr><td>θ${i + 1}</td>` +
    [s.mean, s.std, s.q05, s.median, s.q95]
      .map((a) => `<td>${a[0][i].toFixed(4)}</td>`).join("") + "</tr>").join("");
  document.getElementById("sample-summary").innerHTML = `<table id="summary-table">
    <tr><th>parameter</th><th>mean</th><th>sd</th><th>5%</th><th>median</th><th>95%</th></tr>
    ${rows}</table>`;
}

// Numbers from text: a JSON array (nested arrays are flattened) or numbers separated by
// commas, spaces or new lines.
function parseNumbers(text) {
  const trimmed = text.trim();
  if (!trimmed) throw new Error("type or upload an observation first");
  const values = trimmed.startsWith("[")
    ? JSON.parse(trimmed).flat(Infinity) : trimmed.split(/[\s,;]+/).map(Number);
  if (values.some((v) => typeof v !== "number" || !Number.isFinite(v))) {
    throw new Error("the observation must contain finite numbers only");
  }
  return values;
}

// A .npy file (little-endian float32/float64/int32/int64, C order) as a flat list.
function parseNpy(buffer) {
  const bytes = new Uint8Array(buffer);
  const magic = String.fromCharCode(...bytes.slice(1, 6));
  if (bytes[0] !== 0x93 || magic !== "NUMPY") throw new Error("not a .npy file");
  const view = new DataView(buffer);
  const major = bytes[6];
  const headerLength = major === 1 ? view.getUint16(8, true) : view.getUint32(8, true);
  const start = major === 1 ? 10 : 12;
  const header = new TextDecoder().decode(bytes.slice(start, start + headerLength));
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error("Fortran-ordered .npy is not supported");
  const types = { "<f4": Float32Array, "<f8": Float64Array, "<i4": Int32Array, "<i8": BigInt64Array };
  if (!types[descr]) throw new Error(`unsupported .npy dtype ${descr}`);
  const data = buffer.slice(start + headerLength);
  return Array.from(new types[descr](data), Number);
}

// Pair plot of samples (N, d): histograms on the diagonal, scatter below it.
function pairPlot(canvas, samples) {
  const d = samples[0].length;
  const size = canvas.width;
  const cell = size / d;
  const pad = 14;
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, size, size);
  const lo = [], hi = [];
  for (let j = 0; j < d; j++) {
    const col = samples.map((s) => s[j]);
    lo.push(Math.min(...col));
    hi.push(Math.max(...col));
  }
  const pos = (v, j) => (v - lo[j]) / (hi[j] - lo[j] || 1);
  ctx.font = "11px sans-serif";
  for (let r = 0; r < d; r++) {
    for (let c = 0; c <= r; c++) {
      const x0 = c * cell + pad, y0 = r * cell + pad, w = cell - 2 * pad;
      ctx.strokeStyle = "#d0d7de";
      ctx.strokeRect(x0, y0, w, w);
      if (r === c) {
        const bins = new Array(30).fill(0);
        samples.forEach((s) => { bins[Math.min(29, Math.floor(pos(s[c], c) * 30))] += 1; });
        const top = Math.max(...bins);
        ctx.fillStyle = "#0969da";
        bins.forEach((b, i) => ctx.fillRect(x0 + (i * w) / 30, y0 + w * (1 - b / top), w / 30 - 1, (w * b) / top));
        ctx.fillStyle = "#1f2328";
        ctx.fillText(`θ${c + 1} [${lo[c].toFixed(2)}, ${hi[c].toFixed(2)}]`, x0 + 2, y0 + 11);
      } else {
        ctx.fillStyle = "rgba(9, 105, 218, 0.25)";
        samples.forEach((s) => ctx.fillRect(x0 + pos(s[c], c) * w, y0 + (1 - pos(s[r], r)) * w, 2, 2));
      }
    }
  }
}

// -- routing -------------------------------------------------------------------------
async function run(work) {
  showError("");
  try {
    await work();
  } catch (e) {
    showError(e.message);
  }
}

function route() {
  clearInterval(timer);
  const [name, query] = (location.hash.slice(1) || "models").split("?");
  const params = new URLSearchParams(query || "");
  document.querySelectorAll("nav a").forEach((a) =>
    a.classList.toggle("active", a.id === `nav-${name}`));
  const pages = { models: modelsPage, jobs: jobsPage, sample: samplePage };
  // data-renders counts finished renders, so a script can wait for the page to settle.
  run(() => (pages[name] || modelsPage)(params))
    .then(() => { page.dataset.renders = Number(page.dataset.renders || 0) + 1; });
}

document.getElementById("api-key").value = localStorage.getItem(KEY_STORAGE) || "";
document.getElementById("key-form").addEventListener("submit", (event) => {
  event.preventDefault();
  localStorage.setItem(KEY_STORAGE, document.getElementById("api-key").value);
  document.getElementById("key-state").textContent = "saved";
  route();
});
window.addEventListener("hashchange", route);
route();
