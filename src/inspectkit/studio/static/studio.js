// inspectkit studio: the page. Plain JS, no build step, nothing from the network.
// Every text that comes from the server (class and file names) goes into the page as
// text nodes (h() below), never as HTML.
"use strict";

const S = { info: null, project: null, job: null, source: null, screen: null, trainValues: {} };
const STEPS = [
  ["classes", "Classes"], ["generate", "Generate"], ["train", "Train"],
  ["test", "Test"], ["export", "Evaluate & export"],
];

// ---------------------------------------------------------------- helpers
function h(tag, attrs, ...kids) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k === "style") el.style.cssText = v;  // CSSOM: allowed by the page's CSP
    else el.setAttribute(k, v === true ? "" : v);
  }
  for (const kid of kids.flat()) {
    if (kid === null || kid === undefined || kid === false) continue;
    el.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
  }
  return el;
}
const $ = (sel) => document.querySelector(sel);
const enc = encodeURIComponent;
const P = () => `/api/projects/${enc(S.project.name)}`;

async function api(method, url, body) {
  const opts = { method, headers: {} };
  if (body instanceof FormData) opts.body = body;
  else if (body !== undefined) {
    opts.body = JSON.stringify(body);
    opts.headers["Content-Type"] = "application/json";
  }
  const res = await fetch(url, opts);
  let data = null;
  try { data = await res.json(); } catch (e) { data = null; }
  if (!res.ok) throw new Error((data && data.error) || `${res.status} ${res.statusText}`);
  return data;
}

function toast(text, kind) {
  const t = h("div", { class: "toast" + (kind ? " " + kind : ""), role: "status", text });
  const box = $("#toasts");
  box.append(t);
  while (box.children.length > 3) box.firstChild.remove();
  setTimeout(() => t.remove(), kind === "error" ? 8000 : 3500);
}
async function attempt(fn) {
  try { return await fn(); } catch (e) { toast(e.message, "error"); return null; }
}
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
const fmt = (x, d = 3) => (x === null || x === undefined ? "–" : Number(x).toFixed(d));

function dropzone(text, onFiles, big) {
  const input = h("input", { type: "file", multiple: true, hidden: true,
    accept: (S.info.suffixes || []).join(",") });
  const zone = h("div", { class: "drop" + (big ? " big" : ""), tabindex: "0", role: "button" }, text, input);
  zone.addEventListener("click", () => input.click());
  zone.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") input.click(); });
  input.addEventListener("change", () => { if (input.files.length) onFiles([...input.files]); input.value = ""; });
  zone.addEventListener("dragover", (e) => { e.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault(); zone.classList.remove("over");
    const files = [...e.dataTransfer.files];
    if (files.length) onFiles(files);
  });
  return zone;
}

function uploadForm(files, extra) {
  const form = new FormData();
  for (const f of files) form.append("files", f, f.name);
  for (const [k, v] of Object.entries(extra || {})) form.append(k, v);
  return form;
}

// ---------------------------------------------------------------- routing
function route() {
  const parts = location.hash.replace(/^#\/?/, "").split("/").map(decodeURIComponent);
  if (parts[0] === "p" && parts[1]) return openProject(parts[1], parts[2] || "classes");
  return showHome();
}
window.addEventListener("hashchange", route);

function go(screen) { location.hash = `#/p/${enc(S.project.name)}/${screen}`; }

function renderSteps() {
  const nav = $("#steps");
  nav.replaceChildren();
  $("#project-title").textContent = S.project ? `${S.project.name} · ${S.project.task === "anomaly" ? "good-only" : "classify"}` : "";
  if (!S.project) return;
  STEPS.forEach(([key, label], i) => {
    const off = key === "generate" && S.project.task === "anomaly";
    nav.append(h("a", { href: `#/p/${enc(S.project.name)}/${key}`, class: (S.screen === key ? "on" : "") + (off ? " off" : ""),
      "data-step": key }, h("span", { class: "n", text: i + 1 }), label));
  });
}

async function boot() {
  S.info = await attempt(() => api("GET", "/api/info"));
  if (!S.info) return;
  if (!location.hash && S.info.start) {
    const list = await attempt(() => api("GET", "/api/projects"));
    if (list && list.projects.some((p) => p.name === S.info.start)) {
      location.hash = `#/p/${enc(S.info.start)}/classes`;
      return;
    }
  }
  route();
}
document.addEventListener("DOMContentLoaded", boot);

// ---------------------------------------------------------------- home
async function showHome() {
  closeEvents();
  S.project = null; S.screen = null; S.job = null;
  renderSteps(); renderJobBar();
  const list = await attempt(() => api("GET", "/api/projects"));
  const main = $("#main");
  const name = h("input", { id: "new-name", placeholder: "e.g. line3-steel", maxlength: "64", required: true,
    value: S.info.start && !(list && list.projects.some((p) => p.name === S.info.start)) ? S.info.start : "" });
  const task = (value, title, text) => h("label", {}, h("input", { type: "radio", name: "task", value,
    checked: value === "classify" }), h("b", { text: title }), h("div", { class: "small muted", text }));
  const form = h("form", { class: "card stack", id: "create" },
    h("h2", { text: "New project" }),
    h("label", { class: "field" }, "Name", name),
    h("div", { class: "choice" },
      task("classify", "Sort defects into classes", "Images of each defect type in its own class; the model tells them apart."),
      task("anomaly", "Learn good parts only", "Only images of good parts are needed; the model flags anything unusual.")),
    h("div", { class: "row" }, h("button", { class: "primary", type: "submit", text: "Create project" })));
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const chosen = form.querySelector("input[name=task]:checked").value;
    const made = await attempt(() => api("POST", "/api/projects", { name: name.value.trim(), task: chosen }));
    if (made) location.hash = `#/p/${enc(made.name)}/classes`;
  });
  const cards = (list ? list.projects : []).map((p) => h("div", { class: "card project-card stack" },
    h("h3", { text: p.name }),
    h("div", { class: "row" },
      h("span", { class: "tag " + (p.task === "anomaly" ? "amber" : "blue"), text: p.task === "anomaly" ? "good-only" : "classify" }),
      h("span", { class: "small muted", text: `${p.classes} classes · ${p.images} images` }),
      p.has_model ? h("span", { class: "tag green", text: "model" }) : null),
    h("div", { class: "row" },
      h("a", { class: "button primary", href: `#/p/${enc(p.name)}/classes`, text: "Open" }),
      h("a", { class: "button", href: `/api/projects/${enc(p.name)}/download`, download: `${p.name}.zip`, text: "Download .zip" }))));
  main.replaceChildren(
    h("div", { class: "screen-head" }, h("div", {}, h("h1", { text: "Projects" }),
      h("p", { class: "muted", text: `Projects live in ${S.info.home}` }))),
    h("div", { class: "grid2" }, form,
      cards.length ? h("div", { class: "projects" }, cards) : h("div", { class: "card empty", text: "No projects yet: create one." })));
}

