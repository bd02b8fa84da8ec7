// The page of `unclip serve`: forms that post to the JSON API, a canvas to paint an edit's mask, the
// queue and the gallery (polled). Plain JavaScript, no build step, nothing fetched from elsewhere.
"use strict";

const $ = (sel, root = document) => root.querySelector(sel);
const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));
const state = { info: null, inputs: {}, tool: "brush", undo: [], gallerySig: null, timer: null, drawing: null };

async function api(path, options = {}) {
  const r = await fetch(path, options);
  let body = null;
  try { body = await r.json(); } catch (e) { /* not JSON */ }
  if (!r.ok) throw new Error((body && body.error) || `${r.status} ${r.statusText}`);
  return body;
}

function showError(message) { $("#error").textContent = message || ""; }

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "text") e.textContent = v; else if (v !== null && v !== undefined) e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

// Tabs and fields ---------------------------------------------------------------------------------

function selectTab(name) {
  for (const b of $$("[role=tab]")) b.setAttribute("aria-selected", String(b.dataset.tab === name));
  for (const f of $$("form[data-verb]")) f.hidden = f.dataset.verb !== name;
  showError("");
}

// What this model can do: generate and edit need a prior; vary, and a mix side that is an image, need CLIP's
// image tower (Karlo's text-only CLIP has none; an image-variations model has no prior). The rest is hidden.
function canDo(info) {
  // generate ranks its draws by CLIP when the model's default asks for more than one (the field is not offered then)
  const generate = info.has_prior && (info.has_image_encoder || info.defaults.image_candidates <= 1);
  return { generate, edit: info.has_prior, vary: info.has_image_encoder,
           mix: info.has_prior || info.has_image_encoder, image: info.has_image_encoder, text: info.has_prior };
}

function fitModel(info) {
  const can = canDo(info);
  for (const b of $$("[role=tab]")) b.hidden = !can[b.dataset.tab];
  $("#vary [name=prompt_mix]").parentElement.hidden = !info.has_prior;  // mixing toward a caption runs the prior
  for (const s of ["a", "b"]) {
    for (const radio of $$(`input[name=kind-${s}]`)) {
      radio.disabled = !can[radio.value];
      if (can[radio.value] && !can[radio.value === "text" ? "image" : "text"]) {
        radio.checked = true;
        radio.dispatchEvent(new Event("change"));
      }
    }
  }
  const first = $$("[role=tab]").find((b) => !b.hidden);
  if (first) selectTab(first.dataset.tab);
}

function commonFields() {
  const max = state.info.limits.images_per_job;
  for (const row of $$(".common")) {
    row.append(el("label", { text: "Images " }, el("input", { name: "num_images", type: "number", min: 1, max, value: 1 })),
               el("label", { text: "Seed " }, el("input", { name: "seed", type: "number", min: 0, placeholder: "random" })));
  }
}

function optionInput(o, value) {
  if (o.choices.length) {
    const s = el("select", { name: o.name }, el("option", { value: "", text: `default (${value})` }));
    for (const c of o.choices) s.append(el("option", { value: c, text: c }));
    return s;
  }
  const step = o.type === "float" ? "any" : 1;
  return el("input", { name: o.name, type: "number", step, min: o.low, max: o.high, placeholder: String(value) });
}

function advancedFields(info) {
  const box = $("#advanced-fields");
  const size = el("select", { name: "size" }, el("option", { value: "", text: `default (${info.size})` }));
  for (const s of info.sizes) size.append(el("option", { value: s, text: `${s}×${s}` }));
  box.append(el("label", { text: "Size " }, size));
  for (const o of info.options) {
    if (!o.verbs.length) continue;  // nothing this model can use it for (image candidates without CLIP's image tower)
    const editOnly = o.verbs.length === 1 && o.verbs[0] === "edit";
    const where = editOnly ? $("#edit-options") : box;
    const input = optionInput(o, info.defaults[o.name]);
    input.dataset.verbs = o.verbs.join(" ");  // the server's word on which verbs take it
    where.append(el("label", { title: o.help, text: o.name.replace(/_/g, " ") + " " }, input));
  }
}

function numberOrNull(v) { return v === "" || v === undefined ? null : Number(v); }

