// edgekit serve: the phone page. Plain JS, no dependencies, nothing loaded from elsewhere.
// Every number shown comes from the station's JSON; the page computes nothing of its own.
"use strict";

const $ = (sel) => document.querySelector(sel);
const state = { info: null, session: null, busy: false, jobs: new Map(), listTimer: null };
const REFRESH_MS = 15000;  // another phone may be screening the same patient
// how long an upload may move no byte (its link is lost), wait for its answer once sent (the station
// may be busy), one question about a photo may take, how often waiting photos are tried again, and
// how long the page stays quiet after photos were sent before refreshing the sessions list; tests
// shorten them (window.EDGEKIT_LIMITS)
const LIMITS = Object.assign({ stallMs: 30000, answerMs: 90000, askMs: 15000, askAgainMs: 3000,
                               queueRetryMs: 10000, listQuietMs: 5000 }, window.EDGEKIT_LIMITS || {});

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("data-") || k.startsWith("aria-")) node.setAttribute(k, v);
    else node[k] = v;
  }
  for (const c of children) if (c !== null && c !== undefined) node.append(c);
  return node;
}

const pct = (x) => (x === null || x === undefined ? "-" : (100 * x).toFixed(1) + "%");
const ci = (c) => (c ? `${(100 * c[0]).toFixed(1)}–${(100 * c[1]).toFixed(1)}%` : "-");

function say(text, ok) {
  const m = $("#message");
  m.textContent = text;
  m.className = ok ? "ok" : "";
  m.hidden = !text;
  if (text && !ok) m.scrollIntoView({ block: "nearest" });
}

async function api(path, opts) {
  let resp;
  try {
    resp = await fetch(path, Object.assign({ credentials: "same-origin" }, opts || {}));
  } catch (err) {
    const e = new Error("No answer from the station (is it running, and this phone on its network?).");
    e.lost = true;
    throw e;
  }
  let body = null;
  try { body = await resp.json(); } catch (err) { body = null; }
  if (!resp.ok) {
    const detail = body && body.detail ? body.detail : `HTTP ${resp.status}`;
    const e = new Error(typeof detail === "string" ? detail : JSON.stringify(detail));
    e.status = resp.status;
    throw e;
  }
  return body;
}

const notValidated = (d) => Boolean(d && !d.ok);

function renderStop(s) {
  // the patient's result is decided once the stop rule is reached: said big, and on the capture bar
  const stopped = Boolean(s && s.stop_reached);
  const banner = $("#stop-banner");
  banner.hidden = !stopped;
  $("#bar-stop").hidden = !stopped;
  $("#capture-bar").classList.toggle("stopped", stopped);
  if (stopped) {
    banner.replaceChildren(el("strong", {}, "Result decided: stop rule reached"),
      `${s.crops} cells counted (the rule stops at ${s.stop_cells}). Further photos of this patient are ` +
      "analysed but NOT counted. Press \u201cNext patient\u201d for the next one.");
  }
  const key = state.session ? String(state.session.id) : "";
  if (stopped && state.stopSeen !== key && !$("#screen").hidden) banner.scrollIntoView({ block: "nearest" });
  if (stopped) state.stopSeen = key;  // brought into view once per session, not on every refresh
}

function renderSummary(s, review) {
  const box = $("#summary");
  renderStop(s);
  if (!s) {
    box.replaceChildren(el("p", { class: "warn" }, "This session was recorded by an older edgekit without its " +
                                  "decision rule: it cannot be decided here. Rescreen it with its model."));
    return;
  }
  const names = { positive: "POSITIVE", negative: "NEGATIVE", refer: "REFER" };
  const explain = {
    positive: "parasitized cells at or above the patient rule's fraction",
    negative: "the upper 95% bound is below the patient rule's fraction",
    refer: "not decided: keep screening, or refer to microscopy",
  };
  // the domain guard's verdict: every number below carries it when the guard does not vouch for them
  const unvalidated = notValidated(s.domain) && (s.crops > 0 || s.rejected > 0);
  if (unvalidated) {
    explain.refer = "the cells are unlike the model's: check by microscopy";
    explain.positive = explain.negative = "NOT VALIDATED for this microscope: confirm by microscopy";
  }
  const mark = () => (unvalidated ? el("span", { class: "nv" }, " · NOT VALIDATED") : null);
  const left = Math.max(0, s.stop_cells - s.crops);
  const stop = s.stop_reached
    ? "Stop rule reached: enough cells for this patient."
    : (s.stop_cells ? `Stop rule: ${s.crops} of ${s.stop_cells} cells; ${left} more to go.` : "No stop rule.");
  const rows = [
    el("dt", {}, "Cells counted"), el("dd", { class: "s-cells" }, String(s.crops)),
    el("dt", {}, "Model count (parasitized)"),
    el("dd", { class: "s-parasitized" }, `${s.parasitized} (${pct(s.fraction)}, 95% CI ${ci(s.ci95)})`, mark())];
  if (review) {  // the reviewer's verdicts where there are some, the model's calls elsewhere
    const c = review.confirmed;
    rows.push(
      el("dt", {}, "Confirmed count"),
      el("dd", { class: "s-confirmed" }, `${c.parasitized} (${pct(c.parasitemia)}, 95% CI ${ci(c.ci95)})`, mark()),
      el("dt", {}, "Reviewed"),
      el("dd", { class: "s-reviewed" }, `${review.reviewed} of ${review.flagged} flagged ` +
         `(${review.pending} pending); verdicts: ${review.agreed} agreed, ${review.overruled} overruled`));
  }
  rows.push(
    el("dt", {}, "Uncertain"), el("dd", { class: "s-uncertain" }, String(s.uncertain)),
    el("dt", {}, "Not counted"), el("dd", {}, `${s.rejected} rejected, ${s.failed} failed`));
  const counts = el("dl", { class: "counts" }, ...rows);
  box.replaceChildren(
    el("p", {}, el("span", { class: `decision ${s.decision}`, "data-decision": s.decision },
                   names[s.decision] || s.decision), " ", el("span", { class: "small" }, explain[s.decision] || "")),
    counts,
    el("p", { class: s.stop_reached ? "good" : "" }, stop));
  if (unvalidated) {
    box.prepend(el("p", { class: "warn domain", "data-ok": "false" },
                   `NOT VALIDATED for this microscope: ${s.domain.why || ""}`));
  }
  if (s.note) {  // e.g. a session stored without its domain guard: decided by its rule as recorded
    box.prepend(el("p", { class: "warn note" }, s.note));
  }
  const button = $("#open-review");
  button.textContent = review && review.flagged
    ? `Review flagged cells (${review.pending} of ${review.flagged} to do)` : "Review flagged cells";
}