// ---------------------------------------------------------------- project
async function loadProject(name) {
  const p = await api("GET", `/api/projects/${enc(name)}`);
  S.project = p;
  return p;
}

async function openProject(name, screen) {
  const fresh = !S.project || S.project.name !== name;
  if (fresh) closeEvents();
  const p = await attempt(() => loadProject(name));
  if (!p) { location.hash = "#/"; return; }
  if (screen === "generate" && p.task === "anomaly") screen = "classes";
  S.screen = screen;
  renderSteps();
  if (p.active_job && (!S.job || S.job.id !== p.active_job.id)) watchJob(p.active_job);
  else renderJobBar();
  const screens = { classes: showClasses, generate: showGenerate, train: showTrain, test: showTest, export: showExport };
  (screens[screen] || showClasses)();
}

// ---------------------------------------------------------------- jobs
function closeEvents() { if (S.source) { S.source.close(); S.source = null; } }

function watchJob(job) {
  closeEvents();
  S.job = job;
  document.body.dataset.jobs = "busy";
  renderJobBar(); refreshJobViews();
  if (["done", "failed", "cancelled", "interrupted"].includes(job.state)) { document.body.dataset.jobs = "idle"; return; }
  const src = new EventSource(`${P()}/jobs/${enc(job.id)}/events`);
  S.source = src;
  src.onmessage = (e) => {
    const j = JSON.parse(e.data);
    S.job = j;
    renderJobBar(); refreshJobViews();
    if (["done", "failed", "cancelled", "interrupted"].includes(j.state)) {
      src.close(); S.source = null;
      jobFinished(j);
    }
  };
  src.onerror = () => {
    // the server restarted or the connection dropped: ask again for the job's state
    src.close(); S.source = null;
    setTimeout(async () => {
      if (!S.project) return;
      const j = await attempt(() => api("GET", `${P()}/jobs/${enc(job.id)}`));
      if (j) watchJob(j);
    }, 1500);
  };
}

async function jobFinished(j) {
  const what = { train: "Training", generate: "Generation", evaluate: "Evaluation" }[j.kind] || j.kind;
  if (j.state === "done") toast(`${what} finished`);
  else if (j.state === "failed") toast(`${what} failed: ${j.error}`, "error");
  else toast(`${what} ${j.state}`);
  await attempt(() => loadProject(S.project.name));
  const screens = { classes: showClasses, generate: showGenerate, train: showTrain, test: showTest, export: showExport };
  if (S.screen) screens[S.screen]();
  // the screen shows the finished job: count it (tests and scripts wait on this)
  document.body.dataset.jobs = "idle";
  document.body.dataset.finished = String(Number(document.body.dataset.finished || 0) + 1);
}

function jobLabel(j) {
  const what = { train: "Training", generate: "Generating", evaluate: "Evaluating" }[j.kind] || j.kind;
  const ep = j.epochs ? ` · epoch ${j.epoch} of ${j.epochs}` : "";
  return `${what}${j.params && j.params.class ? " " + j.params.class : ""}: ${j.phase || j.state}${ep}`;
}

