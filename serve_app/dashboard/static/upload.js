// Retroiva dashboard: drop (or choose) a local file, upload it resumably, then submit
// the job form with its upload_id. tus 1.0 against the dashboard's session-authenticated
// front of /v2/uploads: POST creates, PATCH appends from Upload-Offset, HEAD tells
// where to resume after a dropped connection. Plain ES2017, no build step.
"use strict";

(function () {
  const zone = document.getElementById("dropzone");
  const form = document.getElementById("submit-form");
  if (!zone || !form) return;
  const base = zone.dataset.uploads;
  const csrf = zone.dataset.csrf;
  const bar = document.getElementById("upload-progress");
  const label = document.getElementById("upload-status");
  const picker = document.getElementById("file");
  // Each PATCH counts against the key's rate limit like an API call: few, large chunks.
  const CHUNK = 32 * 1024 * 1024;
  const MAX_RETRIES = 8;
  let busy = false;

  const headers = (extra) => Object.assign(
    {"Tus-Resumable": "1.0.0", "X-CSRF-Token": csrf}, extra || {});
  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  const utf8Base64 = (text) => btoa(String.fromCharCode(...new TextEncoder().encode(text)));

  async function errorOf(response) {
    try { return (await response.json()).error.message; }
    catch (err) { return "HTTP " + response.status; }
  }

  function show(text, sent, total) {
    label.textContent = text;
    if (total) { bar.hidden = false; bar.value = sent / total; }
  }

  async function create(file) {
    const response = await fetch(base, {method: "POST", credentials: "same-origin",
      headers: headers({"Upload-Length": String(file.size),
                        "Upload-Metadata": "filename " + utf8Base64(file.name)})});
    if (response.status !== 201) throw new Error(await errorOf(response));
    return (await response.json()).id;
  }

  async function offsetOf(id) {
    const response = await fetch(base + "/" + encodeURIComponent(id), {
      method: "HEAD", credentials: "same-origin", cache: "no-store", headers: headers()});
    if (!response.ok) throw new Error("the upload can't be resumed (HTTP " + response.status + ")");
    return Number(response.headers.get("Upload-Offset"));
  }

  // One PATCH of file[offset, offset + CHUNK). XMLHttpRequest rather than fetch: only
  // it reports upload progress, which the bar shows byte by byte.
  function patch(id, file, offset) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("PATCH", base + "/" + encodeURIComponent(id));
      const sent = headers({"Upload-Offset": String(offset),
                            "Content-Type": "application/offset+octet-stream"});
      for (const name in sent) xhr.setRequestHeader(name, sent[name]);
      xhr.upload.onprogress = (event) => show("Uploading " + file.name + "…",
                                               offset + event.loaded, file.size);
      xhr.onload = () => {
        if (xhr.status === 204) { resolve(Number(xhr.getResponseHeader("Upload-Offset"))); return; }
        const error = new Error("HTTP " + xhr.status);
        error.status = xhr.status;
        error.retryAfter = Number(xhr.getResponseHeader("Retry-After")) || 0;
        try { error.message = JSON.parse(xhr.responseText).error.message; } catch (err) { /* plain */ }
        reject(error);
      };
      xhr.onerror = () => reject(new Error("the connection dropped"));
      xhr.send(file.slice(offset, Math.min(file.size, offset + CHUNK)));
    });
  }

  async function upload(file) {
    const id = await create(file);
    let offset = 0;
    let failures = 0;
    while (offset < file.size) {
      try {
        offset = await patch(id, file, offset);
        failures = 0;
      } catch (error) {
        // 4xx other than a conflict or the rate limit won't get better by retrying.
        const permanent = error.status >= 400 && error.status < 500
          && error.status !== 409 && error.status !== 429;
        if (permanent || ++failures > MAX_RETRIES) throw error;
        show("Interrupted (" + error.message + "); resuming…", offset, file.size);
        await sleep(error.retryAfter ? error.retryAfter * 1000 : 500 * 2 ** failures);
        offset = await offsetOf(id);  // what the server really has
      }
    }
    return id;
  }

  async function start(file) {
    if (busy || !file) return;
    busy = true;
    zone.classList.remove("over");
    try {
      show("Uploading " + file.name + "…", 0, file.size);
      const id = await upload(file);
      show("Uploaded " + file.name + "; submitting the job…", file.size, file.size);
      document.getElementById("upload_id").value = id;
      const url = document.getElementById("video_url");
      url.required = false;
      url.value = "";
      // The prototype's submit: the form's own "submit" button shadows form.submit.
      HTMLFormElement.prototype.submit.call(form);
    } catch (error) {
      show("Upload failed: " + error.message);
      busy = false;
    }
  }

  zone.addEventListener("dragover", (event) => { event.preventDefault(); zone.classList.add("over"); });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    start(event.dataTransfer.files[0]);
  });
  picker.addEventListener("change", () => start(picker.files[0]));
})();