function domainLine(d) {
  if (!d) return null;
  if (d.ok) return el("p", { class: "good domain", "data-ok": "true" }, "Cells look like the model's training cells.");
  return el("p", { class: "warn domain", "data-ok": "false" },
            `NOT VALIDATED: ${d.why || "cells unlike the model's training cells"}. Check this field by microscopy.`);
}

function recordedLine(r) {
  if (!r) return null;
  const parts = [`${r.new} new record${r.new === 1 ? "" : "s"}`];
  if (r.already) parts.push(`${r.already} already recorded (not counted twice)`);
  if (r.after_stop) parts.push(`${r.after_stop} not recorded: stop rule reached`);
  return el("p", { class: "small recorded" }, "Saved: " + parts.join("; ") + ".");
}

function overlayBase(picture, w, h) {
  // the photo at the screen's own resolution, stretched to the field's w x h: what the station's
  // overlay is drawn on here (drawn while the photo is being sent, when the page has it)
  const k = Math.min(1, Math.ceil(window.innerWidth * (window.devicePixelRatio || 1)) / w);
  const canvas = el("canvas", { width: Math.round(w * k), height: Math.round(h * k), "data-size": `${w}x${h}` });
  const ctx = canvas.getContext("2d");
  if (!ctx) return null;
  ctx.drawImage(picture, 0, 0, canvas.width, canvas.height);
  return canvas;
}

function drawOverlay(canvas, marks) {
  // the station's overlay (device/field/overlay.py) drawn from its marks on the photo this phone sent:
  // the same outlines, colours, numbers, header and banner, with no picture to download
  const [w, h] = marks.size;
  const ctx = canvas.getContext("2d");
  ctx.scale(canvas.width / w, canvas.height / h);
  const t = marks.thick;
  ctx.lineWidth = t;
  ctx.textBaseline = "alphabetic";
  ctx.font = `${12 * t}px sans-serif`;
  for (const c of marks.cells) {
    const [x, y, cw, ch] = c.box, o = c.outline;
    ctx.strokeStyle = ctx.fillStyle = marks.colors[c.call || ""];
    ctx.beginPath();
    for (let i = 0; i < o.length; i += 2) ctx.lineTo(x + o[i], y + o[i + 1]);
    ctx.closePath();
    ctx.stroke();
    ctx.strokeRect(x, y, cw - 1, ch - 1);
    ctx.fillText(c.label, x + 3, y + 12 * t);
  }
  const bar = (text, top, colour) => {
    const tall = 15 * t + 8;
    ctx.font = `${15 * t}px sans-serif`;
    const y = top === null ? h - tall : top;
    ctx.fillStyle = colour;
    ctx.fillRect(0, y, top === null ? w : Math.min(w, ctx.measureText(text).width + 8), tall);
    ctx.fillStyle = "#fff";
    ctx.fillText(text, 4, y + tall - 4 - 3 * t);
  };
  if (marks.banner) bar(marks.banner, null, "#a00000");
  bar(marks.header, 0, "#000");
  return canvas;
}

function clearResults() {
  // the overlays drawn here are blob: images: release them with their cards (a clinic day is long)
  for (const img of $("#results").querySelectorAll("img[src^='blob:']")) URL.revokeObjectURL(img.src);
  $("#results").replaceChildren();
}

async function drawnOverlay(job, out) {
  // the station's overlay drawn here (a canvas) on the photo this page sent, scaled while it was
  // being sent (decoded again when the page no longer holds it, e.g. a photo that waited in the
  // queue); null when it cannot be, and the station's phone-sized overlay is shown instead
  const [w, h] = out.marks.size;
  let base = job.base;
  const picture = job.picture;
  job.base = null;
  if (!base || base.getAttribute("data-size") !== `${w}x${h}`) {
    if (typeof createImageBitmap !== "function") return null;
    try {
      base = overlayBase(picture || await createImageBitmap(job.blob, { imageOrientation: "from-image" }), w, h);
    } catch (err) { return null; }
  }
  return base && drawOverlay(base, out.marks);
}

function showDrawn(img, canvas) {
  // the drawn overlay is shown at once; then kept as a JPEG (blob:) in its place, as a canvas holds
  // the whole bitmap and a clinic day has many cards
  canvas.setAttribute("role", "img");
  canvas.setAttribute("aria-label", img.alt);
  img.replaceWith(canvas);
  canvas.toBlob((blob) => {
    if (!blob) return;
    img.onload = () => canvas.replaceWith(img);
    img.src = URL.createObjectURL(blob);
  }, "image/jpeg", 0.85);
}