function renderJobBar() {
  // built once per job and updated in place: a Cancel button re-created on every epoch
  // event would slip away from the pointer of anyone trying to click it
  const bar = $("#jobbar");
  const j = S.job;
  if (!j || !S.project || !["queued", "running", "cancelling"].includes(j.state)) {
    bar.hidden = true;
    bar.replaceChildren();
    delete bar.dataset.job;
    return;
  }
  bar.hidden = false;
  let status = bar.querySelector("#job-status");
  let fill = bar.querySelector(".bar > span");
  let cancel = bar.querySelector("#cancel-job");
  if (!status || !cancel || bar.dataset.job !== j.id || Boolean(fill) !== Boolean(j.epochs)) {
    status = h("span", { class: "status", id: "job-status" });
    fill = j.epochs ? h("span", { style: "width:0%" }) : null;
    cancel = h("button", { id: "cancel-job",
      onclick: () => attempt(async () => {
        const cur = S.job;
        if (!cur) return;
        const r = await api("POST", `${P()}/jobs/${enc(cur.id)}/cancel`);
        if (S.job && S.job.id === r.id && r.version > S.job.version) { S.job = r; renderJobBar(); }
      }) });
    bar.replaceChildren(status, fill ? h("span", { class: "bar" }, fill) : null, h("span", { class: "spacer" }), cancel);
    bar.dataset.job = j.id;
  }
  status.textContent = jobLabel(j);
  if (fill) fill.style.width = `${j.epochs ? (100 * j.epoch) / j.epochs : 0}%`;
  cancel.disabled = j.state === "cancelling";
  cancel.textContent = j.state === "cancelling" ? "Cancelling…" : "Cancel";
}

function refreshJobViews() {
  if (S.screen === "train" && S.job && S.job.kind === "train") drawTraining(S.job);
}

async function startJob(url, body) {
  const j = await attempt(() => api("POST", url, body));
  if (j) watchJob(j);
  return j;
}

// ---------------------------------------------------------------- classes
function showClasses() {
  const p = S.project;
  const main = $("#main");
  const max = Math.max(1, ...p.classes.map((c) => c.images));
  const addName = h("input", { id: "class-name", placeholder: "new class name", maxlength: "64" });
  const add = h("form", { class: "row" }, addName, h("button", { class: "primary", type: "submit", text: "Add class" }));
  add.addEventListener("submit", async (e) => {
    e.preventDefault();
    const r = await attempt(() => api("POST", `${P()}/classes`, { name: addName.value.trim() }));
    if (r) { await loadProject(p.name); showClasses(); }
  });
  const banners = [];
  if (p.task === "anomaly") banners.push(h("div", { class: "banner info",
    text: "Good-only project: put images of good parts in 'good' (the model learns from them). Optional defect classes are only used to test the model and set its threshold." }));
  if (p.balance.ratio && p.balance.ratio >= 2) banners.push(h("div", { class: "banner warn", id: "imbalance",
    text: `Imbalanced: the largest class has ${p.balance.ratio}× the images of the smallest.` +
      (p.balance.smallest.length ? ` Smallest: ${p.balance.smallest.join(", ")} — add images or generate more.` : "") }));
  const cards = p.classes.map((c) => classCard(c, max));
  main.replaceChildren(
    h("div", { class: "screen-head" },
      h("div", {}, h("h1", { text: "Classes" }), h("p", { class: "muted",
        text: `${p.classes.length} classes · ${p.images} images. Drop images on a class, or click it to choose files.` })),
      add),
    ...banners,
    cards.length ? h("div", { class: "classes" }, cards) : h("div", { class: "card empty", text: "Add a class to start." }));
}

function classCard(c, max) {
  const errors = h("ul", { class: "errors" });
  const thumbs = h("div", { class: "thumbs" });
  const card = h("section", { class: "card class-card" + (c.small ? " small" : ""), "data-class": c.name },
    h("div", { class: "class-head" },
      h("h3", { text: c.name }),
      h("span", { class: "count", text: `${c.images}` }), h("span", { class: "small muted", text: "images" }),
      c.generated ? h("span", { class: "tag amber", text: `+${c.generated} generated` }) : null,
      c.small ? h("span", { class: "tag amber", text: "small" }) : null,
      h("span", { class: "spacer" }),
      h("button", { class: "ghost", title: "Rename", text: "Rename", onclick: () => renameClass(c.name) }),
      h("button", { class: "ghost danger", title: "Delete class", text: "Delete", onclick: () => deleteClass(c.name) })),
    h("div", { class: "meter" }, h("span", { style: `width:${(100 * c.images) / max}%` })),
    dropzone(`Drop images of “${c.name}” here, or click to choose`, (files) => upload(c.name, files, errors)),
    errors, thumbs);
  fillThumbs(thumbs, c.name, "data", 30);
  return card;
}

async function fillThumbs(box, cls, area, limit) {
  const r = await attempt(() => api("GET", `${P()}/classes/${enc(cls)}/images?area=${area}`));
  if (!r) return;
  const shown = r.images.slice(-limit).reverse();
  box.replaceChildren(...shown.map((f) => h("div", { class: "thumb", title: f },
    h("img", { loading: "lazy", alt: f, src: `${P()}/thumbs/${area}/${enc(cls)}/${enc(f)}` }),
    area === "generated" ? h("span", { class: "synth", text: "synthetic" }) : null,
    area === "data" ? h("button", { class: "x", title: `Delete ${f}`, "aria-label": `Delete ${f}`, text: "×",
      onclick: async () => {
        if (await attempt(() => api("DELETE", `${P()}/classes/${enc(cls)}/images/${enc(f)}`))) {
          await loadProject(S.project.name); showClasses();
        }
      } }) : null)));
  if (r.images.length > limit) box.append(h("div", { class: "thumb small muted", style: "display:grid;place-items:center", text: `+${r.images.length - limit}` }));
}

