// The jobs page: the caller's recent jobs (GET /v1/batch) with live status, and the
// result of a finished one (GET /v1/batch/{id}). Plain JS, no dependencies.
"use strict";

const KEY = "nimbus.apiKey";
const POLL_MS = 1000;
const LIMIT = 20;
const $ = (sel) => document.querySelector(sel);
let selected = null;
let timer = null;

function headers() {
  const key = localStorage.getItem(KEY);
  return key ? { "X-API-Key": key, Accept: "application/json" } : { Accept: "application/json" };
}

async function api(path) {
  const response = await fetch(path, { headers: headers(), cache: "no-store" });
  let body = null;
  try { body = await response.json(); } catch (_) { /* not JSON */ }
  return { status: response.status, body };
}

function errorText(answer) {
  const e = answer.body && answer.body.error;
  return e ? `${e.message} (${e.code}, HTTP ${answer.status})` : `HTTP ${answer.status}`;
}

function when(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  return isNaN(d) ? iso : d.toLocaleString();
}

function cell(row, text, className) {
  const td = document.createElement("td");
  if (className) td.className = className;
  td.textContent = text;
  row.appendChild(td);
  return td;
}

function progressCell(row, job) {
  const td = cell(row, "");
  const p = job.progress || {};
  const total = p.total, done = p.done || 0;
  const bar = document.createElement("span");
  bar.className = "bar" + (job.status === "SUCCESS" ? " done" : "");
  const fill = document.createElement("span");
  const pct = total ? Math.min(100, Math.round((100 * done) / total)) : (job.status === "SUCCESS" ? 100 : 0);
  fill.style.width = pct + "%";
  bar.appendChild(fill);
  td.appendChild(bar);
  const label = document.createElement("span");
  label.className = "progress-text muted";
  label.textContent = ` ${done}/${total == null ? "?" : total}`;
  td.appendChild(label);
}

function render(jobs) {
  const body = $("#jobs tbody");
  body.textContent = "";
  for (const job of jobs) {
    const row = document.createElement("tr");
    row.className = "job" + (job.job_id === selected ? " selected" : "");
    row.dataset.jobId = job.job_id;
    row.dataset.status = job.status;
    cell(row, job.job_id, "mono job-id");
    const st = cell(row, "");
    const badge = document.createElement("span");
    badge.className = "status " + job.status;
    badge.textContent = job.status;
    st.appendChild(badge);
    progressCell(row, job);
    cell(row, job.model ? `${job.model.name} v${job.model.version}` : "", "model");
    cell(row, when(job.created_at));
    cell(row, when(job.finished_at));
    row.addEventListener("click", () => showResult(job.job_id));
    body.appendChild(row);
  }
  $("#jobs").hidden = jobs.length === 0;
  $("#message").textContent = jobs.length
    ? `${jobs.length} most recent job${jobs.length === 1 ? "" : "s"}; click one for its result.`
    : "No jobs yet: submit one with POST /v1/batch or `nimbus batch submit FILE`.";
}

async function refresh() {
  const answer = await api(`/v1/batch?limit=${LIMIT}`).catch((e) => ({ status: 0, body: null, e }));
  if (answer.status === 401) {
    $("#key-form").hidden = false;
    $("#forget-key").hidden = !localStorage.getItem(KEY);
    $("#key-error").textContent = localStorage.getItem(KEY) ? "That key was refused." : "";
    $("#message").textContent = "Enter an API key to see your jobs.";
    $("#jobs").hidden = true;
    return;
  }
  $("#key-form").hidden = true;
  $("#forget-key").hidden = !localStorage.getItem(KEY);
  if (answer.status !== 200 || !answer.body || !Array.isArray(answer.body.jobs)) {
    $("#message").textContent = answer.status === 0
      ? "The gateway does not answer; is the stack up (make run)?"
      : "Could not list jobs: " + errorText(answer);
    $("#message").className = "error";
    return;
  }
  $("#message").className = "muted";
  render(answer.body.jobs);
  $("#live").textContent = "live · updated " + new Date().toLocaleTimeString();
  if (selected) {
    const job = answer.body.jobs.find((j) => j.job_id === selected);
    const shown = $("#result").dataset.status;
    if (job && job.status !== shown) showResult(selected);
  }
}

async function showResult(jobId) {
  selected = jobId;
  for (const row of document.querySelectorAll("tr.job")) {
    row.classList.toggle("selected", row.dataset.jobId === jobId);
  }
  const answer = await api(`/v1/batch/${encodeURIComponent(jobId)}`);
  const panel = $("#result");
  panel.hidden = false;
  $("#result-title").textContent = `Job ${jobId}`;
  const rows = $("#result-table tbody");
  rows.textContent = "";
  if (answer.status !== 200) {
    panel.dataset.status = "";
    $("#result-meta").textContent = errorText(answer);
    $("#result-table").hidden = true;
    return;
  }
  const job = answer.body;
  panel.dataset.status = job.status;
  const parts = [job.status];
  if (job.model) parts.push(`model ${job.model.name} v${job.model.version}`);
  if (job.error) parts.push(`error: ${job.error.message}`);
  if (job.result_uri) parts.push(`result in ${job.result_uri}`);
  if (job.page) parts.push(`showing ${job.result.length} of ${job.page.total} (first page)`);
  $("#result-meta").textContent = parts.join(" · ");
  const result = Array.isArray(job.result) ? job.result : [];
  $("#result-table").hidden = result.length === 0;
  const offset = job.page ? job.page.offset : 0;
  result.forEach((item, i) => {
    const row = document.createElement("tr");
    row.className = "result-row";
    cell(row, String(offset + i));
    cell(row, item.prediction == null ? "" : JSON.stringify(item.prediction), "prediction");
    cell(row, item.error || "", "error");
    rows.appendChild(row);
  });
  if (job.status !== "SUCCESS" && job.status !== "FAILURE" && job.status !== "REVOKED") {
    $("#result-meta").textContent += " · the result appears when the job finishes";
  }
}

function poll() {
  clearTimeout(timer);
  refresh().finally(() => { timer = setTimeout(poll, POLL_MS); });
}

document.addEventListener("DOMContentLoaded", () => {
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const key = $("#key-input").value.trim();
    if (key) localStorage.setItem(KEY, key);
    $("#key-input").value = "";
    poll();
  });
  $("#forget-key").addEventListener("click", () => {
    localStorage.removeItem(KEY);
    selected = null;
    $("#result").hidden = true;
    poll();
  });
  poll();
});