function renderField(out, drawing) {
  const r = out.result;
  const card = el("article", { class: "result" + (r.rejected ? " rejected" : ""), "data-kind": "field", "data-name": out.name },
                  el("h3", {}, out.name));
  card.append(domainLine(r.domain) || "");
  if (r.rejected) card.append(el("p", { class: "warn reason" }, "Not counted: " + r.rejected));
  if (!r.rejected) {
    card.append(el("dl", { class: "counts" },
      el("dt", {}, "Cells found"), el("dd", { class: "cells" }, String(r.cells)),
      el("dt", {}, `${r.positive_label || "Positive"}`), el("dd", { class: "parasitized" }, String(r.parasitized)),
      el("dt", {}, "Uncertain (?)"), el("dd", { class: "uncertain" }, String(r.uncertain)),
      el("dt", {}, "Parasitemia"), el("dd", {}, el("span", { class: "parasitemia" }, pct(r.parasitemia)),
                                      notValidated(r.domain) ? el("span", { class: "nv" }, " · NOT VALIDATED") : null),
      el("dt", {}, "95% interval"), el("dd", { class: "ci95" }, ci(r.ci95))));
  }
  if (out.field && out.field.verdict === "duplicate") {
    card.className += " duplicate";
    card.append(el("p", { class: "small duplicate" }, out.field.sharper
      ? "This field is already counted, and this take is sharper: count it instead, or move to a new field."
      : "This field is already counted: move to a new field. Only a sharper take can be counted in its place."));
  } else if (out.field && out.field.verdict === "replace") {
    card.append(el("p", { class: "small replaced" }, `Counted in place of ${out.field.duplicate_of} (sharper).`));
  }
  card.append(recordedLine(out.recorded) || "");
  for (const line of out.not_classified || []) card.append(el("p", { class: "small refused" }, line));
  if (out.overlay || drawing) {  // drawn here, the station's full-size overlay is fetched only on a tap
    const station = out.overlay_phone || out.overlay;
    const alt = `Cells found in ${out.name}, outlined red if parasitized, green if not`;
    const img = drawing ? el("img", { alt }) : el("img", { src: station, loading: "lazy", alt });
    if (drawing) {  // the counts do not wait for it
      drawing.catch(() => null).then((canvas) => {
        if (canvas) showDrawn(img, canvas);
        else if (station) img.src = station;
        else img.remove();
      });
    }
    card.append(out.overlay ? el("a", { class: "overlay", href: out.overlay, target: "_blank" }, img) : img,
                el("p", { class: "small" }, out.overlay ? "Tap the picture for full size." : "Drawn on this phone."));
  }
  if (!out.overlay && out.overlay_problem) {
    card.append(el("p", { class: "warn overlay-problem" }, out.overlay_problem));
  }
  return card;
}

function renderCrop(out) {
  const r = out.result;
  const card = el("article", { class: "result", "data-kind": "crop", "data-name": out.name }, el("h3", {}, out.name));
  if (!r) {
    card.append(el("p", { class: "warn" }, "Not recorded: the stop rule is reached for this patient."));
    return card;
  }
  if (notValidated(out.summary && out.summary.domain)) {
    card.append(el("p", { class: "warn domain", "data-ok": "false" },
                   `NOT VALIDATED for this microscope (this patient's cells): ${out.summary.domain.why || ""}`));
  }
  if (r.status !== "classified") {
    card.className += " rejected";
    card.append(el("p", { class: "warn reason" }, `Not counted (${r.status}): ${r.reason}`));
  } else {
    const decision = r.decision === "uncertain" ? "uncertain: look at it by microscopy" : r.decision;
    card.append(el("dl", { class: "counts" },
      el("dt", {}, "Label"), el("dd", { class: "label" }, r.label),
      el("dt", {}, "Probability"), el("dd", { class: "probability" }, r.probability.toFixed(3)),
      el("dt", {}, "Decision"), el("dd", { class: "decision-cell" }, decision)));
  }
  card.append(recordedLine(out.recorded) || "");
  return card;
}

function showSession(data) {
  state.session = data.session;
  sessionStorage.setItem("edgekit-session", String(data.session.id));
  sessionStorage.setItem("edgekit-session-data", JSON.stringify(
    { session: data.session, summary: data.summary, review: data.review }));
  $("#patient-title").textContent = data.session.patient;
  $("#session-id").textContent = String(data.session.id);
  renderSummary(data.summary, data.review);
  $("#start").hidden = true;
  $("#screen").hidden = false;
}

async function refreshSummary() {
  if (!state.session || state.busy || document.hidden) return;
  try {
    const data = await api(`api/sessions/${state.session.id}?records=false`);
    if (state.session && data.session.id === state.session.id) renderSummary(data.summary, data.review);
  } catch (err) { /* the next upload or refresh says what is wrong */ }
}

// ---------------------------------------------------------------- sending photos
// Each photo is one job: shrunk (fields), hashed, sent with progress and a cancel, then one of the
// states "counted", "already counted", "not counted: why". When the answer is lost (no link, a
// timeout, a cancel after the photo left), the page asks the station what became of that photo, by
// the SHA-256 of the bytes it sent, before it says anything.

const STATE_TEXT = { waiting: "waiting", preparing: "preparing", sending: "sending", analysing: "analysing",
                     checking: "asking the station whether it was recorded…", counted: "counted",
                     queued: "waiting for the station",
                     already: "already counted", "not-counted": "not counted", unknown: "not confirmed" };

async function shrinkField(file) {
  return (await shrinkPhoto(file)).blob;
}

