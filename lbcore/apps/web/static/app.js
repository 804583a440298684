// Landmark Breaker page: pick files, send them with the chosen settings, poll the job, show results.
// Presentation only: every number shown comes from the server's report.
"use strict";

(function () {
  const body = document.body;
  const session = body.dataset.session;
  const maxBytes = Number(body.dataset.maxBytes);
  const maxFiles = Number(body.dataset.maxFiles);
  const maxMb = body.dataset.maxMb;

  const $ = (id) => document.getElementById(id);
  const form = $("protect-form"), input = $("files"), drop = $("drop"), chosen = $("chosen");
  const protectBtn = $("protect"), clearBtn = $("clear"), message = $("message");
  const progressBox = $("progress-box"), progress = $("progress"), progressText = $("progress-text");
  const results = $("results"), resultList = $("result-list"), zip = $("zip"), notes = $("notes");
  let files = [];
  let rejected = {};  // file name -> the server's reason it cannot be protected
  let busy = false;
  let running = null;  // the job being polled (cancelled when the page closes)

  // Every job URL needs this page's session: previews and downloads are fetched with it.
  function authed(url, opts) {
    return fetch(url, Object.assign({ cache: "no-store" }, opts || {},
      { headers: Object.assign({ "X-LB-Session": session }, (opts || {}).headers || {}) }));
  }

  async function blobUrl(url) {
    const resp = await authed(url);
    if (!resp.ok) throw new Error(`error ${resp.status}`);
    return URL.createObjectURL(await resp.blob());
  }

  function showImage(img, url) {
    blobUrl(url).then((u) => { img.src = u; }).catch(() => { img.alt = "(preview not available)"; });
  }

  function downloadLink(a, url, name) {
    a.href = "#";
    a.dataset.url = url;
    a.dataset.name = name;
    a.setAttribute("download", name);
    if (a.dataset.bound) return;
    a.dataset.bound = "1";
    a.addEventListener("click", async (e) => {
      e.preventDefault();
      try {
        const tmp = document.createElement("a");
        tmp.href = await blobUrl(a.dataset.url);
        tmp.download = a.dataset.name;
        document.body.append(tmp);
        tmp.click();
        tmp.remove();
      } catch (err) {
        say("The download failed: reload the page and protect the file again.");
      }
    });
  }

  function fmtSize(n) {
    return n >= 1e6 ? (n / 1e6).toFixed(1) + " MB" : Math.max(1, Math.round(n / 1e3)) + " kB";
  }

  function say(text, kind) {
    message.textContent = text || "";
    message.hidden = !text;
    message.className = "message" + (kind === "info" ? " info" : "");
  }

  function checkFiles() {
    const total = files.reduce((s, f) => s + f.size, 0);
    if (files.length > maxFiles) {
      return `Too many files (${files.length}): at most ${maxFiles} per Protect.`;
    }
    if (total > maxBytes) {
      return `The upload is too large (${fmtSize(total)}): at most ${maxMb} MB per Protect. Choose fewer or smaller files.`;
    }
    return "";
  }

  function setFiles(list) {
    files = Array.from(list || []);
    chosen.replaceChildren(...files.map((f, i) => {
      const li = document.createElement("li");
      const name = document.createElement("span");
      name.textContent = f.name;
      const size = document.createElement("span");
      size.className = "size";
      size.textContent = fmtSize(f.size);
      const remove = document.createElement("button");
      remove.type = "button";
      remove.className = "remove";
      remove.textContent = "Remove";
      remove.setAttribute("aria-label", `Remove ${f.name}`);
      remove.disabled = busy;
      remove.addEventListener("click", () => {
        delete rejected[f.name];
        setFiles(files.filter((_, j) => j !== i));
      });
      li.append(name, size, remove);
      if (rejected[f.name]) {
        li.classList.add("rejected");
        const why = document.createElement("span");
        why.className = "problem";
        why.textContent = rejected[f.name];
        li.append(why);
      }
      return li;
    }));
    const problem = checkFiles();
    say(problem);
    protectBtn.disabled = busy || !files.length || !!problem;
  }

  input.addEventListener("change", () => { rejected = {}; setFiles(input.files); });
  ["dragenter", "dragover"].forEach((ev) => drop.addEventListener(ev, (e) => {
    e.preventDefault();
    drop.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((ev) => drop.addEventListener(ev, (e) => {
    e.preventDefault();
    drop.classList.remove("over");
  }));
  drop.addEventListener("drop", (e) => { rejected = {}; setFiles(e.dataTransfer.files); });

  function setBusy(on) {
    busy = on;
    protectBtn.disabled = on || !files.length || !!checkFiles();
    input.disabled = on;
    chosen.querySelectorAll("button.remove").forEach((b) => { b.disabled = on; });
  }

  function showProgress(fraction, text) {
    progressBox.hidden = false;
    if (fraction === null) {
      progress.removeAttribute("value");  // indeterminate: the work of one file has no finer steps
    } else {
      progress.value = fraction;
    }
    progressText.textContent = text;
  }

  function upload(fd) {
    // XMLHttpRequest (not fetch) to show upload progress for larger files
    return new Promise((resolve) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", "/api/jobs");
      xhr.setRequestHeader("X-LB-Session", session);
      xhr.responseType = "json";
      xhr.upload.onprogress = (e) => {
        if (e.lengthComputable) showProgress(0.05 * e.loaded / e.total, `Uploading… ${Math.round(100 * e.loaded / e.total)}%`);
      };
      xhr.onload = () => resolve({ status: xhr.status, data: xhr.response || {} });
      xhr.onerror = () => resolve({ status: 0, data: { error: "The server could not be reached (is lb serve still running?)." } });
      xhr.send(fd);
    });
  }

  async function poll(url) {
    for (;;) {
      let resp, data;
      try {
        resp = await authed(url);
        data = await resp.json();
      } catch (err) {
        return { state: "failed", error: "The server could not be reached (is lb serve still running?)." };
      }
      if (!resp.ok) return { state: "failed", error: data.error || `error ${resp.status}` };
      if (data.state === "done" || data.state === "failed") return data;
      const where = data.files_total > 1 ? `File ${Math.min(data.files_done + 1, data.files_total)} of ${data.files_total} · ` : "";
      if (data.state === "queued") {
        const n = data.position || 0;
        showProgress(null, n > 0
          ? `Waiting: ${n} earlier job${n > 1 ? "s" : ""} ahead of yours (position ${n + 1} in the queue)…`
          : "Starting…");
      } else if (data.fraction > 0) {
        const shown = 0.05 + 0.95 * data.fraction;
        showProgress(shown, `${where}${Math.round(100 * shown)}% · ${data.elapsed.toFixed(0)} s — ${data.message}`);
      } else {
        showProgress(null, `${where}${data.elapsed.toFixed(0)} s — ${data.message}`);
      }
      await new Promise((r) => setTimeout(r, 700));
    }
  }

  function renderResult(r) {
    const node = $("result-template").content.firstElementChild.cloneNode(true);
    node.dataset.index = r.index;
    node.dataset.verdict = r.verdict;
    node.querySelector(".r-name").textContent = r.name;
    const badge = node.querySelector(".badge");
    badge.classList.add(r.verdict);
    badge.textContent = { protected: "protected", partly: "partly protected", weak: "not enough",
      unchanged: "unchanged", error: "error" }[r.verdict] || r.verdict;
    node.querySelector(".r-headline").textContent = r.headline;
    if (r.preview_url) {
      const fig = node.querySelector(".sbs");
      const img = fig.querySelector("img");
      showImage(img, r.preview_url);
      img.alt = `${r.name}: original (left) and protected (right)`;
      fig.querySelector("figcaption").textContent = r.kind === "video"
        ? "First frame of the original and of the protected video."
        : "Green: landmarks found on the original. Red: landmarks found on the protected photo.";
      fig.hidden = false;
    }
    const faces = node.querySelector(".r-faces");
    (r.faces || []).forEach((lines, i) => {
      const block = document.createElement("div");
      block.className = "face";
      const url = (r.closeup_urls || [])[i];
      if (url) {
        const fig = document.createElement("figure");
        fig.className = "closeup";
        const img = document.createElement("img");
        showImage(img, url);
        img.alt = `Face ${i + 1}: original (left) and protected (right), close up`;
        const cap = document.createElement("figcaption");
        cap.className = "muted";
        cap.textContent = "The face at 1:1 pixels: original | protected";
        fig.append(img, cap);
        block.append(fig);
      }
      const text = document.createElement("div");
      const h = document.createElement("h4");
      h.textContent = r.faces.length > 1 ? `Face ${i + 1}` : "The face";
      const ul = document.createElement("ul");
      lines.forEach((t) => {
        const li = document.createElement("li");
        li.textContent = t;
        ul.append(li);
      });
      text.append(h, ul);
      block.append(text);
      faces.append(block);
    });
    const ul = node.querySelector(".r-lines");
    (r.lines || []).forEach((t) => {
      const li = document.createElement("li");
      li.textContent = t;
      ul.append(li);
    });
    if (r.download_url) {
      const a = node.querySelector(".r-download");
      downloadLink(a, r.download_url, r.download_name);
      a.textContent = `Download ${r.download_name}`;
      a.hidden = false;
    }
    return node;
  }

  function showResults(data) {
    resultList.replaceChildren(...data.results.map(renderResult));
    const s = data.settings || {};
    notes.textContent = `Strength ${s.strength}${s.robust ? ", robust to re-compression" : ""} ` +
      `(at most ${s.eps}/255 per pixel, ${s.steps} steps), done in ${data.seconds} s. ` +
      `A face counts as protected when its landmarks move by more than ${(100 * s.threshold).toFixed(0)}% ` +
      `of the distance between the outer eye corners. ${data.protected_against || ""}`;
    // technical notes (which models were used and why) stay behind a "Details" toggle
    const details = $("details");
    $("details-list").replaceChildren(...(data.notes || []).map((t) => {
      const li = document.createElement("li");
      li.textContent = t;
      return li;
    }));
    details.hidden = !(data.notes || []).length;
    if (data.zip_url) {
      downloadLink(zip, data.zip_url, "protected-photos.zip");
      zip.hidden = false;
    } else {
      zip.hidden = true;
    }
    results.hidden = false;
    body.dataset.state = "done";
  }

  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    const problem = checkFiles();
    if (problem || !files.length) {
      say(problem || "Choose at least one photo or video first.");
      return;
    }
    say("");
    setBusy(true);
    results.hidden = true;
    body.dataset.state = "running";
    const fd = new FormData();
    files.forEach((f) => fd.append("files", f, f.name));
    fd.append("strength", form.querySelector("input[name=strength]:checked").value);
    fd.append("robust", $("robust").checked ? "1" : "0");
    showProgress(0, "Uploading…");
    const sent = await upload(fd);
    rejected = {};
    (sent.data.rejected || []).forEach((x) => { rejected[x.name] = x.problem; });
    let data;
    if (sent.status === 202) {
      if ((sent.data.rejected || []).length) {
        // the good files go ahead; the bad ones stay in the list with their reason
        setFiles(files);
      }
      running = sent.data.url;
      data = await poll(sent.data.url);
      running = null;
    } else {
      if ((sent.data.rejected || []).length) setFiles(files);
      data = { state: "failed", error: sent.data.error || `The upload failed (HTTP ${sent.status}).` };
    }
    progressBox.hidden = true;
    setBusy(false);
    if (data.state === "done") {
      showResults(data);
      const bad = Object.keys(rejected);
      if (bad.length) say(`Not protected (see the reason beside each name above): ${bad.join(", ")}.`, "info");
    } else {
      body.dataset.state = "failed";
      say(data.error || "Protecting failed.");
    }
  });

  clearBtn.addEventListener("click", async () => {
    try {
      await fetch("/api/clear", { method: "POST", headers: { "X-LB-Session": session } });
    } catch (err) { /* the server is gone: nothing is left to delete */ }
    results.hidden = true;
    resultList.replaceChildren();
    setFiles([]);
    input.value = "";
    say("Your files were deleted. Reload the page to protect more photos.", "info");
    protectBtn.disabled = true;
    input.disabled = true;
    body.dataset.state = "cleared";
  });

  // Closing or leaving the page ends the session: the server stops its running job (`running`)
  // at the next step, drops its queued ones and deletes its files.
  window.addEventListener("pagehide", () => {
    navigator.sendBeacon("/api/clear", new Blob([session], { type: "text/plain" }));
  });
})();