// The fields every verb takes: count, seed, the advanced options (blank = the model's default).
function commonBody(form, verb) {
  const body = { num_images: Number(form.elements.num_images.value || 1) };
  const seed = numberOrNull(form.elements.seed.value);
  if (seed !== null) body.seed = seed;
  for (const input of $$("#advanced-fields [name], #edit-options [name]")) {
    if (input.value === "") continue;
    if (input.dataset.verbs !== undefined && !input.dataset.verbs.split(" ").includes(verb)) continue;
    body[input.name] = input.tagName === "SELECT" && input.name !== "size" ? input.value : Number(input.value);
  }
  return body;
}

// Input images: uploaded files or gallery results -----------------------------------------------

async function uploadFile(file) {
  return api("/api/uploads", { method: "POST", body: file, headers: { "Content-Type": file.type || "application/octet-stream" } });
}

function setInput(slot, ref, url, label) {
  state.inputs[slot] = { ref, url };
  const picker = $(`.picker[data-slot="${slot}"]`);
  $(".picked", picker).textContent = label;
  const preview = $(".preview", picker);
  if (preview) { preview.src = url; preview.hidden = false; }
  if (slot === "edit") loadEditor(url);
}

function watchPickers() {
  for (const picker of $$(".picker")) {
    $("input[type=file]", picker).addEventListener("change", async (e) => {
      const file = e.target.files[0];
      if (!file) return;
      showError("");
      try {
        const up = await uploadFile(file);
        setInput(picker.dataset.slot, up.id, `/uploads/${up.id}`, `${file.name} (${up.width}×${up.height})`);
      } catch (err) { showError(`upload: ${err.message}`); }
    });
  }
}

function needInput(slot, what) {
  if (!state.inputs[slot]) throw new Error(`choose ${what} first (upload one, or pick a result in the gallery)`);
  return state.inputs[slot].ref;
}

// The mask editor: a canvas of the image and, above it, one of the painted area ----------------------

const imageCanvas = () => $("#edit-image");
const maskCanvas = () => $("#edit-mask");

function loadEditor(url) {
  const im = new Image();
  im.onload = () => {
    for (const c of [imageCanvas(), maskCanvas()]) { c.width = im.naturalWidth; c.height = im.naturalHeight; }
    imageCanvas().getContext("2d").drawImage(im, 0, 0);
    state.undo = [];
    const longer = Math.max(im.naturalWidth, im.naturalHeight);
    const size = $("#brush-size");
    size.max = Math.max(8, Math.round(longer / 2));
    size.value = Math.max(2, Math.round(longer / 10));
    $("#canvas-wrap").classList.remove("empty");
    $("#canvas-wrap").dataset.ready = url;
  };
  im.onerror = () => showError("could not show that image");
  im.src = url;
}

function canvasPoint(e) {
  const c = maskCanvas(), r = c.getBoundingClientRect();
  return [(e.clientX - r.left) * c.width / r.width, (e.clientY - r.top) * c.height / r.height];
}

function stroke(from, to) {
  const ctx = maskCanvas().getContext("2d");
  ctx.globalCompositeOperation = state.tool === "eraser" ? "destination-out" : "source-over";
  ctx.strokeStyle = ctx.fillStyle = "rgb(255, 0, 160)";
  ctx.lineWidth = Number($("#brush-size").value);
  ctx.lineCap = ctx.lineJoin = "round";
  ctx.beginPath();
  ctx.moveTo(...from);
  ctx.lineTo(...to);
  ctx.stroke();
}

function snapshot() {
  const c = maskCanvas();
  state.undo.push(c.getContext("2d").getImageData(0, 0, c.width, c.height));
  if (state.undo.length > 30) state.undo.shift();
}

function watchEditor() {
  const c = maskCanvas();
  c.addEventListener("pointerdown", (e) => {
    if ($("#canvas-wrap").classList.contains("empty")) return;
    c.setPointerCapture(e.pointerId);
    snapshot();
    state.drawing = canvasPoint(e);
    stroke(state.drawing, state.drawing);
  });
  c.addEventListener("pointermove", (e) => {
    if (!state.drawing) return;
    const p = canvasPoint(e);
    stroke(state.drawing, p);
    state.drawing = p;
  });
  const end = () => { state.drawing = null; };
  c.addEventListener("pointerup", end);
  c.addEventListener("pointercancel", end);
  for (const b of $$("[data-tool]")) {
    b.addEventListener("click", () => {
      state.tool = b.dataset.tool;
      for (const o of $$("[data-tool]")) o.setAttribute("aria-pressed", String(o === b));
    });
  }
  $("#undo").addEventListener("click", undo);
  $("#clear").addEventListener("click", () => { snapshot(); c.getContext("2d").clearRect(0, 0, c.width, c.height); });
  $("#invert").addEventListener("click", invert);
  document.addEventListener("keydown", (e) => {
    if ((e.ctrlKey || e.metaKey) && e.key === "z" && !$("#edit").hidden && !/INPUT|TEXTAREA/.test(e.target.tagName)) {
      e.preventDefault();
      undo();
    }
  });
}