async function shrinkPhoto(file) {
  // a phone photo is cut to the size the station measures fields at (EXIF orientation applied);
  // anything this browser cannot decode is sent as it is, and the station says why it is refused.
  // With the picture decoded (null when not), which the station's answer is drawn on
  const up = state.info && state.info.upload;
  if (!up || typeof createImageBitmap !== "function") return { blob: file, picture: null };
  let bmp;
  try {
    bmp = await createImageBitmap(file, { imageOrientation: "from-image" });
  } catch (err) { return { blob: file, picture: null }; }
  const scale = up.field_max_side / Math.max(bmp.width, bmp.height);
  if (scale >= 1) return { blob: file, picture: bmp };
  const canvas = el("canvas", { width: Math.round(bmp.width * scale), height: Math.round(bmp.height * scale) });
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true;
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bmp, 0, 0, canvas.width, canvas.height);
  bmp.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", up.jpeg_quality));
  if (!blob || blob.size >= file.size) return { blob: file, picture: canvas };
  return { blob: new File([blob], file.name.replace(/\.[^.]*$/, "") + ".jpg", { type: "image/jpeg" }),
           picture: canvas };
}

// SHA-256 in plain JS: crypto.subtle exists only on HTTPS or localhost, and a clinic station is
// often plain HTTP on the Wi-Fi
const SHA_K = (() => {
  const primes = [];
  for (let n = 2; primes.length < 64; n++) if (primes.every((p) => n % p)) primes.push(n);
  return primes;
})();
const SHA_ROUND = Uint32Array.from(SHA_K, (p) => (Math.cbrt(p) % 1) * 2 ** 32);
const SHA_INIT = Uint32Array.from(SHA_K.slice(0, 8), (p) => (Math.sqrt(p) % 1) * 2 ** 32);

function sha256Js(buffer) {
  const bytes = new Uint8Array(buffer), n = bytes.length;
  const words = new Uint32Array(((n + 8) >> 6 << 4) + 16);
  for (let i = 0; i < n; i++) words[i >> 2] |= bytes[i] << (24 - 8 * (i & 3));
  words[n >> 2] |= 0x80 << (24 - 8 * (n & 3));
  words[words.length - 2] = Math.floor(n / 2 ** 29);
  words[words.length - 1] = n * 8;
  const H = Uint32Array.from(SHA_INIT), w = new Uint32Array(64);
  const ror = (x, r) => (x >>> r) | (x << (32 - r));
  for (let j = 0; j < words.length; j += 16) {
    for (let t = 0; t < 64; t++) {
      if (t < 16) { w[t] = words[j + t]; continue; }
      const a = w[t - 15], b = w[t - 2];
      w[t] = w[t - 16] + (ror(a, 7) ^ ror(a, 18) ^ (a >>> 3)) + w[t - 7] + (ror(b, 17) ^ ror(b, 19) ^ (b >>> 10));
    }
    let [a, b, c, d, e, f, g, h] = H;
    for (let t = 0; t < 64; t++) {
      const t1 = (h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) + ((e & f) ^ (~e & g)) + SHA_ROUND[t] + w[t]) | 0;
      const t2 = ((ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) | 0;
      h = g; g = f; f = e; e = (d + t1) | 0; d = c; c = b; b = a; a = (t1 + t2) | 0;
    }
    [a, b, c, d, e, f, g, h].forEach((x, i) => { H[i] += x; });
  }
  return Array.from(H, (x) => x.toString(16).padStart(8, "0")).join("");
}

async function sha256Hex(blob) {
  const buffer = await blob.arrayBuffer();
  if (window.crypto && crypto.subtle) {
    const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", buffer));
    return Array.from(digest, (x) => x.toString(16).padStart(2, "0")).join("");
  }
  return sha256Js(buffer);
}

// ---------------------------------------------------------------- the queue on the phone
// Every photo waits in IndexedDB (keyed by session and hash) until the station has answered for it;
// one taken while the link is down is sent when it returns, after asking the station whether it
// already has it: each photo is recorded once, whatever drops or restarts in between.

function queueStore(mode, fn) {
  return new Promise((resolve, reject) => {
    if (!window.indexedDB) { reject(new Error("no IndexedDB")); return; }
    const open = indexedDB.open("edgekit-queue", 1);
    open.onupgradeneeded = () => open.result.createObjectStore("photos", { keyPath: "key" });
    open.onerror = () => reject(open.error);
    open.onsuccess = () => {
      const tx = open.result.transaction("photos", mode);
      const req = fn(tx.objectStore("photos"));
      tx.oncomplete = () => { open.result.close(); resolve(req.result); };
      tx.onerror = tx.onabort = () => { open.result.close(); reject(tx.error); };
    };
  });
}

const jobKey = (job) => `${job.session}:${job.sha256}`;

async function queueKeep(job) {
  try {
    await queueStore("readwrite", (st) => st.put({ key: jobKey(job), session: job.session, sha256: job.sha256,
                                                   kind: job.kind, name: job.blob.name || job.file.name,
                                                   blob: job.blob, added: Date.now() }));
    job.kept = true;
  } catch (err) { job.kept = false; }  // private browsing: the photo lives only as long as the page
}

async function queueDrop(job) {
  if (!job.kept) return;
  try { await queueStore("readwrite", (st) => st.delete(jobKey(job))); job.kept = false; } catch (err) { /* kept */ }
}

async function flushQueue() {
  // the photos still waiting (this page's, or left by a closed one): asked about, then sent
  if (state.busy) return;
  let items;
  try { items = await queueStore("readonly", (st) => st.getAll()); } catch (err) { return; }
  const waiting = items.filter((it) => !state.jobs.has(it.key) || state.jobs.get(it.key).state === "queued");
  if (!waiting.length) return;
  state.busy = true;
  try {
    for (const it of waiting) {
      let job = state.jobs.get(it.key);
      if (!job) {
        job = newJob(new File([it.blob], it.name, { type: it.blob.type }), it.kind);
        Object.assign(job, { session: it.session, sha256: it.sha256, blob: job.file, kept: true });
        state.jobs.set(it.key, job);
        $("#results").prepend(job.card);
      }
      await askStation(job, "taken while the link was down");
    }
  } finally { state.busy = false; }
}

