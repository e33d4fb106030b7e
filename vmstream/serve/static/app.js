// vmstream serve: the search page. Plain JavaScript, no build step, no network but this server.
"use strict";
const $ = (id) => document.getElementById(id);
const PALETTE = ["#4f8cff", "#3ecf8e", "#f5a524", "#e5484d", "#a36bff", "#2fc7d6", "#ff7ac6", "#9bd13a",
                 "#ff8a3d", "#7a8cff", "#35b4a0", "#d9b23c"];
const labelColour = new Map();
let current = null;  // the moment in the player

function colourOf(label) {
  if (!label) return "#3a404d";
  if (!labelColour.has(label)) labelColour.set(label, PALETTE[labelColour.size % PALETTE.length]);
  return labelColour.get(label);
}

function fmt(t) {
  t = Math.max(0, t);
  const h = Math.floor(t / 3600), m = Math.floor((t % 3600) / 60), s = t % 60;
  const ss = s.toFixed(1).padStart(4, "0");
  return h ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

async function getJSON(url) {
  const r = await fetch(url, {credentials: "same-origin"});
  let body = null;
  try { body = await r.json(); } catch (e) { body = {error: `${r.status} ${r.statusText}`}; }
  if (!r.ok) throw new Error(body && body.error ? body.error : `${r.status}`);
  return body;
}

function setStatus(text, error) {
  const s = $("status");
  s.textContent = text;
  s.classList.toggle("error", !!error);
}

function chips(labels) {
  const box = el("div", "labels");
  for (const l of (labels || []).slice(0, 3)) {
    const c = el("span", "chip");
    c.style.borderColor = colourOf(l.label);
    c.append(el("b", "", l.label), document.createTextNode(` ${(100 * l.score).toFixed(0)}%`));
    box.append(c);
  }
  return box;
}

function card(m) {
  const c = el("article", "card");
  c.dataset.id = m.id;
  c.dataset.start = m.start;
  const th = el("div", "thumb");
  const img = new Image();
  img.alt = `${m.stream_name} ${fmt(m.start)}`;
  img.loading = "eager";
  img.src = m.thumb_url;
  th.append(img, el("span", "score", m.score.toFixed(3)), el("span", "dur", `${(m.end - m.start).toFixed(1)} s`));
  if (m.live) th.append(el("span", "live", "LIVE · thumbnail only"));
  th.append(el("span", "play", "▶"));
  const meta = el("div", "meta");
  const name = el("div", "name", m.stream_name);
  name.title = m.stream;
  meta.append(name, el("div", "time", `${fmt(m.start)} – ${fmt(m.end)}` + (m.ids.length > 1 ? ` · ${m.ids.length} segments` : "")));
  meta.append(chips(m.labels));
  const more = el("button", "more", "More like this →");
  more.addEventListener("click", (ev) => { ev.stopPropagation(); searchBy({id: m.id}, `like ${m.stream_name} ${fmt(m.start)}`); });
  meta.append(more);
  c.append(th, meta);
  c.addEventListener("click", () => play(m));
  return c;
}

async function searchBy(params, what) {
  const qs = new URLSearchParams(Object.assign({k: "12"}, params));
  setStatus(`Searching ${what}…`);
  const t0 = performance.now();
  try {
    const res = await getJSON(`/api/search?${qs}`);
    const grid = $("grid");
    grid.replaceChildren(...res.results.map(card));
    drawLegend();
    const ms = Math.round(performance.now() - t0);
    setStatus(res.results.length ? `${res.results.length} ${res.results.length === 1 ? "moment" : "moments"} ${what} · ${ms} ms` : `Nothing found ${what}.`);
    document.body.dataset.searched = String(Date.now());
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function play(m) {
  current = m;
  $("player").hidden = false;
  $("p-stream").textContent = m.stream_name;
  $("p-time").textContent = `${fmt(m.start)} – ${fmt(m.end)} · score ${m.score.toFixed(3)}`;
  $("p-labels").replaceChildren(chips(m.labels));
  $("p-now").textContent = m.clip_url ? "loading the clip…" : "";
  delete $("video").dataset.clipStart;
  const v = $("video");
  v.pause();
  window.scrollTo({top: 0, behavior: "smooth"});
  if (!m.clip_url) {
    v.removeAttribute("src");
    v.controls = false;
    v.poster = m.thumb_url;
    v.load();
    $("live-note").hidden = false;
    return;
  }
  $("live-note").hidden = true;
  v.controls = true;
  v.poster = m.thumb_url;
  try {
    const info = await getJSON(m.clip_info_url);
    if (current !== m) return;
    v.dataset.clipStart = info.clip_start;
    v.dataset.momentStart = m.start;
    v.src = info.url;
    v.addEventListener("loadedmetadata", () => {
      v.currentTime = info.offset;
      v.play().catch(() => {});
    }, {once: true});
  } catch (e) {
    setStatus(`Clip: ${e.message}`, true);
  }
}

async function loadStreams() {
  try {
    const s = await getJSON("/api/streams");
    $("store").textContent = `${s.streams.length} stream${s.streams.length === 1 ? "" : "s"} · ${s.segments.toLocaleString()} segments · gen ${s.generation}`;
    const box = $("timelines");
    const drawn = [];
    box.replaceChildren();
    for (const st of s.streams.slice(0, 50)) {
      const row = el("div", "tl");
      const name = el("div", "tl-name", st.name.split("/").pop());
      name.title = `${st.name} · ${fmt(st.duration)}`;
      const cv = document.createElement("canvas");
      cv.className = "timeline";
      row.append(name, cv);
      box.append(row);
      drawn.push(getJSON(`/api/streams/${encodeURIComponent(st.name)}/timeline`).then((tl) => drawTimeline(cv, tl, st)));
    }
    await Promise.allSettled(drawn);
    drawLegend();
  } catch (e) {
    setStatus(e.message, true);
  }
}

function drawTimeline(cv, tl, st) {
  const w = cv.clientWidth || 600, h = 30, dpr = window.devicePixelRatio || 1;
  cv.width = w * dpr; cv.height = h * dpr;
  const g = cv.getContext("2d");
  g.scale(dpr, dpr);
  const span = Math.max(1e-6, tl.end - tl.start);
  const segs = tl.segments;
  segs.forEach((s, i) => {
    // a segment's colour runs on to the next one's start (frames are sampled, the stream is not)
    const next = i + 1 < segs.length ? segs[i + 1].start : s.end;
    const until = next - s.end < 2 * (s.end - s.start) + 0.5 ? next : s.end;
    const x0 = (s.start - tl.start) / span * w, x1 = Math.max(x0 + 1, (until - tl.start) / span * w - 1);
    g.globalAlpha = s.score == null ? 0.5 : 0.35 + 0.65 * Math.min(1, s.score);
    g.fillStyle = colourOf(s.label);
    g.fillRect(x0, 2, x1 - x0, h - 4);
  });
  g.globalAlpha = 1;
  g.fillStyle = "rgba(255,255,255,.55)";
  g.font = "10px system-ui, sans-serif";
  g.fillText(fmt(tl.start), 4, h - 6);
  const endText = fmt(tl.end);
  g.fillText(endText, w - g.measureText(endText).width - 4, h - 6);
  cv.dataset.drawn = String(tl.segments.length);
  cv.title = `${st.name}: click a moment for more like it`;
  cv.onclick = (ev) => {
    const r = cv.getBoundingClientRect();
    const t = tl.start + (ev.clientX - r.left) / r.width * span;
    searchBy({stream: tl.stream, at: t.toFixed(2)}, `like ${st.name.split("/").pop()} ${fmt(t)}`);
  };
}

function drawLegend() {
  $("legend").replaceChildren(...[...labelColour].slice(0, 12).map(([label, c]) => {
    const item = el("span");
    const dot = el("i");
    dot.style.background = c;
    item.append(dot, document.createTextNode(label));
    return item;
  }));
}

$("search").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const text = $("q").value.trim();
  if (text) searchBy({text}, `for “${text}”`);
});
$("video").addEventListener("timeupdate", () => {
  const v = $("video");
  if (!current || !v.dataset.clipStart) return;
  const t = +v.dataset.clipStart + v.currentTime;
  $("p-now").textContent = `playing ${fmt(t)} of the source` + (t > current.end ? " (past the moment)" : "");
});
$("p-close").addEventListener("click", () => { $("video").pause(); $("player").hidden = true; current = null; });
$("p-more").addEventListener("click", () => { if (current) searchBy({id: current.id}, `like ${current.stream_name} ${fmt(current.start)}`); });
loadStreams();
