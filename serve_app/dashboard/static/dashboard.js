// Retroiva dashboard: live job status by polling the dashboard's JSON, and confirmations.
// Plain ES2017, no build step, no third-party code.
"use strict";

function fmtDuration(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  seconds = Math.floor(seconds);
  if (seconds < 60) return seconds + " s";
  if (seconds < 3600) return Math.floor(seconds / 60) + " min " + (seconds % 60) + " s";
  return Math.floor(seconds / 3600) + " h " + Math.floor((seconds % 3600) / 60) + " min";
}

function setField(scope, name, text) {
  const el = scope.querySelector('[data-field="' + name + '"]');
  if (el && el.textContent !== text) el.textContent = text;
}

function showJob(scope, job) {
  const status = scope.querySelector('[data-field="status"]');
  if (status) {
    status.textContent = job.status;
    status.className = "status s-" + job.status;
  }
  const bar = scope.querySelector('[data-field="progress-bar"]');
  if (bar) bar.value = job.progress;
  setField(scope, "progress", (Math.round(job.progress * 1000) / 10) + " %");
  setField(scope, "phase", job.phase || "—");
  setField(scope, "eta", fmtDuration(job.eta_seconds));
}

const TERMINAL = ["completed", "failed", "canceled"];
const POLL_MS = 2000;

async function poll(url) {
  const response = await fetch(url, {credentials: "same-origin", cache: "no-store"});
  if (response.status === 401) { window.location.reload(); return null; }
  if (!response.ok) return null;
  return response.json();
}

function pollJobList(table) {
  const tick = async () => {
    let pending = false;
    try {
      const body = await poll(table.dataset.poll);
      for (const job of (body && body.data) || []) {
        const row = table.querySelector('tr[data-job="' + job.id + '"]');
        if (row) showJob(row, job);
        if (!TERMINAL.includes(job.status)) pending = true;
      }
    } catch (err) { pending = true; }
    if (pending) setTimeout(tick, POLL_MS);
  };
  setTimeout(tick, POLL_MS);
}

function pollJob(card) {
  const tick = async () => {
    try {
      const job = await poll(card.dataset.poll);
      if (job) {
        showJob(card, job);
        // A job that ended gets the full page: download button, error, deliveries.
        if (TERMINAL.includes(job.status)) { window.location.reload(); return; }
      }
    } catch (err) { /* network blip: try again */ }
    setTimeout(tick, POLL_MS);
  };
  if (!TERMINAL.includes(card.dataset.status)) setTimeout(tick, POLL_MS);
}

document.addEventListener("DOMContentLoaded", () => {
  const table = document.getElementById("jobs");
  if (table) pollJobList(table);
  const card = document.getElementById("job");
  if (card) pollJob(card);
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
});