// ---------------------------------------------------------------- one photo's journey

function setJob(job, st, why) {
  job.state = st;
  job.card.setAttribute("data-state", st);
  job.line.textContent = STATE_TEXT[st] + (why ? `: ${why}` : "");
  const live = ["waiting", "preparing", "sending", "analysing", "queued"].includes(st);
  job.cancel.hidden = !live;
  job.bar.hidden = st !== "sending";
  job.retry.hidden = !(st === "not-counted" && job.resendable);
  job.replace.hidden = !(st === "already" && job.sharper);
}

function newJob(file, kind) {
  const job = { file, kind, state: "waiting", resendable: false, resent: 0 };
  job.line = el("p", { class: "state" });
  job.bar = el("progress", { max: 1, value: 0 });
  job.cancel = el("button", { type: "button", class: "cancel", onclick: () => cancelJob(job) }, "Cancel");
  job.retry = el("button", { type: "button", class: "retry", onclick: () => retryJob(job) }, "Send again");
  job.replace = el("button", { type: "button", class: "replace", onclick: () => replaceJob(job) },
                   "Count this take instead");
  job.card = el("article", { class: "job", "data-kind": kind, "data-file": file.name },
                el("h3", {}, file.name), job.line, job.bar, job.cancel, job.retry, job.replace);
  setJob(job, "waiting");
  return job;
}

async function finish(job, st, why) {
  await job.ready;  // kept before it is dropped
  job.picture = job.base = null;  // the decoded photo is not kept for every card of the day
  setJob(job, st, why);
  await queueDrop(job);
}

function cancelJob(job) {
  job.cancelled = true;
  if (job.xhr) job.xhr.abort();
  else if (["waiting", "preparing", "queued"].includes(job.state)) finish(job, "not-counted", "cancelled, not sent");
}

function replaceJob(job) {
  // a sharper take of a field already counted: sent again, to be counted in place of that one
  job.replacing = true;
  job.sharper = false;
  return retryJob(job);
}

async function retryJob(job) {
  if (state.busy) { say("Wait until the photos being sent are done."); return; }
  state.busy = true;
  try { job.cancelled = false; await runJob(job); } finally { state.busy = false; }
}

function send(job) {
  // one POST with upload progress; resolves with the answer, or with why none came
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    let timer = null;
    const arm = (ms) => { clearTimeout(timer); timer = setTimeout(() => { job.timedOut = true; xhr.abort(); }, ms); };
    job.xhr = xhr;
    xhr.open("POST", job.url);
    xhr.setRequestHeader("Content-Type", job.blob.type || "application/octet-stream");
    xhr.upload.onprogress = (ev) => {
      if (ev.lengthComputable) job.bar.value = ev.loaded / ev.total;
      job.line.textContent = `sending ${Math.round(100 * job.bar.value)}% of ${(job.blob.size / 1e6).toFixed(2)} MB`;
      arm(LIMITS.stallMs);
    };
    xhr.upload.onload = () => { setJob(job, "analysing"); arm(LIMITS.answerMs); };
    const done = (result) => { clearTimeout(timer); job.xhr = null; resolve(result); };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (err) { body = null; }
      done({ status: xhr.status, body });
    };
    xhr.onerror = () => done({ lost: "the link to the station dropped" });
    xhr.onabort = () => done({ lost: job.cancelled ? "cancelled" : "no answer in time" });
    arm(LIMITS.stallMs);
    xhr.send(job.blob);
  });
}

function outcome(out) {
  // [state, why] of an answer the station gave
  const r = out.recorded || {};
  const res = out.result;
  if (out.field && out.field.verdict === "duplicate") return ["already", out.field.message];
  if (out.kind === "field" && res && res.rejected) return ["not-counted", res.rejected];
  if (out.kind === "crop" && res && res.status !== "classified") return ["not-counted", `${res.status}: ${res.reason}`];
  if (r.new > 0) return ["counted", r.after_stop ? `${r.after_stop} cells past the stop rule not counted` : ""];
  if (r.already > 0) return ["already", ""];
  if (r.after_stop > 0 || !res) return ["not-counted", "the stop rule is reached for this patient"];
  return ["counted", ""];
}

async function showAnswer(job, out, confirmedLater) {
  await job.ready;
  const card = out.kind === "field" ? renderField(out, out.marks ? drawnOverlay(job, out) : null) : renderCrop(out);
  job.picture = null;  // drawn: the decoded photo is not kept for every card of the day
  const [st, why] = outcome(out);
  job.sharper = Boolean(out.field && out.field.sharper);
  job.card.replaceWith(card);
  job.card = card;
  card.setAttribute("data-sha256", job.sha256);
  card.append(job.line, job.cancel, job.retry, job.replace);
  await finish(job, st, why || (confirmedLater ? "confirmed by the station after the link dropped" : ""));
  if (out.summary !== undefined && state.session && out.session.id === state.session.id) {
    renderSummary(out.summary, out.review);
  }
}