async function upload(cls, files, errors) {
  const limit = S.info.limits;
  const batches = [[]];
  let size = 0;
  for (const f of files) {   // stay under the request limit: several requests if needed
    const last = batches[batches.length - 1];
    if (last.length && (size + f.size > limit.max_request_bytes * 0.9 || last.length >= limit.max_files)) { batches.push([]); size = 0; }
    batches[batches.length - 1].push(f); size += f.size;
  }
  errors.replaceChildren();
  let saved = 0;
  for (const batch of batches) {
    const r = await attempt(() => api("POST", `${P()}/classes/${enc(cls)}/images`, uploadForm(batch)));
    if (!r) continue;
    for (const row of r.results) {
      if (row.error) errors.append(h("li", { text: row.error }));
      else saved += 1;
    }
  }
  toast(`${saved} of ${files.length} images added to ${cls}`, saved < files.length ? "error" : "");
  const kept = [...errors.childNodes];
  await loadProject(S.project.name); showClasses();
  const card = [...document.querySelectorAll(".class-card")].find((el) => el.dataset.class === cls);
  if (card && kept.length) card.querySelector(".errors").append(...kept);
}

async function renameClass(cls) {
  const name = prompt(`New name for class “${cls}”`, cls);
  if (!name || name === cls) return;
  if (await attempt(() => api("PATCH", `${P()}/classes/${enc(cls)}`, { name: name.trim() }))) {
    await loadProject(S.project.name); showClasses();
  }
}

async function deleteClass(cls) {
  if (!confirm(`Delete class “${cls}” and all its images?`)) return;
  if (await attempt(() => api("DELETE", `${P()}/classes/${enc(cls)}`))) {
    await loadProject(S.project.name); showClasses();
  }
}

// ---------------------------------------------------------------- generate
function showGenerate() {
  const p = S.project;
  const preview = h("div", { class: "thumbs", id: "gen-preview" });
  const previewTitle = h("h2", { text: "Preview" });
  const rows = p.classes.map((c) => {
    const method = h("select", { "aria-label": `method for ${c.name}` },
      h("option", { value: "augment", text: "Augment (flips and turns)" }),
      h("option", { value: "vae", text: "Use AI (learned generator)" }));
    const count = h("input", { type: "number", min: "1", max: "1000", value: "20", "aria-label": `count for ${c.name}` });
    return h("tr", { "data-class": c.name },
      h("td", {}, h("b", { text: c.name })),
      h("td", { class: "num", text: c.images }),
      h("td", { class: "num", text: c.generated }),
      h("td", {}, method), h("td", {}, count),
      h("td", {}, h("div", { class: "row" },
        h("button", { class: "primary", text: "Generate", disabled: !c.images,
          onclick: () => startJob(`${P()}/generate`, { class: c.name, method: method.value, count: Number(count.value) }) }),
        h("button", { text: "Preview", onclick: () => { previewTitle.textContent = `Generated “${c.name}” (never scored)`; fillThumbs(preview, c.name, "generated", 60); } }),
        c.generated ? h("button", { class: "danger", text: "Clear",
          onclick: async () => { if (await attempt(() => api("DELETE", `${P()}/classes/${enc(c.name)}/generated`))) { await loadProject(p.name); showGenerate(); } } }) : null)));
  });
  $("#main").replaceChildren(
    h("div", { class: "screen-head" }, h("div", {}, h("h1", { text: "Generate more images" }),
      h("p", { class: "muted", text: "Small classes train better with more examples. Generated images are flagged synthetic: they help training and are never used to score the model." }))),
    h("div", { class: "card" }, h("table", { class: "table" },
      h("thead", {}, h("tr", {}, ["Class", "Real", "Generated", "Method", "How many", ""].map((t) => h("th", { text: t })))),
      h("tbody", {}, rows))),
    h("div", { class: "card stack", style: "margin-top:12px" }, previewTitle, preview));
  const latest = p.latest_jobs.generate;
  const first = (latest && latest.params && latest.params.class) || (p.classes.find((c) => c.generated) || {}).name;
  if (first) { previewTitle.textContent = `Generated “${first}” (never scored)`; fillThumbs(preview, first, "generated", 60); }
}