function undo() {
  const last = state.undo.pop();
  if (last) maskCanvas().getContext("2d").putImageData(last, 0, 0);
}

function invert() {
  const c = maskCanvas(), ctx = c.getContext("2d");
  snapshot();
  const d = ctx.getImageData(0, 0, c.width, c.height);
  for (let i = 0; i < d.data.length; i += 4) {
    d.data[i] = 255; d.data[i + 1] = 0; d.data[i + 2] = 160; d.data[i + 3] = 255 - d.data[i + 3];
  }
  ctx.putImageData(d, 0, 0);
}

// The mask as the CLI takes it: white = edit (painted at least half), black = keep; the image's size.
function maskBlob() {
  const c = maskCanvas();
  const painted = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  const out = document.createElement("canvas");
  out.width = c.width; out.height = c.height;
  const ctx = out.getContext("2d"), d = ctx.createImageData(c.width, c.height);
  let any = false;
  for (let i = 0; i < d.data.length; i += 4) {
    const v = painted[i + 3] >= 128 ? 255 : 0;
    any = any || v === 255;
    d.data[i] = d.data[i + 1] = d.data[i + 2] = v; d.data[i + 3] = 255;
  }
  if (!any) throw new Error("paint the area to edit first");
  ctx.putImageData(d, 0, 0);
  return new Promise((resolve) => out.toBlob(resolve, "image/png"));
}

// Requests per verb ----------------------------------------------------------------------------------

const bodies = {
  generate: async (f) => ({ prompt: f.elements.prompt.value, negative_prompt: f.elements.negative_prompt.value }),
  edit: async (f) => {
    const image = needInput("edit", "an image to edit");
    const mask = await uploadFile(await maskBlob());
    return { image, mask: mask.id, prompt: f.elements.prompt.value, negative_prompt: f.elements.negative_prompt.value,
             mask_dilate: Number(f.elements.mask_dilate.value || 0), mask_blur: Number(f.elements.mask_blur.value || 0) };
  },
  vary: async (f) => {
    const body = { image: needInput("vary", "an image to vary"), strength: Number(f.elements.strength.value),
                   prompt: f.elements.prompt.value, prompt_mix: Number(f.elements.prompt_mix.value) };
    if (f.elements.toward.value.trim()) Object.assign(body, { toward: f.elements.toward.value, from: f.elements.from.value,
                                                              amount: Number(f.elements.amount.value) });
    return body;
  },
  mix: async (f) => {
    const side = (s) => (f.elements[`kind-${s}`].value === "text" ? { text: f.elements[`text-${s}`].value }
                                                                   : { image: needInput(`mix-${s}`, `image ${s.toUpperCase()}`) });
    const body = { a: side("a"), b: side("b") };
    if (f.elements.series.value === "frames") body.frames = Number(f.elements.frames.value);
    else body.ratio = Number(f.elements.ratio.value);
    return body;
  },
};