async function runJob(job) {
  const max = state.info ? state.info.max_upload_bytes : Infinity;
  job.resendable = false;
  if (job.cancelled) return;
  if (!job.blob) {
    setJob(job, "preparing");
    const shrunk = job.kind === "field" ? await shrinkPhoto(job.file) : { blob: job.file, picture: null };
    job.blob = shrunk.blob;
    job.picture = shrunk.picture;
    // hashed and kept on the phone while it is sent (on a weak link the upload is most of the wait);
    // nothing reads the hash or the queue before an answer comes or is lost, and those wait for it
    job.ready = (async () => {
      job.sha256 = await sha256Hex(job.blob);
      job.card.setAttribute("data-sha256", job.sha256);
      state.jobs.set(jobKey(job), job);
      if (job.blob.size <= max) await queueKeep(job);
    })();
  }
  if (job.blob.size > max) {
    // MB as the station's --max-upload-mb counts them (2^20 bytes)
    await finish(job, "not-counted", `${(job.blob.size / 1048576).toFixed(1)} MB is larger than the ` +
                                     `${+(max / 1048576).toFixed(2)} MB limit; not sent`);
    return;
  }
  if (job.cancelled) { await finish(job, "not-counted", "cancelled, not sent"); return; }
  if (navigator.onLine === false) { await job.ready; queued(job); return; }
  const name = encodeURIComponent(job.blob.name || job.file.name);
  job.url = `api/sessions/${job.session}/images?kind=${job.kind}&name=${name}` + (job.replacing ? "&replace=true" : "");
  for (let attempt = 0; ; attempt++) {
    job.timedOut = false;
    setJob(job, "sending");
    const sending = send(job);
    if (job.kind === "field" && job.picture && !job.base) {  // while the photo is on its way
      job.base = overlayBase(job.picture, job.picture.width, job.picture.height);
    }
    const got = await sending;
    if (got.lost) {
      await askStation(job, got.lost);
      return;
    }
    if (got.status === 200 && got.body) { await showAnswer(job, got.body, false); return; }
    if (got.status === 429 && attempt < 5) {
      setJob(job, "waiting", "the station is busy");
      await new Promise((r) => setTimeout(r, 1000 * (attempt + 1)));
      continue;
    }
    const detail = got.body && got.body.detail ? String(got.body.detail) : `HTTP ${got.status}`;
    if (got.status >= 500 || got.status === 0) { await askStation(job, detail); return; }  // it may have recorded first
    job.resendable = got.status === 408 || got.status === 429;
    await finish(job, "not-counted", got.status === 401
      ? "this phone is no longer joined to the station: open its link again (scan its QR code)" : detail);
    return;
  }
}

function queued(job) {
  setJob(job, "queued", job.kept
    ? "kept on this phone; sent when the station answers again (never counted twice)"
    : "the station does not answer; keep this page open, it is sent when the link is back");
}

async function askStation(job, why) {
  // what became of a photo whose answer was lost: asked by its hash, again while it is being
  // analysed; sent (again) only when the station says it does not have it
  await job.ready;
  for (let attempt = 0; ; attempt++) {
    setJob(job, "checking");
    const ctl = new AbortController();
    const timer = setTimeout(() => ctl.abort(), LIMITS.askMs);
    let got = null;
    try {
      got = await api(`api/sessions/${job.session}/uploads/${job.sha256}`, { signal: ctl.signal });
    } catch (err) {
      got = err.lost || ctl.signal.aborted ? null : { state: "error", status: err.status, detail: err.message };
    } finally { clearTimeout(timer); }
    if (got && got.state === "recorded") {
      if (got.answer) {
        await showAnswer(job, Object.assign({}, got.answer, { summary: got.summary, review: got.review,
                                                              session: got.session }), true);
      } else {
        await finish(job, "counted", "the station recorded it (see the session's counts)");
        if (state.session && got.session.id === state.session.id) renderSummary(got.summary, got.review);
      }
      return;
    }
    if (got && got.state === "in progress") {
      setJob(job, "analysing", "the station has it");
      await new Promise((r) => setTimeout(r, 2000));
      continue;
    }
    if (got && got.state === "not recorded") {
      if (job.cancelled) { await finish(job, "not-counted", "cancelled"); return; }
      if (job.resent < 2) {  // it never arrived whole: send it again, at most twice in a row
        job.resent += 1;
        await runJob(job);
        return;
      }
      job.resendable = true;
      await finish(job, "not-counted", `${why}; the station does not have it`);
      return;
    }
    if (got && got.state === "error") {
      if (got.status === 401) {
        setJob(job, "queued", "this phone is no longer joined to the station: open its link again; " +
                              "the photo is kept and sent then");
      } else await finish(job, "not-counted", got.detail);
      return;
    }
    if (attempt >= 2) { queued(job); return; }
    await new Promise((r) => setTimeout(r, LIMITS.askAgainMs));
  }
}

async function upload(files, kind) {
  if (!state.session) { say("Start a patient session first."); return; }
  say("");
  const jobs = files.map((f) => newJob(f, kind));
  for (const job of jobs) job.session = state.session.id;
  $("#results").prepend(...jobs.slice().reverse().map((j) => j.card));
  while (state.busy) await new Promise((r) => setTimeout(r, 200));  // a queue being sent goes first
  state.busy = true;
  try {
    for (const [i, job] of jobs.entries()) {
      $("#progress").textContent = `Photo ${i + 1} of ${jobs.length}: ${job.file.name}`;
      await runJob(job);
    }
  } finally { state.busy = false; }
  const counted = jobs.filter((j) => j.state === "counted").length;
  $("#progress").textContent = jobs.length ? `Done: ${counted} of ${jobs.length} counted.` : "";
  refreshSessionsSoon();
}

function refreshSessionsSoon() {
  // the sessions list (below the cards) once no photo has been sent for a while: its requests do
  // not compete with the next photo being prepared and sent
  clearTimeout(state.listTimer);
  state.listTimer = setTimeout(() => (state.busy ? refreshSessionsSoon() : loadSessions()), LIMITS.listQuietMs);
}