// ---------------------------------------------------------------- train
function showTrain() {
  const p = S.project;
  const tips = S.info.tips;
  // the last settings used in this project win over the defaults (kept across re-renders)
  const d = { ...S.info.defaults[p.task], ...(S.trainValues[p.name] || {}) };
  const busy = S.job && ["queued", "running", "cancelling"].includes(S.job.state);
  const fields = [];
  const field = (label, input, tip) => h("label", { class: "field" }, h("span", { text: label }), input, h("span", { class: "tip", text: tip }));
  const inputs = {};
  if (p.task === "classify") {
    inputs.epochs = h("input", { type: "number", name: "epochs", min: "1", max: "500", value: d.epochs });
    inputs.batch_size = h("input", { name: "batch_size", value: d.batch_size, size: "6" });
    inputs.lr = h("input", { type: "number", name: "lr", step: "any", min: "0.000001", max: "1", value: d.lr });
    inputs.size = h("input", { type: "number", name: "size", min: "16", max: "1024", value: d.size });
    fields.push(field("Epochs", inputs.epochs, tips.epochs), field("Batch size", inputs.batch_size, tips.batch_size),
      field("Learning rate", inputs.lr, tips.lr), field("Image size", inputs.size, tips.size));
  } else {
    const options = (names, chosen, labels) => names.map((m) => h("option", { value: m, text: labels[m] || m, selected: m === chosen }));
    inputs.method = h("select", { name: "method" }, options(S.info.methods, d.method, { default: "default (recommended)", auto: "auto (tries several on your defects)" }));
    inputs.backbone = h("select", { name: "backbone" }, options(S.info.backbones, d.backbone, { auto: "auto (recommended)" }));
    inputs.weights = h("select", { name: "weights" }, options(S.info.weights, d.weights, { auto: "auto (ImageNet when installed)", imagenet: "ImageNet", none: "random (no pretraining)" }));
    inputs.size = h("input", { type: "number", name: "size", min: "16", max: "1024", value: d.size, placeholder: "auto" });
    fields.push(field("Method", inputs.method, tips.method), field("Backbone", inputs.backbone, tips.backbone),
      field("Weights", inputs.weights, tips.weights), field("Image size", inputs.size, tips.size));
  }
  const form = h("form", { class: "card", id: "train-form" }, h("h2", { text: "Settings" }), ...fields,
    h("div", { class: "row", style: "margin-top:10px" },
      h("button", { class: "primary", type: "submit", id: "start-training", disabled: busy, text: busy ? "A job is running…" : "Start training" })));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const body = {};
    for (const [k, el] of Object.entries(inputs)) body[k] = el.value;
    S.trainValues[p.name] = body;
    startJob(`${P()}/train`, body);
  });
  const model = p.model.exists
    ? h("p", { class: "small muted", text: `Current model: trained ${p.model.trained_at.replace("T", " ").slice(0, 16)} on ${p.model.samples ?? "?"} images${p.model.previous ? "; the one before is kept" : ""}.` })
    : h("p", { class: "small muted", text: "No model yet." });
  $("#main").replaceChildren(
    h("div", { class: "screen-head" }, h("div", {}, h("h1", { text: "Train" }),
      h("p", { class: "muted", text: p.task === "anomaly" ? "The model learns what good parts look like from the 'good' class. From 10 good images on, a fifth is held out to test it, with every defect image." : "Classes of 10 images or more give a fifth of their images to a test split (made once, kept in split.json); the rest trains the model." })), model),
    h("div", { class: "grid2" }, form,
      h("div", { class: "card stack", id: "train-view" },
        h("div", { class: "row" }, h("h2", { text: "Under the hood" }), h("span", { class: "spacer" }), h("span", { id: "train-state", class: "status" })),
        h("div", { class: "charts" },
          h("div", {}, h("div", { class: "small muted", text: "Training loss (lower is better)" }), h("canvas", { class: "chart", id: "chart-loss" })),
          h("div", {}, h("div", { class: "small muted", id: "val-title", text: p.task === "anomaly" ? "Held-out AUROC (higher is better)" : "Validation F1 (higher is better)" }), h("canvas", { class: "chart", id: "chart-val" }))),
        h("div", { class: "metrics", id: "train-metrics" }))));
  const shown = (S.job && S.job.kind === "train") ? S.job : p.latest_jobs.train;
  drawTraining(shown || null);
}

function drawTraining(j) {
  const state = $("#train-state");
  if (!state) return;
  const hist = (j && j.history) || [];
  const p = S.project;
  state.className = "status " + (j ? j.state : "");
  state.textContent = j ? (["done", "failed", "cancelled", "interrupted"].includes(j.state) ? j.state + (j.error ? `: ${j.error}` : "") : jobLabel(j)) : "not trained yet";
  lineChart($("#chart-loss"), hist.map((e) => e.loss), { color: "#1f5fbf", total: j ? j.epochs : 0 });
  const val = hist.map((e) => e.val).filter((v) => v !== undefined);
  const auroc = j && j.result && j.result.metrics ? j.result.metrics.image_auroc : undefined;
  if (p.task === "anomaly") lineChart($("#chart-val"), auroc !== undefined && auroc !== null ? [auroc] : [], { color: "#1b8a4b", min: 0, max: 1, point: true });
  else lineChart($("#chart-val"), val, { color: "#1b8a4b", min: 0, max: 1, total: j ? j.epochs : 0,
    empty: hist.length ? "no validation split (fewer than 20 images)" : "" });
  const m = (j && j.result && j.result.metrics) || {};
  const box = $("#train-metrics");
  const names = { accuracy: "held-out accuracy", macro_f1: "held-out macro F1", image_auroc: "held-out AUROC", miss_rate: "miss rate", false_alarm_rate: "false-alarm rate" };
  box.replaceChildren(...Object.entries(m).filter(([k]) => names[k]).map(([k, v]) =>
    h("div", { class: "metric" }, h("b", { text: k.endsWith("rate") || k === "accuracy" ? pct(v) : fmt(v) }), h("span", { text: names[k] }))));
  if (j && j.result && j.result.held_out !== undefined) box.append(h("div", { class: "metric" }, h("b", { text: j.result.held_out }), h("span", { text: "held-out images" })));
}

function setupCanvas(canvas) {
  const ratio = window.devicePixelRatio || 1;
  const w = canvas.clientWidth, hgt = canvas.clientHeight;
  canvas.width = w * ratio; canvas.height = hgt * ratio;
  const ctx = canvas.getContext("2d");
  ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
  ctx.clearRect(0, 0, w, hgt);
  ctx.font = "12px system-ui, sans-serif";
  return [ctx, w, hgt];
}

