// immunofold web page. All user-supplied text is inserted with textContent / setAttribute: never parsed as HTML.
"use strict";

const SLOTS = { antibody: ["heavy", "light"], nanobody: ["heavy"], tcr: ["alpha", "beta"] };
const FIELDS = ["kind", "heavy", "light", "alpha", "beta", "fasta", "form"];
const EXAMPLE = {
  heavy: "EVQLVESGGGLVQPGGSLRLSCAASGFNIKDTYIHWVRQAPGKGLEWVARIYPTNGYTRYADSVKGRFTISADTSKNTAYLQMNSLRAEDTAVYYCSRWGGDGFYAMDYWGQGTLVTVSS",
  light: "DIQMTQSPSSLSASVGDRVTITCRASQDVNTAVAWYQQKPGKAPKLLIYSASFLYSGVPSRFSGSRSGTDFTLTISSLQPEDFATYYCQQHYTTPPTFGQGTKVEIK",
};
// Error colour scale (Å), shared by the 3D view and the legend (style.css .legend-bar).
const SCALE_MAX = 4.0;
const STOPS = [[0.0, [0x00, 0x53, 0xd6]], [0.25, [0x65, 0xcb, 0xf3]], [0.5, [0xff, 0xdb, 0x13]], [1.0, [0xff, 0x7d, 0x45]]];
const POLL_MS = 400;
// Patch metrics whose residues are shown as sticks in the 3D view when flagged (style.css .swatch-*).
const PATCH_COLOURS = { psh: "#e69f00", ppc: "#0072b2", pnc: "#cc3311" };
// The server's page token: sent with every POST (the server refuses cross-site requests without it).
const CSRF_TOKEN = document.querySelector("meta[name=csrf-token]").content;

const $ = (id) => document.getElementById(id);
const svgNS = "http://www.w3.org/2000/svg";