async function loadSessions() {
  let rows;
  loadDrift();
  try { rows = await api("api/sessions"); } catch (err) { say(err.message); return; }
  const operator = Boolean(state.info && state.info.operator);
  $("#sessions-scope").textContent = operator ? "Every session (this is the station's own screen)."
    : "The sessions started on this phone (the station's own screen lists all).";
  $("#station-link").hidden = !operator;
  const body = $("#sessions tbody");
  body.replaceChildren(...rows.map(({ session, summary, review }) => el("tr", {},
    el("td", {}, session.patient, el("br"), el("span", { class: "small" }, `${session.site || "-"} · #${session.id}`)),
    el("td", {}, summary ? String(summary.crops) : "-"),
    el("td", { class: "s-result" }, summary ? el("span", { class: summary.decision }, summary.decision) : "no rule",
       summary && notValidated(summary.domain) && summary.crops > 0
         ? el("span", { class: "nv" }, el("br"), "NOT VALIDATED") : null,
       review && review.reviewed ? el("span", { class: "small" }, el("br"), `${review.reviewed} reviewed`) : null),
    el("td", {},
      el("button", { type: "button", onclick: () => openSession(session.id) }, "Open"),
      el("a", { class: "button", href: `api/export.csv?session=${session.id}`, download: "" }, "CSV")))));
}

// ---------------------------------------------------------------- site drift (the guard over days)

const DRIFT_WORD = { drift: "DRIFT", watch: "watch", ok: "ok" };

async function loadDrift() {
  let data;
  try { data = await api("api/drift"); } catch (err) { return; }  // the list still shows without it
  const sites = data.sites;
  $("#drift").replaceChildren(...(sites.length
    ? [el("p", {}, `Drift per site (median guard score of the last ${data.window} sessions):`),
       ...sites.map((s) => el("p", { class: s.drift.status === "ok" ? "" : "nv", "data-status": s.drift.status },
         `${DRIFT_WORD[s.drift.status] || s.drift.status}: ${s.line}`))]
    : []));
  const alarming = sites.filter((s) => s.current && (s.drift.status === "drift" || s.drift.status === "watch"));
  $("#drift-alert").replaceChildren(...alarming.map((s) => el("p", { class: "warn" },
    s.drift.status === "drift"
      ? `Re-validate site ${s.site || "-"}: its recent sessions no longer look like the cells this model ` +
        `was fitted on (guard ${s.drift.rolling.toFixed(2)} > ${s.drift.threshold.toFixed(2)}). ` +
        "Check it on newly labelled fields (edgekit site check) before trusting its results."
      : `Watch site ${s.site || "-"}: its recent sessions are farther from this model's cells than any it ` +
        `was validated on (guard ${s.drift.rolling.toFixed(2)}, limit ${s.drift.threshold.toFixed(2)}).`)));
  $("#drift-alert").hidden = alarming.length === 0;
}

async function restoreCards(id) {
  // the session's field and crop cards as the station answered them, newest first (after a reload,
  // or on another visit); photos this page is still sending keep their own cards
  let data;
  try { data = await api(`api/sessions/${id}/uploads`); } catch (err) { return; }
  if (!state.session || String(state.session.id) !== String(id)) return;
  const cards = data.uploads.slice().reverse().map((it) => {
    const out = it.answer;
    const card = out.kind === "field" ? renderField(out) : renderCrop(out);
    const [st, why] = it.answer.current === "replaced"
      ? ["already", "replaced by a sharper take"] : outcome(out);
    card.setAttribute("data-sha256", it.sha256);
    card.setAttribute("data-restored", st);  // not data-state: no job of this page, nothing to send
    card.classList.add("restored");
    card.append(el("p", { class: "state" }, STATE_TEXT[st] + (why ? `: ${why}` : "")));
    return card;
  });
  const live = Array.from($("#results").children).filter((c) => !c.classList.contains("restored"));
  const shown = new Set(live.map((c) => c.getAttribute("data-sha256")));
  $("#results").replaceChildren(...live, ...cards.filter((c) => !shown.has(c.getAttribute("data-sha256"))));
}

async function openSession(id) {
  try {
    const data = await api(`api/sessions/${id}`);
    clearResults();
    showSession(data);
    say(`Resumed patient ${data.session.patient}: ${data.records.length} records so far.`, true);
    await restoreCards(id);
  } catch (err) {
    const kept = JSON.parse(sessionStorage.getItem("edgekit-session-data") || "null");
    if (!err.lost || !kept || String(kept.session.id) !== String(id)) { say(err.message); return; }
    showSession(kept);  // offline: the session as last seen; its counts come back with the station
    say(`Patient ${kept.session.patient}: the station does not answer; photos wait on this phone.`);
  }
}

// ---------------------------------------------------------------- review gallery

const VERDICT_TEXT = { "parasitized": "parasitized", "not parasitized": "NOT parasitized" };

function reviewCounts(review) {
  const c = review.confirmed, m = review.model;
  return `Model: ${m.parasitized} parasitized of ${review.cells} cells · confirmed: ${c.parasitized} ` +
         `(${pct(c.parasitemia)}) · reviewed ${review.reviewed} of ${review.flagged}, ${review.pending} pending`;
}

function cellVerdictText(item) {
  const v = item.review;
  if (!v) return "Not reviewed yet";
  return `Reviewed: ${VERDICT_TEXT[v.verdict] || v.verdict}${v.reviewer ? " (" + v.reviewer + ")" : ""}`;
}