function lineChart(canvas, values, opt) {
  if (!canvas) return;
  const [ctx, w, hgt] = setupCanvas(canvas);
  const pad = { l: 44, r: 10, t: 10, b: 24 };
  const n = Math.max(values.length, opt.total || 0, 2);
  let lo = opt.min ?? Math.min(...values), hi = opt.max ?? Math.max(...values);
  if (!values.length) { lo = opt.min ?? 0; hi = opt.max ?? 1; }
  if (hi - lo < 1e-9) { hi = lo + 1; }
  const X = (i) => pad.l + (i / Math.max(n - 1, 1)) * (w - pad.l - pad.r);
  const Y = (v) => pad.t + (1 - (v - lo) / (hi - lo)) * (hgt - pad.t - pad.b);
  ctx.strokeStyle = "#dde3ea"; ctx.fillStyle = "#5d6b7e"; ctx.lineWidth = 1;
  for (let k = 0; k <= 4; k++) {
    const v = lo + ((hi - lo) * k) / 4, y = Y(v);
    ctx.beginPath(); ctx.moveTo(pad.l, y); ctx.lineTo(w - pad.r, y); ctx.stroke();
    ctx.fillText(v.toFixed(hi - lo < 0.1 ? 3 : 2), 4, y + 4);
  }
  ctx.fillText(opt.point ? "after training" : "epoch", w / 2 - 16, hgt - 6);
  if (!values.length) {
    ctx.fillText(opt.empty || "waiting for the first epoch…", pad.l + 10, hgt / 2);
    return;
  }
  ctx.strokeStyle = opt.color; ctx.fillStyle = opt.color; ctx.lineWidth = 2;
  ctx.beginPath();
  values.forEach((v, i) => { const x = opt.point ? (pad.l + w - pad.r) / 2 : X(i); if (i) ctx.lineTo(x, Y(v)); else ctx.moveTo(x, Y(v)); });
  ctx.stroke();
  values.forEach((v, i) => { const x = opt.point ? (pad.l + w - pad.r) / 2 : X(i); ctx.beginPath(); ctx.arc(x, Y(v), 3, 0, 7); ctx.fill(); });
  if (opt.point) ctx.fillText(values[0].toFixed(3), (pad.l + w - pad.r) / 2 + 8, Y(values[0]) - 6);
}

// ---------------------------------------------------------------- test
function showTest() {
  const p = S.project;
  if (!p.model.exists) {
    $("#main").replaceChildren(h("div", { class: "card empty" }, "Train a model first. ", h("a", { href: `#/p/${enc(p.name)}/train`, text: "Go to Train" })));
    return;
  }
  const results = h("div", { class: "results", id: "results" });
  const explain = p.task === "classify" ? h("select", { id: "explain", "aria-label": "Heatmap" },
    h("option", { value: "", text: "no heatmap" }),
    S.info.explain_methods.map((m) => h("option", { value: m, text: m === "gradcam" ? "Grad-CAM heatmap" : m === "sise" ? "SISE heatmap" : m }))) : null;
  const zone = dropzone("Drop test images here, or click to choose", (files) => testImages(files, results, explain), true);
  const parts = [
    h("div", { class: "screen-head" }, h("div", {}, h("h1", { text: "Test" }),
      h("p", { class: "muted", text: p.task === "anomaly" ? "Drop images of parts: each gets a score, a verdict and a map of where it looks unusual." : "Drop images: each gets a bar per class showing how sure the model is." })),
      explain ? h("label", { class: "row" }, "Show ", explain) : null),
    zone, h("div", { style: "height:12px" })];
  if (p.task === "anomaly") parts.push(h("div", { class: "test-split" }, results, thresholdCard()));
  else parts.push(results);
  $("#main").replaceChildren(...parts);
}

async function testImages(files, box, explain) {
  box.replaceChildren(h("div", { class: "card empty", text: `Checking ${files.length} image(s)…` }));
  const urls = {};
  for (const f of files) urls[f.name] = URL.createObjectURL(f);
  const r = await attempt(() => api("POST", `${P()}/predict`, uploadForm(files, explain ? { explain: explain.value } : {})));
  if (!r) { box.replaceChildren(); return; }
  const byName = (name) => urls[name] || Object.entries(urls).find(([k]) => k.replace(/[^\w.-]/g, "_") === name.replace(/[^\w.-]/g, "_"))?.[1];
  box.replaceChildren(...r.results.map((row) => resultCard(row, byName(row.input))));
}