function watchForms() {
  for (const f of $$("form[data-verb]")) {
    f.addEventListener("submit", async (e) => {
      e.preventDefault();
      const verb = f.dataset.verb, button = $("button[type=submit]", f);
      showError("");
      button.disabled = true;
      try {
        const body = Object.assign(commonBody(f, verb), await bodies[verb](f));
        await api(`/api/${verb}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
        poll(0);
      } catch (err) { showError(err.message); }
      finally { button.disabled = false; }
    });
  }
  for (const range of $$("input[type=range]")) {
    const out = range.parentElement.querySelector("output");
    if (out) range.addEventListener("input", () => { out.textContent = range.value; });
  }
  for (const s of ["a", "b"]) {
    for (const radio of $$(`input[name=kind-${s}]`)) {
      radio.addEventListener("change", () => {
        const text = radio.value === "text" && radio.checked;
        $(`.picker[data-slot="mix-${s}"]`).hidden = text;
        $(`input[name=text-${s}]`).hidden = !text;
      });
    }
  }
}

// Queue and gallery ----------------------------------------------------------------------------------

function jobLine(j) {
  const what = j.prompt || (j.a !== undefined ? `${j.a} × ${j.b}` : j.image || "");
  const li = el("li", { class: `job ${j.state}`, "data-job": j.id },
                el("span", { class: "verb", text: j.verb }), el("span", { class: "what", text: what }),
                el("span", { class: "state", text: j.state + (j.position ? ` #${j.position}` : "") }),
                el("span", { class: "count", text: `${j.images.length}/${j.num_images} images` }));
  if (j.stage) {
    li.append(el("span", { class: "stage", text: `${j.stage.name} ${j.stage.done}/${j.stage.total}` }),
              el("progress", { max: j.stage.total, value: j.stage.done }));
  }
  if (j.error) li.append(el("span", { class: "error", text: j.error }));
  if (j.state === "queued" || j.state === "running") {
    const b = el("button", { type: "button", text: "Cancel" });
    b.addEventListener("click", () => api(`/api/jobs/${j.id}`, { method: "DELETE" }).then(() => poll(0), (e) => showError(e.message)));
    li.append(b);
  }
  return li;
}

function describe(p) {
  if (!p) return "";
  const parts = [`seed ${p.seed}`, p.mode, p.size, p.sampler, p.decoder_steps && `${p.decoder_steps} steps`,
                 p.ratio !== undefined && `ratio ${p.ratio}`, p.strength !== undefined && `strength ${p.strength}`];
  return parts.filter(Boolean).join(" · ");
}

function card(item) {
  const p = item.params, png = item.name.endsWith(".png");
  const fig = el("figure", { class: "card", "data-name": item.name },
                 el("img", { src: item.url, alt: (p && p.prompt) || item.name, loading: "lazy" }),
                 el("figcaption", {}, el("span", { class: "prompt", text: (p && p.prompt) || (p && p.mode) || item.name }),
                    el("span", { class: "params", text: describe(p) })));
  const tools = el("div", { class: "tools" }, el("a", { href: `${item.url}?download=1`, download: item.name, text: "Download" }));
  if (png) {
    const can = canDo(state.info);
    const uses = [["edit", "Edit", "edit", "edit"], ["vary", "Vary", "vary", "vary"],  // slot, label, tab, what it needs
                  ["mix-a", "Mix A", "mix", "image"], ["mix-b", "Mix B", "mix", "image"]];
    for (const [slot, label, tab, need] of uses) {
      if (!can[need]) continue;
      const b = el("button", { type: "button", text: label, "data-use": slot });
      b.addEventListener("click", () => { setInput(slot, item.name, item.url, item.name); selectTab(tab); });
      tools.append(b);
    }
  }
  fig.append(tools);
  if (p) fig.append(el("details", {}, el("summary", { text: "parameters" }), el("pre", { text: JSON.stringify(p, null, 1) })));
  return fig;
}

async function refreshGallery() {
  const { images } = await api("/api/images");
  const box = $("#gallery");
  box.replaceChildren(...images.map(card));
  if (!images.length) box.append(el("p", { class: "none", text: "no images yet" }));
}

async function poll(delay) {
  clearTimeout(state.timer);
  state.timer = setTimeout(async () => {
    let active = false;
    try {
      const { jobs } = await api("/api/jobs");
      active = jobs.some((j) => j.state === "queued" || j.state === "running");
      $("#queue").replaceChildren(...(jobs.length ? jobs.map(jobLine) : [el("li", { class: "none", text: "nothing queued" })]));
      const sig = jobs.map((j) => `${j.id}:${j.state}:${j.images.length}`).join(",");
      if (sig !== state.gallerySig) { state.gallerySig = sig; await refreshGallery(); }
      $("#notice").textContent = "";
    } catch (err) { $("#notice").textContent = `server: ${err.message}`; }
    poll(active ? 500 : 2500);
  }, delay);
}

async function start() {
  try {
    state.info = await api("/api/info");
  } catch (err) { showError(`cannot reach the server: ${err.message}`); return; }
  $("#model").textContent = `model ${state.info.model} · unclip ${state.info.version}`;
  for (const b of $$("[role=tab]")) b.addEventListener("click", () => selectTab(b.dataset.tab));
  commonFields();
  advancedFields(state.info);
  watchPickers();
  watchEditor();
  watchForms();
  fitModel(state.info);
  document.body.dataset.ready = "1";
  poll(0);
}

start();