function renderCell(item) {
  const model = item.negative_sample ? "not parasitized (a kept sample of negatives)"
    : item.called ? (item.decision === "uncertain" ? "parasitized (uncertain)" : "parasitized")
    : "uncertain";
  const card = el("article", { class: "cell" + (item.called ? " called" : ""), "data-id": String(item.id),
                               "data-verdict": item.review ? item.review.verdict : "" });
  card.append(item.image
    ? el("img", { src: item.image, alt: `cell ${item.id}, p ${(item.p || 0).toFixed(2)}`, loading: "lazy" })
    : el("div", { class: "no-image" }, "crop not kept (screened before crops were kept)"));
  card.append(el("p", {}, el("b", {}, `#${item.id}`), ` p ${(item.p || 0).toFixed(2)}`),
              el("p", { class: "small" }, `model: ${model}`),
              el("p", { class: "small" }, item.source),
              el("p", { class: "cell-verdict" }, cellVerdictText(item)));
  for (const verdict of ["parasitized", "not parasitized"]) {
    const pressed = Boolean(item.review && item.review.verdict === verdict);
    card.append(el("button", { type: "button", "data-verdict": verdict, "aria-pressed": String(pressed),
                               onclick: () => sendVerdict(card, item, verdict) },
                   verdict === "parasitized" ? "Parasitized" : "Not parasitized"));
  }
  return card;
}

async function sendVerdict(card, item, verdict) {
  if (!state.session) return;
  const buttons = card.querySelectorAll("button");
  buttons.forEach((b) => { b.disabled = true; });
  const reviewer = $("#reviewer").value.trim() || null;
  localStorage.setItem("edgekit-reviewer", reviewer || "");
  try {
    const out = await api(`api/sessions/${state.session.id}/reviews`, {
      method: "POST", headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ verdicts: [{ record_id: item.id, verdict }], reviewer }) });
    item.review = out.reviews[String(item.id)];
    card.replaceWith(renderCell(item));
    $("#review-counts").textContent = reviewCounts(out.review);
    renderSummary(out.summary, out.review);
    const r = out.recorded;
    say(r.unchanged ? `Cell #${item.id}: already recorded as ${verdict}; nothing changed.`
                    : `Cell #${item.id}: recorded ${verdict}.`, true);
  } catch (err) {
    buttons.forEach((b) => { b.disabled = false; });
    say(`Cell #${item.id}: ${err.message} (not recorded)`);
  }
}

async function openReview() {
  if (!state.session) return;
  let data;
  try { data = await api(`api/sessions/${state.session.id}/review`); } catch (err) { say(err.message); return; }
  $("#review-patient").textContent = data.session.patient;
  const s = data.summary;
  $("#review-domain").replaceChildren(s && notValidated(s.domain) && s.crops > 0
    ? el("p", { class: "warn domain", "data-ok": "false" }, `NOT VALIDATED for this microscope: ${s.domain.why || ""}`)
    : "");
  $("#review-counts").textContent = reviewCounts(data.review);
  $("#gallery").replaceChildren(...(data.items.length ? data.items.map(renderCell)
    : [el("p", {}, "No cell was called parasitized or uncertain in this session.")]));
  say("");
  $("#screen").hidden = true;
  $("#history").hidden = true;
  $("#review").hidden = false;
  window.scrollTo(0, 0);
}

function closeReview() {
  $("#review").hidden = true;
  $("#screen").hidden = false;
  $("#history").hidden = false;
  refreshSummary();
}

async function init() {
  for (const k of ["site", "operator", "reviewer"]) $("#" + k).value = localStorage.getItem("edgekit-" + k) || "";
  // installable, and openable while the station is out of reach (browsers allow it on https or localhost)
  if ("serviceWorker" in navigator && window.isSecureContext) navigator.serviceWorker.register("sw.js").catch(() => {});
  try {
    state.info = await api("api/status");
    localStorage.setItem("edgekit-status", JSON.stringify(state.info));
  } catch (err) {
    if (!err.lost) { say(err.message); return; }
    // the station is out of reach: the page works from what it last said; photos wait on the phone
    state.info = JSON.parse(localStorage.getItem("edgekit-status") || "null");
    say("The station does not answer: photos taken now wait on this phone and are sent when it is back.");
  }
  if (state.info) {
    const m = state.info.model;
    $("#model").textContent = `Model ${m.format} · ${m.sha256.slice(0, 12)} · edgekit ${state.info.version}`;
    if (state.info.untrusted) {
      $("#untrusted").textContent = `UNSIGNED MODEL (development only): ${state.info.untrusted}`;
      $("#untrusted").hidden = false;
    }
  }
  $("#session-form").addEventListener("submit", async (ev) => {
    ev.preventDefault();
    const body = { patient: $("#patient").value.trim(), site: $("#site").value.trim() || null,
                   operator: $("#operator").value.trim() || null };
    for (const k of ["site", "operator"]) localStorage.setItem("edgekit-" + k, body[k] || "");
    try {
      const data = await api("api/sessions", { method: "POST", body: JSON.stringify(body),
                                               headers: { "Content-Type": "application/json" } });
      clearResults();
      showSession(data);
      say("");
      loadSessions();
      restoreCards(data.session.id);  // a resumed patient: the cards of the photos counted so far
    } catch (err) { say(err.message); }
  });
  for (const [id, kind] of [["camera", "field"], ["fields", "field"], ["crops", "crop"]]) {
    $("#" + id).addEventListener("change", async (ev) => {
      const files = Array.from(ev.target.files);
      ev.target.value = "";
      await upload(files, kind);
    });
  }
  $("#new-patient").addEventListener("click", () => {
    state.session = null;
    sessionStorage.removeItem("edgekit-session");
    $("#patient").value = "";
    $("#screen").hidden = true;
    $("#start").hidden = false;
  });
  $("#refresh").addEventListener("click", loadSessions);
  $("#open-review").addEventListener("click", openReview);
  $("#close-review").addEventListener("click", closeReview);
  setInterval(refreshSummary, REFRESH_MS);
  setInterval(flushQueue, LIMITS.queueRetryMs);
  window.addEventListener("online", flushQueue);
  await loadSessions();
  const last = sessionStorage.getItem("edgekit-session");
  if (last) await openSession(last);
  flushQueue();  // photos a closed page left waiting
}

document.addEventListener("DOMContentLoaded", init);