function resultCard(row, url) {
  if (row.error) return h("div", { class: "card result" }, h("div", {}), h("div", {}, h("div", { class: "name", text: row.input }), h("div", { class: "errors", text: row.error })));
  const pic = h("img", { src: row.overlay || url || "", alt: row.input });
  let body;
  if (row.probs) {
    const entries = Object.entries(row.probs).sort((a, b) => b[1] - a[1]);
    body = h("div", { class: "probs" }, entries.map(([c, v], i) => h("div", { class: "prob" + (i === 0 ? " best" : "") },
      h("span", { class: "lab", title: c, text: c }), h("span", { class: "track" }, h("span", { style: `width:${(100 * v).toFixed(1)}%` })),
      h("span", { class: "pct", text: `${(100 * v).toFixed(0)}%` }))));
    body = h("div", {}, h("div", { class: "verdict", text: row.predicted ?? "needs review" }), body);
  } else {
    const bad = row.anomalous;
    const review = !bad && row.review === true;  // in the detector's review band: a person decides
    body = h("div", { class: "stack" },
      h("div", { class: "verdict " + (bad ? "bad" : review ? "review" : "good"), text: bad === null ? "no threshold" : bad ? "DEFECT" : review ? "REVIEW" : "GOOD" }),
      h("div", { class: "prob best" }, h("span", { class: "lab", text: "score" }),
        h("span", { class: "track" }, h("span", { style: `width:${Math.min(100, 100 * (row.normalized ?? 0)).toFixed(1)}%;background:${bad ? "#c0392b" : "#1b8a4b"}` })),
        h("span", { class: "pct", text: fmt(row.score, 3) })),
      h("div", { class: "small muted regions", text: `threshold ${fmt(row.threshold, 3)} · ` + (row.regions && row.regions.length
        ? `${row.regions.length} defect region${row.regions.length > 1 ? "s" : ""} outlined in magenta`
        : "the map shows where it looks unusual") }));
  }
  return h("div", { class: "card result" }, pic, h("div", {}, h("div", { class: "name", text: row.input }), body));
}

function thresholdCard() {
  const card = h("section", { class: "card threshold stack", id: "threshold" }, h("h2", { text: "Threshold" }),
    h("p", { class: "small muted", text: "Loading the held-out scores…" }));
  attempt(async () => {
    const t = await api("GET", `${P()}/threshold`);
    const all = t.good.concat(t.defect);
    const lo = Math.min(...all), hi = Math.max(...all);
    const span = hi - lo || 1;
    const range = { min: lo - 0.05 * span, max: hi + 0.05 * span, step: span / 400 };
    const slider = h("input", { type: "range", id: "threshold-slider", ...range, value: t.threshold ?? hi });
    // the review band: parts scoring between its line and the threshold go to a person
    const hasBand = t.review_threshold !== null && t.review_threshold !== undefined;
    const band = h("input", { type: "checkbox", id: "review-toggle", checked: hasBand });
    const reviewSlider = h("input", { type: "range", id: "review-slider", ...range, value: hasBand ? t.review_threshold : t.threshold ?? hi });
    const reviewRow = h("div", { class: "stack" }, h("span", { class: "small muted", text: "Review band: parts scoring between this line and the threshold are sent to a person." }), reviewSlider);
    // where a flagged part's defect region ends: a share of the held-out good parts' map pixels
    const regions = t.region_rates && t.region_rates.length;
    const regionRates = [...new Set([...(t.region_rates || []), ...(t.region_rate ? [t.region_rate] : [])])].sort((a, b) => a - b);
    const region = h("select", { id: "region-rate" },
      t.region_rate ? null : h("option", { value: "", text: "as the threshold", selected: true }),
      regionRates.map((r) => h("option", { value: r, text: `${+(100 * r).toPrecision(3)} %`, selected: r === t.region_rate })));
    const regionRow = h("label", { class: "row small", title: "Share of good parts' pixels that would be outlined; smaller gives tighter outlines" },
      "Outline defect regions: at most", region, "of good pixels");
    const rates = h("div", { class: "metrics" });
    const canvas = h("canvas", { id: "threshold-chart" });
    const save = h("button", { class: "primary", id: "save-threshold", text: "Save threshold as a new model version", disabled: !t.can_save });
    const share = (xs, keep) => (xs.length ? xs.filter(keep).length / xs.length : null);
    const update = () => {
      const v = Number(slider.value);
      if (Number(reviewSlider.value) > v) reviewSlider.value = v;  // the band sits below the threshold
      const r = band.checked ? Number(reviewSlider.value) : v;
      reviewRow.hidden = !band.checked;
      const inBand = (s) => s > r && s <= v;
      const kids = [
        h("div", { class: "metric" }, h("b", { id: "miss-rate", text: pct(share(t.defect, (s) => s <= r)) }), h("span", { text: `defects passed as good (of ${t.defect.length})` })),
        h("div", { class: "metric" }, h("b", { id: "false-alarm-rate", text: pct(share(t.good, (s) => s > v)) }), h("span", { text: `false alarms (of ${t.good.length} good)` })),
      ];
      if (band.checked) {
        kids.push(
          h("div", { class: "metric" }, h("b", { id: "review-rate", text: pct(share(all, inBand)) }),
            h("span", { text: `sent to review (${t.good.filter(inBand).length} good, ${t.defect.filter(inBand).length} defects)` })),
          h("div", { class: "metric" }, h("b", { text: fmt(r, 4) }), h("span", { text: "review from" })));
      }
      kids.push(h("div", { class: "metric" }, h("b", { text: fmt(v, 4) }), h("span", { text: "threshold" })));
      rates.replaceChildren(...kids);
      histogram(canvas, t.good, t.defect, v, t.threshold, range.min, range.max, band.checked ? r : null);
    };
    for (const el of [slider, reviewSlider, band]) el.addEventListener("input", update);
    save.addEventListener("click", async () => {
      const body = { threshold: Number(slider.value), review_threshold: band.checked ? Number(reviewSlider.value) : null,
        region_rate: region.value === "" || Number(region.value) === t.region_rate ? null : Number(region.value) };
      const r = await attempt(() => api("POST", `${P()}/threshold`, body));
      if (r) {
        toast(`Threshold ${fmt(r.threshold, 4)}${r.review_threshold === null ? "" : `, review from ${fmt(r.review_threshold, 4)},`} saved; the previous model is kept`);
        t.threshold = r.threshold; t.region_rate = r.region_rate; update();
      }
    });
    card.replaceChildren(h("h2", { text: "Threshold" }),
      h("p", { class: "small muted", text: "Scores of the held-out images: good parts in green, defects in red. Move the line: parts scoring above it are flagged." }),
      canvas, slider, h("label", { class: "row small" }, band, "Send the parts just below the threshold to review"), reviewRow, rates,
      regions ? regionRow : null,
      h("div", { class: "row" }, save, t.can_save ? null : h("span", { class: "small muted", text: "This installation cannot set a detector's threshold yet." })));
    requestAnimationFrame(update);
  }).then((ok) => { if (ok === null) card.querySelector("p").textContent = "No held-out scores: add good images (and defect classes) and train."; });
  return card;
}

