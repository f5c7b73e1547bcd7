"""The search page: HTML and its script (kept in Python so an installed wheel has them)."""

PAGE_HTML = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>smartclip search</title>
<style>
  body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #222; }
  form { display: flex; gap: .5rem; align-items: center; flex-wrap: wrap; }
  #q { flex: 1; min-width: 18rem; padding: .4rem; font-size: 1rem; }
  #drop { margin: 1rem 0; padding: 1rem; border: 2px dashed #999; border-radius: 6px; text-align: center; }
  #drop.over { background: #eef; border-color: #55f; }
  #status { min-height: 1.2rem; margin: .5rem 0; }
  #status.error { color: #b00; font-weight: 600; }
  #mask { display: flex; flex-wrap: wrap; gap: 1px; margin: .5rem 0; }
  #mask span { width: 8px; height: 14px; background: #ddd; }
  #mask span.on { background: #225; }
  #results { display: grid; grid-template-columns: repeat(auto-fill, minmax(160px, 1fr)); gap: .8rem; }
  figure { margin: 0; }
  figure img { width: 100%; aspect-ratio: 1; object-fit: cover; border-radius: 4px; background: #eee; }
  figcaption { font-size: .8rem; word-break: break-all; }
  .score { font-weight: 600; }
</style>
</head>
<body>
<h1>smartclip search</h1>
<p id="info"></p>
<form id="form">
  <input id="q" name="q" type="text" placeholder="describe what you are looking for" autocomplete="off">
  <label>k <input id="k" name="k" type="number" min="1" value="12" style="width:4rem"></label>
  <label><input id="masked" type="checkbox"> masked scoring</label>
  <button id="go" type="submit">Search</button>
</form>
<div id="drop">Drop an image here to find similar ones, or <input id="file" type="file" accept="image/*"></div>
<div id="status" role="status"></div>
<div id="maskbox" hidden><div id="masktitle"></div><div id="mask"></div></div>
<div id="results"></div>
<script src="/app.js"></script>
</body>
</html>
"""

APP_JS = r"""
"use strict";
const $ = (id) => document.getElementById(id);
let info = { max_upload_bytes: 0, default_k: 12, max_k: 100 };

function setStatus(text, isError) {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
}

async function getJSON(response) {
  let body;
  try { body = await response.json(); } catch (e) { body = { error: "the server sent no JSON (HTTP " + response.status + ")" }; }
  if (!response.ok) throw new Error(body.error || ("HTTP " + response.status));
  return body;
}

function showMask(mask) {
  const box = $("maskbox"), strip = $("mask");
  strip.replaceChildren();
  if (!mask) { box.hidden = true; return; }
  const on = new Set(mask.dims);
  for (let d = 0; d < mask.embed_dim; d++) {
    const cell = document.createElement("span");
    if (on.has(d)) cell.className = "on";
    cell.title = "dimension " + d;
    strip.appendChild(cell);
  }
  $("masktitle").textContent = "query mask: " + mask.count + " of " + mask.embed_dim + " dimensions selected"
    + (info.mask_trained ? "" : " (untrained mask network)");
  box.hidden = false;
}

function showResults(result) {
  const grid = $("results");
  grid.replaceChildren();
  for (const hit of result.hits) {
    const fig = document.createElement("figure");
    fig.className = "hit";
    const img = document.createElement("img");
    img.src = hit.url; img.alt = hit.id; img.loading = "lazy";
    const cap = document.createElement("figcaption");
    const score = document.createElement("span");
    score.className = "score"; score.textContent = hit.score.toFixed(4);
    cap.append(score, " ", hit.id);
    fig.append(img, cap);
    grid.appendChild(fig);
  }
  const notes = (result.notes || []).join("; ");
  setStatus(result.hits.length + " results for " + (result.masked ? "masked " : "") + "\u201c" + result.query + "\u201d"
            + (notes ? " \u2014 " + notes : ""), false);
  showMask(result.mask);
}

async function searchText(event) {
  if (event) event.preventDefault();
  const q = $("q").value.trim();
  if (!q) { setStatus("type a query first", true); return; }
  const params = new URLSearchParams({ q: q, k: $("k").value, masked: $("masked").checked ? "1" : "0" });
  setStatus("searching\u2026", false);
  try { showResults(await getJSON(await fetch("/api/search?" + params))); }
  catch (e) { setStatus(e.message, true); }
}

async function searchImage(file) {
  if (!file) return;
  if (file.size > info.max_upload_bytes) {
    setStatus("the image is " + file.size + " bytes; the limit is " + info.max_upload_bytes + " bytes", true);
    return;
  }
  setStatus("searching with " + file.name + "\u2026", false);
  try {
    const r = await fetch("/api/search/image?k=" + encodeURIComponent($("k").value),
                          { method: "POST", body: file, headers: { "Content-Type": "application/octet-stream" } });
    showResults(await getJSON(r));
  } catch (e) { setStatus(e.message, true); }
}

async function init() {
  try {
    info = await getJSON(await fetch("/api/info"));
    $("info").textContent = info.count + " images, model " + info.model + " (" + info.embed_dim + " dimensions)";
    $("k").value = info.default_k; $("k").max = info.max_k;
  } catch (e) { setStatus(e.message, true); }
  $("form").addEventListener("submit", searchText);
  $("file").addEventListener("change", (e) => searchImage(e.target.files[0]));
  const drop = $("drop");
  drop.addEventListener("dragover", (e) => { e.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault(); drop.classList.remove("over");
    searchImage(e.dataTransfer.files[0]);
  });
  document.body.dataset.ready = "1";
}
init();
"""