function el(tag, text, attrs) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  return node;
}
function svg(tag, attrs, text) {
  const node = document.createElementNS(svgNS, tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function errorColour(value) {
  const t = Math.max(0, Math.min(1, value / SCALE_MAX));
  for (let i = 1; i < STOPS.length; i++) {
    const [t1, c1] = STOPS[i];
    const [t0, c0] = STOPS[i - 1];
    if (t <= t1) {
      const f = (t - t0) / (t1 - t0);
      const c = c0.map((v, k) => Math.round(v + f * (c1[k] - v)));
      return (c[0] << 16) | (c[1] << 8) | c[2];
    }
  }
  const last = STOPS[STOPS.length - 1][1];
  return (last[0] << 16) | (last[1] << 8) | last[2];
}

// --- tabs --------------------------------------------------------------------------------
function showPanel(panelId) {
  for (const tab of document.querySelectorAll(".tab")) {
    const active = tab.dataset.panel === panelId;
    tab.classList.toggle("active", active);
    $(tab.dataset.panel).hidden = !active;
  }
}

// --- errors next to fields -----------------------------------------------------------------
function clearErrors(fields, prefix) {
  for (const f of fields) {
    const box = $(`error-${prefix}${f}`) || $(`error-${f}`);
    if (box) box.textContent = "";
    const input = $(f === "file" ? "batch-file" : f);
    if (input && input.setAttribute) input.removeAttribute("aria-invalid");
  }
}
function showFieldError(field, message, fallbackBox) {
  let box = field ? $(`error-${field}`) : null;
  if (field === "fasta") $("fasta-box").open = true;
  if (!box || (box.closest(".chain-field") && box.closest(".chain-field").hidden)) box = $(fallbackBox);
  box.textContent = message;
  const input = $(field === "file" ? "batch-file" : field);
  if (input && input.tagName && input.tagName !== "FIELDSET") input.setAttribute("aria-invalid", "true");
}

async function readError(response) {
  try {
    const body = await response.json();
    return { field: body.field || null, message: body.detail || `error ${response.status}` };
  } catch (e) {
    return { field: null, message: `error ${response.status}` };
  }
}

// --- single prediction -----------------------------------------------------------------------
function currentKind() {
  return document.querySelector("input[name=kind]:checked").value;
}
function updateChainFields() {
  const slots = SLOTS[currentKind()];
  for (const field of document.querySelectorAll(".chain-field")) field.hidden = !slots.includes(field.dataset.slot);
  $("heavy").previousElementSibling.textContent = currentKind() === "nanobody" ? "Nanobody (VHH)" : "Heavy chain (VH)";
}

let viewer = null;
let pollTimer = null;
let currentJob = null;

async function submitSingle(event) {
  event.preventDefault();
  clearErrors(FIELDS, "");
  const kind = currentKind();
  const body = { kind, name: $("name").value, refine: $("refine").checked, fasta: $("fasta").value };
  for (const slot of SLOTS[kind]) body[slot] = $(slot).value;
  $("submit").disabled = true;
  try {
    const response = await fetch("/api/predict", {
      method: "POST", headers: { "Content-Type": "application/json", "X-CSRF-Token": CSRF_TOKEN }, body: JSON.stringify(body),
    });
    if (response.status !== 202) {
      const { field, message } = await readError(response);
      showFieldError(field, message, "error-form");
      $("submit").disabled = false;
      return;
    }
    const job = await response.json();
    location.hash = `job=${job.id}`;
    watchJob(job.id);
  } catch (e) {
    showFieldError(null, `could not reach the server (${e.message})`, "error-form");
    $("submit").disabled = false;
  }
}

function setProgress(prefix, job) {
  $(`${prefix}-progress`).hidden = false;
  let text = job.stage || job.status;
  if (job.status === "queued" && job.queue_position) text = `queued (${job.queue_position} job(s) ahead)`;
  const bar = $(`${prefix}-bar`);
  if (job.total > 1) {
    bar.max = job.total; bar.value = Math.min(job.done, job.total);
    text += ` — ${job.done} of ${job.total}`;
  } else if (job.type === "batch" && job.done > 0) {
    bar.removeAttribute("value");
    text += ` — ${job.done} model(s) written`;
  } else {
    bar.removeAttribute("value");
  }
  $(`${prefix}-stage`).textContent = text;
}

function watchJob(jobId) {
  if (jobId === currentJob) return;
  currentJob = jobId;
  if (pollTimer) clearTimeout(pollTimer);
  const poll = async () => {
    if (jobId !== currentJob) return;
    let job;
    try {
      const response = await fetch(`/api/jobs/${encodeURIComponent(jobId)}`);
      if (!response.ok) {
        const { message } = await readError(response);
        finishWithError(null, message);
        return;
      }
      job = await response.json();
      if (jobId !== currentJob) return;
    } catch (e) {
      pollTimer = setTimeout(poll, POLL_MS * 3);
      return;
    }
    const prefix = job.type === "batch" ? "batch" : "single";
    showPanel(job.type === "batch" ? "panel-batch" : "panel-single");
    if (job.status === "done") {
      $(`${prefix}-progress`).hidden = true;
      if (job.type === "batch") showBatchResult(job); else await showResult(job);
      finishJob();
    } else if (job.status === "failed") {
      finishWithError(job.type, job.error || "the job failed");
    } else {
      setProgress(prefix, job);
      pollTimer = setTimeout(poll, POLL_MS);
    }
  };
  poll();
}

function finishJob() {
  currentJob = null;
  $("submit").disabled = false;
  $("batch-submit").disabled = false;
  loadRecent();
}
function finishWithError(type, message) {
  $("single-progress").hidden = true;
  $("batch-progress").hidden = true;
  showFieldError(null, message, type === "batch" ? "error-batch-form" : "error-form");
  finishJob();
}

async function showResult(job) {
  const result = job.result;
  $("result").hidden = false;
  $("result-title").textContent = result.name;
  const kindLabel = { antibody: "antibody Fv", nanobody: "nanobody", tcr: "TCR" }[result.kind] || result.kind;
  const nres = result.chains.reduce((n, c) => n + c.residues.length, 0);
  $("result-summary").textContent =
    `${kindLabel}, ${nres} residues, mean predicted error ${result.mean_error.toFixed(2)} Å ` +
    `(max ${result.max_error.toFixed(2)} Å), ${result.refined ? "refined" : result.geometry_cleaned ? "unrefined, geometry cleaned" : "unrefined"}, weights ${result.weights_version}`;
  const notes = $("result-notes");
  notes.replaceChildren(...[...result.notes, result.refine_message].filter(Boolean).map((n) => el("li", n)));
  $("download-pdb").href = `/api/jobs/${job.id}/model.pdb`;
  $("download-cif").href = `/api/jobs/${job.id}/model.cif`;
  drawPlots(result);
  drawTable(result);
  drawDevelopability(result.developability);
  const pdb = await (await fetch(`/api/jobs/${job.id}/model.pdb`)).text();
  drawViewer(pdb, result);
}

function flaggedPatches(profile) {
  if (!profile || !profile.metrics) return [];
  return Object.values(profile.metrics).filter((m) => m.flag !== "green" && PATCH_COLOURS[m.name]);
}

function rangeText(m) {
  const green = m.amber_to !== null && m.amber_from !== null ? `${m.amber_to}–${m.amber_from}`
    : m.amber_from !== null ? `< ${m.amber_from}` : `> ${m.amber_to}`;
  const red = [m.red_below !== null ? `< ${m.red_below}` : null, m.red_above !== null ? `> ${m.red_above}` : null];
  return `green ${green}, red ${red.filter(Boolean).join(" or ")}`;
}

function drawDevelopability(profile) {
  const box = $("developability");
  box.hidden = !profile;
  if (!profile) return;
  const body = $("developability-table").querySelector("tbody");
  if (profile.error) {
    $("developability-title").textContent = "Developability";
    $("developability-hint").textContent = `No developability profile: ${profile.error}`;
    body.replaceChildren();
    return;
  }
  const source = profile.profiler === "TAP" ? "Therapeutic Antibody Profiler (Raybould et al. 2019, thresholds of 2024)"
    : "Therapeutic Nanobody Profiler (Gordon et al. 2025)";
  $("developability-title").textContent = `Developability (${profile.profiler})`;
  $("developability-hint").textContent =
    `${source}, computed on the predicted structure. Amber: outside 95% of clinical-stage therapeutics; ` +
    "red: beyond all of them. Patch metrics depend on the modelled side chains; see the README for how far to trust them." +
    " It is the mean over the four ensemble members (each with its geometry cleaned), so refining does not change it.";
  body.replaceChildren(...Object.values(profile.metrics).map((m) => {
    const row = el("tr", null, { "data-metric": m.name, "data-flag": m.flag });
    row.appendChild(el("td", m.label));
    row.appendChild(el("td", Number.isInteger(m.value) ? m.value : m.value.toFixed(2)));
    const flag = el("td");
    flag.appendChild(el("span", m.flag, { class: `flag flag-${m.flag}` }));
    row.appendChild(flag);
    row.appendChild(el("td", rangeText(m)));
    const patch = el("td");
    if (m.flag !== "green" && PATCH_COLOURS[m.name]) {
      patch.appendChild(el("span", null, { class: `swatch swatch-${m.name}` }));
      patch.appendChild(document.createTextNode(`${m.residues.length} residues, sticks`));
    } else {
      patch.textContent = "—";
    }
    row.appendChild(patch);
    return row;
  }));
}

function residueSelection(residue) {
  return { chain: residue.chain, rescode: `${residue.resi}${residue.icode ? "^" + residue.icode : ""}` };
}

function drawViewer(pdb, result) {
  const box = $("viewer");
  box.removeAttribute("data-rendered");
  if (typeof $3Dmol === "undefined") {
    box.textContent = "The 3D viewer (3Dmol.js) did not load; run `immunofold serve --install-assets`.";
    return;
  }
  if (!viewer) viewer = $3Dmol.createViewer(box, { backgroundColor: "white", antialias: true });
  viewer.clear();
  viewer.removeAllLabels();
  viewer.addModel(pdb, "pdb");
  viewer.setStyle({}, { cartoon: { colorfunc: (atom) => errorColour(atom.b), thickness: 0.4 } });
  viewer.setStyle({ hetflag: true }, {});
  let labels = 0;
  for (const chain of result.chains) {
    for (const cdr of Object.keys(result.cdrs)) {
      const resi = chain.residues.filter((r) => r.region === cdr).map((r) => r.resi);
      if (!resi.length) continue;
      labels += 1;
      viewer.addLabel(`${chain.id}-${cdr}`, {
        fontSize: 12, fontColor: "white", backgroundColor: "#1d2330", backgroundOpacity: 0.75,
        inFront: true, showBackground: true,
      }, { chain: chain.id, resi: [...new Set(resi)], atom: "CA" });
    }
  }
  box.dataset.labels = String(labels);
  let highlighted = 0;
  for (const metric of flaggedPatches(result.developability)) {
    for (const residue of metric.residues) {
      const selection = residueSelection(residue);
      if (!viewer.selectedAtoms(selection).length) continue;
      viewer.addStyle(selection, { stick: { color: PATCH_COLOURS[metric.name], radius: 0.25 } });
      highlighted += 1;
    }
  }
  box.dataset.highlighted = String(highlighted);
  viewer.zoomTo();
  viewer.render(() => box.setAttribute("data-rendered", "true"));
  box.setAttribute("data-rendered", "true");
}

function drawPlots(result) {
  const container = $("error-plots");
  container.replaceChildren();
  const ymax = Math.max(SCALE_MAX, Math.ceil(result.max_error));
  for (const chain of result.chains) {
    const res = chain.residues;
    const left = 40, right = 10, top = 34, bottom = 30, step = 5;
    const width = left + right + Math.max(res.length * step, 200), height = 182;
    const plotH = height - top - bottom;
    const x = (i) => left + i * step + step / 2;
    const y = (v) => top + plotH * (1 - Math.min(v, ymax) / ymax);
    const root = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    root.appendChild(svg("title", {}, `Predicted error along chain ${chain.id}`));
    // CDR shading
    let i = 0;
    while (i < res.length) {
      if (res[i].region === "FR") { i++; continue; }
      let j = i;
      while (j + 1 < res.length && res[j + 1].region === res[i].region) j++;
      root.appendChild(svg("rect", { class: "cdr", x: left + i * step, y: top, width: (j - i + 1) * step, height: plotH }));
      root.appendChild(svg("text", { x: left + ((i + j + 1) / 2) * step, y: top - 4, "text-anchor": "middle" }, res[i].region));
      i = j + 1;
    }
    // axes and ticks
    root.appendChild(svg("line", { class: "axis", x1: left, y1: top + plotH, x2: width - right, y2: top + plotH }));
    root.appendChild(svg("line", { class: "axis", x1: left, y1: top, x2: left, y2: top + plotH }));
    for (let v = 0; v <= ymax; v += 1) {
      root.appendChild(svg("line", { class: "axis", x1: left - 3, y1: y(v), x2: left, y2: y(v) }));
      root.appendChild(svg("text", { x: left - 6, y: y(v) + 3, "text-anchor": "end" }, v));
    }
    res.forEach((r, k) => {
      if (r.imgt_number % 10 === 0 && r.imgt === String(r.imgt_number)) {
        root.appendChild(svg("line", { class: "axis", x1: x(k), y1: top + plotH, x2: x(k), y2: top + plotH + 3 }));
        root.appendChild(svg("text", { x: x(k), y: top + plotH + 14, "text-anchor": "middle" }, r.imgt));
      }
    });
    root.appendChild(svg("text", { x: left + 4, y: height - 4 }, "IMGT position"));
    root.appendChild(svg("text", { class: "chain-label", x: 2, y: 13 }, `Chain ${chain.id} (${chain.chain_class}) — error (Å)`));
    root.appendChild(svg("polyline", { class: "line", points: res.map((r, k) => `${x(k)},${y(r.error)}`).join(" ") }));
    res.forEach((r, k) => {
      const dot = svg("circle", { cx: x(k), cy: y(r.error), r: 2, fill: `#${errorColour(r.error).toString(16).padStart(6, "0")}` });
      dot.appendChild(svg("title", {}, `${chain.id} ${r.imgt} ${r.aa}: ${r.error.toFixed(2)} Å (${r.region})`));
      root.appendChild(dot);
    });
    container.appendChild(root);
  }
}

function drawTable(result) {
  const body = $("numbering-table").querySelector("tbody");
  const rows = [];
  for (const chain of result.chains) {
    for (const r of chain.residues) {
      const row = el("tr", null, r.region === "FR" ? {} : { class: "cdr" });
      for (const value of [chain.id, r.imgt, r.aa, r.region, r.error.toFixed(2)]) row.appendChild(el("td", value));
      rows.push(row);
    }
  }
  body.replaceChildren(...rows);
}

// --- batch -----------------------------------------------------------------------------------
async function submitBatch(event) {
  event.preventDefault();
  clearErrors(["file", "batch-form"], "");
  const file = $("batch-file").files[0];
  if (!file) { showFieldError("file", "choose a FASTA or CSV file", "error-batch-form"); return; }
  if (file.size > 20 * 1024 * 1024) { showFieldError("file", "file: larger than the 20 MB limit", "error-batch-form"); return; }
  const form = new FormData();
  form.append("file", file);
  form.append("kind", $("batch-kind").value);
  form.append("refine", $("batch-refine").checked ? "true" : "false");
  $("batch-submit").disabled = true;
  $("batch-result").hidden = true;
  try {
    const response = await fetch("/api/batch", { method: "POST", headers: { "X-CSRF-Token": CSRF_TOKEN }, body: form });
    if (response.status !== 202) {
      const { field, message } = await readError(response);
      showFieldError(field, message, "error-batch-form");
      $("batch-submit").disabled = false;
      return;
    }
    const job = await response.json();
    location.hash = `job=${job.id}`;
    watchJob(job.id);
  } catch (e) {
    showFieldError(null, `could not reach the server (${e.message})`, "error-batch-form");
    $("batch-submit").disabled = false;
  }
}

function fillTable(table, header, rows) {
  table.querySelector("thead").replaceChildren(el("tr"));
  const head = table.querySelector("thead tr");
  for (const h of header) head.appendChild(el("th", h));
  table.querySelector("tbody").replaceChildren(...rows.map((row) => {
    const tr = el("tr");
    for (const cell of row) tr.appendChild(el("td", cell));
    return tr;
  }));
}

function showBatchResult(job) {
  const result = job.result;
  $("batch-result").hidden = false;
  $("batch-title").textContent = job.name;
  $("batch-summary").textContent = `${result.n_ok} receptor(s) predicted, ${result.n_failed} failed.`;
  $("download-zip").href = `/api/jobs/${job.id}/results.zip`;
  fillTable($("batch-table"), result.summary_header, result.summary);
  $("batch-failures-title").hidden = result.failures.length === 0;
  fillTable($("batch-failures"), result.failures_header, result.failures);
}

// --- recent jobs -------------------------------------------------------------------------------
async function loadRecent() {
  try {
    const response = await fetch("/api/jobs?limit=15");
    const { jobs } = await response.json();
    $("recent-list").replaceChildren(...jobs.map((job) => {
      const item = el("li");
      const link = el("a", job.name, { href: `#job=${job.id}` });
      item.appendChild(link);
      const when = new Date(job.created * 1000).toLocaleString();
      item.appendChild(document.createTextNode(` — ${job.type}, ${job.status}, ${when}`));
      return item;
    }));
  } catch (e) { /* the list is a convenience */ }
}

function jobFromHash() {
  const match = /^#job=([0-9a-f]{32})$/.exec(location.hash);
  return match ? match[1] : null;
}

document.addEventListener("DOMContentLoaded", () => {
  for (const tab of document.querySelectorAll(".tab")) tab.addEventListener("click", () => showPanel(tab.dataset.panel));
  for (const radio of document.querySelectorAll("input[name=kind]")) radio.addEventListener("change", updateChainFields);
  $("single-form").addEventListener("submit", submitSingle);
  $("batch-form").addEventListener("submit", submitBatch);
  $("example").addEventListener("click", () => {
    document.querySelector("input[name=kind][value=antibody]").checked = true;
    updateChainFields();
    $("heavy").value = EXAMPLE.heavy;
    $("light").value = EXAMPLE.light;
    $("name").value = "trastuzumab";
  });
  window.addEventListener("hashchange", () => { const id = jobFromHash(); if (id) watchJob(id); });
  updateChainFields();
  loadRecent();
  const id = jobFromHash();
  if (id) watchJob(id);
});
