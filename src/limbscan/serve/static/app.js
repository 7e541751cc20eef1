// limbscan worklist page: uploads images to /v1/predict (two at a time), lists the answers most
// suspicious first, shows a row's overlay on click. No framework, nothing fetched from elsewhere.
// File names stay in this page: each upload is sent under the neutral name "upload".
// When the server shows a DICOM node (/v1/node answers), the images it receives join the
// worklist as they are scored: the page asks every NODE_POLL_MS.
"use strict";

(() => {
  const CONCURRENCY = 2;
  const NODE_POLL_MS = 2000;
  const TOKEN_KEY = "limbscan.token";
  const STATE_ORDER = { done: 0, analysing: 1, queued: 2, error: 3 };
  // The levels of limbscan.operating_points, as the worklist's badges say them.
  const LEVEL_TEXT = { likely: "likely abnormal", suspected: "suspected", normal: "normal",
    out_of_scope: "not analysed" };
  // Who drew an image's boxes (bundle.json "localiser" where its scenario draws none).
  const BOXES_FROM = { detector: "detector", cascade: "cascade", gradcam: "Grad-CAM of the whole-image model" };

  const $ = (id) => document.getElementById(id);
  const items = [];
  const queue = [];
  let running = 0;
  let nextKey = 1;
  let paused = false; // waiting for a token: queued uploads hold until one is given
  let selectedKey = null;
  let overlayUrl = null;
  const nodeSeen = new Set(); // SOP Instance UIDs already in the worklist

  // -- server calls ---------------------------------------------------------------------
  function authHeaders() {
    const token = sessionStorage.getItem(TOKEN_KEY);
    return token ? { Authorization: `Bearer ${token}` } : {};
  }

  async function call(path, options = {}) {
    const response = await fetch(path, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
    if (response.status === 401) {
      askForToken(sessionStorage.getItem(TOKEN_KEY) ? "The token was not accepted." : "This server needs a token.");
    }
    return response;
  }

  async function errorText(response) {
    try {
      const body = await response.json();
      if (typeof body.detail === "string") return body.detail;
      return JSON.stringify(body.detail ?? body);
    } catch {
      return `${response.status} ${response.statusText}`.trim();
    }
  }

  async function loadModel() {
    try {
      const response = await call("/v1/model");
      if (!response.ok) {
        $("model-info").textContent = response.status === 401 ? "token needed" : await errorText(response);
        return;
      }
      const manifest = await response.json();
      const scenario = manifest.default_scenario;
      const threshold = manifest.thresholds?.[scenario];
      const suspected = manifest.operating_points?.[scenario]?.suspected?.threshold;
      const parts = [`model: ${scenario}`];
      if (typeof threshold === "number") parts.push(`likely ≥ ${threshold.toFixed(2)}`);
      if (typeof suspected === "number") parts.push(`suspected ≥ ${suspected.toFixed(2)}`);
      if (manifest.threshold_rule) parts.push(manifest.threshold_rule);
      if (manifest.limbscan_version) parts.push(`limbscan ${manifest.limbscan_version}`);
      $("model-info").textContent = parts.join(" · ");
      // Why this scenario is the default (bundles exported before the fused scenario say nothing).
      if (manifest.default_reason) {
        $("model-reason").textContent = `default ${manifest.default_reason}`;
        $("model-reason").hidden = false;
      }
    } catch {
      $("model-info").textContent = "server unreachable";
    }
  }

  // -- token ----------------------------------------------------------------------------
  function askForToken(message) {
    paused = true;
    $("token-form").hidden = false;
    $("token-message").textContent = message;
    $("token").focus();
  }

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const token = $("token").value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    $("token").value = "";
    $("token-form").hidden = true;
    paused = false;
    loadModel();
    pump();
  });

  // -- uploads --------------------------------------------------------------------------
  function addFiles(fileList) {
    for (const file of fileList) {
      const item = { key: nextKey++, name: file.name || "unnamed", file, state: "queued", result: null, error: null };
      items.push(item);
      queue.push(item);
    }
    render();
    pump();
  }

  function pump() {
    while (!paused && running < CONCURRENCY && queue.length) {
      upload(queue.shift());
    }
  }

  async function upload(item) {
    running += 1;
    item.state = "analysing";
    render();
    const form = new FormData();
    form.append("file", item.file, "upload");
    try {
      const response = await call("/v1/predict", { method: "POST", body: form });
      if (response.ok) {
        item.result = await response.json();
        item.state = "done";
        item.file = null; // the page keeps no copy of the image once the server has answered
      } else if (response.status === 401) {
        item.state = "queued";
        queue.unshift(item);
      } else {
        item.state = "error";
        item.error = await errorText(response);
      }
    } catch {
      item.state = "error";
      item.error = "no answer from the server (network error or server stopped)";
    } finally {
      running -= 1;
      render();
      pump();
    }
  }

  // -- worklist -------------------------------------------------------------------------
  const scored = (item) => item.state === "done" && item.result.probability !== null;
  // Most likely abnormal first; images the input gate kept out of scope after every scored one.
  const byProbability = (a, b) => (scored(b) - scored(a))
    || (scored(a) ? b.result.probability - a.result.probability : a.key - b.key);

  function sorted() {
    return [...items].sort((a, b) => {
      const byState = STATE_ORDER[a.state] - STATE_ORDER[b.state];
      if (byState) return byState;
      if (a.state === "done") return byProbability(a, b);
      return a.key - b.key;
    });
  }

  // A radiologist reads studies: answered images grouped by their study (DICOM StudyInstanceUID),
  // a study ranked by its most likely abnormal image; images without a study stand alone.
  function studies() {
    const groups = new Map();
    for (const item of sorted()) {
      const study = item.state === "done" ? (item.result.study || item.result.study_instance_uid) : null;
      const key = study ? `study:${study}` : `item:${item.key}`;
      if (!groups.has(key)) groups.set(key, { study, members: [] });
      groups.get(key).members.push(item);
    }
    return [...groups.values()]; // insertion follows sorted(): each group's first member is its best
  }

  function cell(row, text, className) {
    const td = document.createElement("td");
    if (className) td.className = className;
    if (text !== undefined) td.textContent = text;
    row.appendChild(td);
    return td;
  }

  function badge(text, kind) {
    const span = document.createElement("span");
    span.className = `badge ${kind}`;
    span.textContent = text;
    return span;
  }

  function studyRow(group, rank) {
    const top = group.members[0];
    const row = document.createElement("tr");
    row.className = "study";
    row.dataset.study = group.study;
    cell(row, scored(top) ? String(rank) : "", "num");
    const shown = `Study …${group.study.slice(-12)} · ${group.members.length} images`;
    cell(row, shown, "name").title = group.study;
    cell(row, undefined, "finding").appendChild(badge(LEVEL_TEXT[top.result.level], top.result.level));
    const probability = cell(row, undefined, "prob");
    if (scored(top)) probability.appendChild(probabilityBar(top.result));
    cell(row, "", "part");
    return row;
  }

  function render() {
    const body = $("worklist").querySelector("tbody");
    body.replaceChildren();
    let rank = 0;
    for (const group of studies()) {
      const inStudy = group.members.length > 1;
      if (inStudy) {
        if (scored(group.members[0])) rank += 1;
        body.appendChild(studyRow(group, rank));
      }
      for (const item of group.members) {
        body.appendChild(itemRow(item, inStudy ? null : scored(item) ? ++rank : null, inStudy));
      }
    }
    summarise();
  }

  function itemRow(item, rank, inStudy) {
    const row = document.createElement("tr");
    row.dataset.key = item.key;
    row.dataset.state = item.state;
    if (inStudy) row.classList.add("in-study");
    const done = item.state === "done";
    if (done) {
      row.dataset.probability = item.result.probability;
      row.dataset.label = item.result.label;
      row.dataset.level = item.result.level;
      row.tabIndex = 0;
      row.classList.add("selectable");
      if (item.key === selectedKey) row.classList.add("selected");
      row.setAttribute("aria-selected", item.key === selectedKey ? "true" : "false");
      row.addEventListener("click", () => select(item));
      row.addEventListener("keydown", (event) => {
        if (event.key === "Enter" || event.key === " ") {
          event.preventDefault();
          select(item);
        }
      });
    }
    cell(row, rank ? String(rank) : "", "num");
    cell(row, item.name, "name").title = item.name;
    const finding = cell(row, undefined, "finding");
    const probability = cell(row, undefined, "prob");
    if (scored(item)) {
      finding.appendChild(badge(LEVEL_TEXT[item.result.level], item.result.level));
      probability.appendChild(probabilityBar(item.result));
    } else if (done) { // out of scope: what limbscan was not made for, and why
      finding.appendChild(badge(LEVEL_TEXT.out_of_scope, "out_of_scope"));
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = item.result.scope?.reason ?? "";
      finding.appendChild(reason);
      probability.textContent = "—";
    } else if (item.state === "error") {
      finding.appendChild(badge("not read", "error"));
      const reason = document.createElement("span");
      reason.className = "reason";
      reason.textContent = item.error;
      finding.appendChild(reason);
    } else {
      finding.appendChild(badge(item.state === "analysing" ? "analysing…" : "queued", "pending"));
    }
    cell(row, done ? (item.result.body_part ?? "—") : "", "part");
    return row;
  }

  function probabilityBar(result) {
    const { probability, threshold, level } = result;
    const wrap = document.createElement("span");
    wrap.className = "pbar";
    const value = document.createElement("span");
    value.className = "pvalue";
    value.textContent = probability.toFixed(3);
    const track = document.createElement("span");
    track.className = "ptrack";
    track.setAttribute("aria-hidden", "true");
    const fill = document.createElement("span");
    fill.className = `pfill ${level}`;
    fill.style.width = `${Math.round(probability * 100)}%`;
    track.append(fill, thresholdMark(threshold, "pmark"));
    if (typeof result.suspected_threshold === "number") {
      track.append(thresholdMark(result.suspected_threshold, "pmark suspected"));
    }
    wrap.append(value, track);
    return wrap;
  }

  function thresholdMark(threshold, className) {
    const mark = document.createElement("span");
    mark.className = className;
    mark.style.left = `${Math.round(threshold * 100)}%`;
    return mark;
  }

  function summarise() {
    if (!items.length) {
      $("summary").textContent = "No images yet.";
      return;
    }
    const count = (state) => items.filter((item) => item.state === state).length;
    const level = (name) => items.filter((item) => item.state === "done" && item.result.level === name).length;
    const parts = [`${items.length} image${items.length === 1 ? "" : "s"}`, `${level("likely")} likely abnormal`,
      `${level("suspected")} suspected`];
    if (level("out_of_scope")) parts.push(`${level("out_of_scope")} not analysed`);
    const pending = count("queued") + count("analysing");
    if (pending) parts.push(`${pending} in progress`);
    if (count("error")) parts.push(`${count("error")} not read`);
    $("summary").textContent = parts.join(" · ");
  }

  // -- viewer ---------------------------------------------------------------------------
  async function select(item) {
    selectedKey = item.key;
    render();
    const result = item.result;
    $("viewer-title").textContent = item.name;
    showDetails(result);
    if (result.probability === null) { // not analysed: no overlay was drawn
      $("overlay").hidden = true;
      $("viewer-caption").textContent = `Not analysed: ${result.scope?.reason ?? "out of scope"}.`;
      return;
    }
    $("viewer-caption").textContent = "Loading overlay…";
    try {
      const response = await call(result.overlay_url);
      if (!response.ok) throw new Error(await errorText(response));
      const blob = await response.blob();
      if (selectedKey !== item.key) return; // another row was chosen meanwhile
      if (overlayUrl) URL.revokeObjectURL(overlayUrl);
      overlayUrl = URL.createObjectURL(blob);
      const img = $("overlay");
      img.alt = `${item.name}: ${LEVEL_TEXT[result.level]}, probability ${result.probability.toFixed(3)}`;
      img.src = overlayUrl;
      img.hidden = false;
      $("viewer-caption").textContent = result.detections.length
        ? `Red: lesion proposals from the ${BOXES_FROM[result.boxes_from] ?? "model"} (thickest: the strongest); `
          + "solid where likely abnormal, dashed where suspected, dotted below both thresholds."
        : "No lesion proposed.";
    } catch (err) {
      if (selectedKey !== item.key) return;
      $("overlay").hidden = true;
      $("viewer-caption").textContent = `Overlay unavailable: ${err.message}`;
    }
  }

  function showDetails(result) {
    const rows = [["Finding", LEVEL_TEXT[result.level]]];
    if (result.probability === null) {
      rows.push(["Why", result.scope?.reason ?? "out of scope"]);
    } else {
      rows.push(["P(abnormal)", result.probability.toFixed(3)]);
      rows.push(["Likely from", `${result.threshold.toFixed(3)} (${result.scenario}, balanced)`]);
    }
    if (result.probability !== null && typeof result.suspected_threshold === "number") {
      rows.push(["Suspected from", `${result.suspected_threshold.toFixed(3)} (high sensitivity)`]);
    }
    for (const [scenario, score] of Object.entries(result.scores || {})) {
      if (scenario !== result.scenario) rows.push([`Score, ${scenario}`, score.toFixed(3)]);
    }
    rows.push(["Body part", result.body_part ?? "unknown"]);
    if (result.study_instance_uid) rows.push(["Study Instance UID", result.study_instance_uid]);
    if (result.sop_instance_uid) rows.push(["SOP Instance UID", result.sop_instance_uid]);
    rows.push(["Lesion proposals", result.detections.length && result.boxes_from
      ? `${result.detections.length}, from the ${BOXES_FROM[result.boxes_from] ?? result.boxes_from}`
      : String(result.detections.length)]);
    rows.push(["Image size", `${result.width} × ${result.height} px`]);
    for (const warning of result.warnings || []) rows.push(["Note", warning]);
    const list = $("details");
    list.replaceChildren();
    for (const [term, value] of rows) {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      list.append(dt, dd);
    }
  }

  // -- DICOM node -----------------------------------------------------------------------
  async function pollNode() {
    let response;
    try {
      response = await call("/v1/node");
    } catch {
      $("node-status").textContent = "DICOM node: no answer from the server";
      setTimeout(pollNode, NODE_POLL_MS);
      return;
    }
    if (response.status === 404) return; // this server shows no node: stop asking
    if (response.ok) {
      const status = await response.json();
      showNode(status.node);
      let added = false;
      for (const row of [...status.rows].reverse()) { // oldest first, so keys follow arrival
        if (nodeSeen.has(row.sop_instance_uid)) continue;
        nodeSeen.add(row.sop_instance_uid);
        added = true;
        items.push(nodeItem(row));
      }
      if (added) render();
    }
    setTimeout(pollNode, NODE_POLL_MS);
  }

  function nodeItem(row) {
    const uid = row.sop_instance_uid;
    const name = `DICOM …${uid.slice(-16)}`;
    if (row.error) return { key: nextKey++, name, uid, state: "error", result: null, error: row.error };
    const result = { ...row, detections: row.detections || [], overlay_url: `/v1/node/overlays/${uid}.png` };
    return { key: nextKey++, name, uid, state: "done", result, error: null };
  }

  function showNode(node) {
    const parts = [`DICOM node ${node.ae_title} on port ${node.port}`, node.running ? "listening" : "stopped",
      `${node.scored} scored`, `${node.queued} queued`];
    if (node.failed) parts.push(`${node.failed} failed`);
    for (const dest of node.destinations || []) {
      let text = `${dest.destination}: ${dest.pending} to send`;
      if (dest.last_error) text += ` (${dest.last_error})`;
      parts.push(text);
    }
    $("node-status").textContent = parts.join(" · ");
    $("node-status").hidden = false;
  }

  // -- drop zone ------------------------------------------------------------------------
  const drop = $("drop");
  const picker = $("picker");
  drop.addEventListener("click", () => picker.click());
  drop.addEventListener("keydown", (event) => {
    if (event.key === "Enter" || event.key === " ") {
      event.preventDefault();
      picker.click();
    }
  });
  picker.addEventListener("change", () => {
    addFiles(picker.files);
    picker.value = ""; // the same file chosen again is a new upload
  });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (event) => {
      event.preventDefault();
      drop.classList.add("over");
    });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, () => drop.classList.remove("over"));
  }
  drop.addEventListener("drop", (event) => {
    event.preventDefault();
    addFiles(event.dataTransfer.files);
  });
  // A file dropped beside the zone would make the browser open it and leave the worklist.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  loadModel();
  pollNode();
})();