function histogram(canvas, good, bad, v, saved, lo, hi, review = null) {
  const [ctx, w, hgt] = setupCanvas(canvas);
  const bins = 40, pad = { l: 10, r: 10, t: 8, b: 20 };
  const count = (xs) => { const c = new Array(bins).fill(0); xs.forEach((s) => { c[Math.min(bins - 1, Math.max(0, Math.floor(((s - lo) / (hi - lo)) * bins)))]++; }); return c; };
  const g = count(good), b = count(bad);
  const top = Math.max(1, ...g, ...b);
  const bw = (w - pad.l - pad.r) / bins;
  const X = (s) => pad.l + ((s - lo) / (hi - lo)) * (w - pad.l - pad.r);
  const drawBins = (c, color) => { ctx.fillStyle = color; c.forEach((n, i) => { const hh = (n / top) * (hgt - pad.t - pad.b); ctx.fillRect(pad.l + i * bw + 1, hgt - pad.b - hh, bw - 2, hh); }); };
  drawBins(g, "rgba(27,138,75,.55)"); drawBins(b, "rgba(192,57,43,.55)");
  ctx.fillStyle = "#5d6b7e"; ctx.fillText("anomaly score →", w / 2 - 40, hgt - 5);
  if (saved !== null && saved !== undefined) { ctx.strokeStyle = "#9aa6b5"; ctx.setLineDash([4, 4]); ctx.beginPath(); ctx.moveTo(X(saved), pad.t); ctx.lineTo(X(saved), hgt - pad.b); ctx.stroke(); ctx.setLineDash([]); }
  if (review !== null) { ctx.fillStyle = "rgba(185,119,14,.15)"; ctx.fillRect(X(review), pad.t, X(v) - X(review), hgt - pad.t - pad.b); ctx.strokeStyle = "#b9770e"; ctx.lineWidth = 2; ctx.beginPath(); ctx.moveTo(X(review), pad.t); ctx.lineTo(X(review), hgt - pad.b); ctx.stroke(); }
  ctx.strokeStyle = "#1c2430"; ctx.lineWidth = 2; ctx.beginPath(); ctx.moveTo(X(v), pad.t); ctx.lineTo(X(v), hgt - pad.b); ctx.stroke();
}

// ---------------------------------------------------------------- evaluate & export
function showExport() {
  const p = S.project;
  const job = p.latest_jobs.evaluate;
  const report = p.report ? h("iframe", { class: "report", id: "report", title: "Evaluation report", src: `${P()}/report?t=${Date.now()}` })
    : h("div", { class: "card empty", text: p.model.exists ? "Run the evaluation to see the report." : "Train a model first." });
  const metrics = job && job.result && job.result.metrics ? h("div", { class: "metrics" },
    Object.entries(job.result.metrics).slice(0, 6).map(([k, v]) => h("div", { class: "metric" }, h("b", { text: fmt(v) }), h("span", { text: k.replace(/_/g, " ") })))) : null;
  $("#main").replaceChildren(
    h("div", { class: "screen-head" }, h("div", {}, h("h1", { text: "Evaluate & export" }),
      h("p", { class: "muted", text: "The report is the one 'inspectkit evaluate' writes, on the held-out images the model never trained on." }))),
    h("div", { class: "card row", style: "margin-bottom:12px" },
      h("button", { class: "primary", id: "run-evaluation", disabled: !p.model.exists, text: "Run evaluation",
        onclick: () => startJob(`${P()}/evaluate`, {}) }),
      p.model.exists ? h("a", { class: "button", id: "download-model", href: `${P()}/model/download`, download: `${p.name}-model.zip`, text: "Download model (.zip)" }) : null,
      p.model.exists && S.info.onnx ? h("a", { class: "button", id: "download-onnx", href: `${P()}/model/onnx`, download: `${p.name}-onnx.zip`, text: "Download ONNX (.zip)" }) : null,
      h("span", { class: "spacer" }),
      h("a", { class: "button", id: "download-project", href: `${P()}/download`, download: `${p.name}.zip`, text: "Download project (.zip)" })),
    metrics, metrics ? h("div", { style: "height:12px" }) : null, report);
}
