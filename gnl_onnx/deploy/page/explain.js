// gnl-onnx explanation page: runs a converted model (config.json says which file, how to prepare
// the image and which methods it computes) in onnxruntime-web, in this browser, with no network.
// The preprocessing follows gnl_onnx.images.Preprocessing step by step (Pillow's resampling in
// integer arithmetic, its RGB -> L weights, float32 normalization), so the model sees the numbers
// Python would give it; the overlay follows gnl_onnx.report.pictures.overlay (abs view).
"use strict";

const gnl = (window.gnl = { ready: false, result: null, error: null, timings: {} });

// ---------------------------------------------------------------- Pillow's resampling (8 bit)
const PRECISION_BITS = 22; // 32 - 8 - 2, as Pillow's Resample.c
const FILTERS = {
  bilinear: [1.0, (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; }],
  bicubic: [2.0, (x) => {
    const a = -0.5; x = Math.abs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
  }],
  lanczos: [3.0, (x) => {
    const sinc = (t) => { if (t === 0.0) return 1.0; t *= Math.PI; return Math.sin(t) / t; };
    return (-3.0 <= x && x < 3.0) ? sinc(x) * sinc(x / 3) : 0.0;
  }],
};

function coefficients(inSize, outSize, filter) {
  const [baseSupport, fn] = filter;
  const scale = inSize / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = baseSupport * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const bounds = new Int32Array(outSize * 2);
  const kk = new Float64Array(outSize * ksize);
  for (let xx = 0; xx < outSize; xx++) {
    const center = (xx + 0.5) * scale;
    const ss = 1.0 / filterscale;
    let xmin = Math.trunc(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5);
    if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    const k = new Float64Array(xmax);
    for (let x = 0; x < xmax; x++) { k[x] = fn((x + xmin - center + 0.5) * ss); ww += k[x]; }
    for (let x = 0; x < xmax; x++) {
      const w = ww !== 0.0 ? k[x] / ww : k[x];
      kk[xx * ksize + x] = Math.trunc(w < 0 ? -0.5 + w * (1 << PRECISION_BITS) : 0.5 + w * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin; bounds[xx * 2 + 1] = xmax;
  }
  return { bounds, kk, ksize };
}

const clip8 = (ss) => Math.min(255, Math.max(0, Math.floor(ss / (1 << PRECISION_BITS))));

// pixels: Uint8 [h, w, c]; returns the same layout at (outW, outH): horizontal pass, then vertical
function resample(pixels, w, h, c, outW, outH, method) {
  if (method === "nearest") {
    const out = new Uint8Array(outW * outH * c);
    for (let y = 0; y < outH; y++) {
      const sy = Math.min(h - 1, Math.floor((y + 0.5) * h / outH));
      for (let x = 0; x < outW; x++) {
        const sx = Math.min(w - 1, Math.floor((x + 0.5) * w / outW));
        for (let ch = 0; ch < c; ch++) out[(y * outW + x) * c + ch] = pixels[(sy * w + sx) * c + ch];
      }
    }
    return out;
  }
  const filter = FILTERS[method];
  if (!filter) throw new Error(`unknown resample method ${method}`);
  let src = pixels, sw = w;
  if (outW !== w) {
    const { bounds, kk, ksize } = coefficients(w, outW, filter);
    const out = new Uint8Array(outW * h * c);
    for (let y = 0; y < h; y++) for (let x = 0; x < outW; x++) {
      const xmin = bounds[x * 2], xmax = bounds[x * 2 + 1];
      for (let ch = 0; ch < c; ch++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let i = 0; i < xmax; i++) ss += src[(y * sw + xmin + i) * c + ch] * kk[x * ksize + i];
        out[(y * outW + x) * c + ch] = clip8(ss);
      }
    }
    src = out; sw = outW;
  }
  if (outH !== h) {
    const { bounds, kk, ksize } = coefficients(h, outH, filter);
    const out = new Uint8Array(sw * outH * c);
    for (let y = 0; y < outH; y++) {
      const ymin = bounds[y * 2], ymax = bounds[y * 2 + 1];
      for (let x = 0; x < sw; x++) for (let ch = 0; ch < c; ch++) {
        let ss = 1 << (PRECISION_BITS - 1);
        for (let i = 0; i < ymax; i++) ss += src[((ymin + i) * sw + x) * c + ch] * kk[y * ksize + i];
        out[(y * sw + x) * c + ch] = clip8(ss);
      }
    }
    src = out;
  }
  return src;
}

// Python's round(): halves to even
function roundHalfEven(v) {
  const f = Math.floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

// ---------------------------------------------------------------- the image -> the model's input
async function decode(file) {
  const bitmap = await createImageBitmap(file, { colorSpaceConversion: "none", premultiplyAlpha: "none",
                                                 imageOrientation: "from-image" }); // EXIF rotation, as Pillow's exif_transpose
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d");
  ctx.drawImage(bitmap, 0, 0);
  const rgba = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  return { rgba, width: bitmap.width, height: bitmap.height };
}

// RGBA -> RGB (transparency on white) or L (Pillow's ITU-R 601-2 weights, integer)
function toMode(rgba, n, grey) {
  const out = new Uint8Array(n * (grey ? 1 : 3));
  for (let i = 0; i < n; i++) {
    const a = rgba[i * 4 + 3];
    let r = rgba[i * 4], g = rgba[i * 4 + 1], b = rgba[i * 4 + 2];
    if (a !== 255) {
      r = Math.round((r * a + 255 * (255 - a)) / 255);
      g = Math.round((g * a + 255 * (255 - a)) / 255);
      b = Math.round((b * a + 255 * (255 - a)) / 255);
    }
    if (grey) out[i] = (r * 19595 + g * 38470 + b * 7471 + 0x8000) >> 16;
    else { out[i * 3] = r; out[i * 3 + 1] = g; out[i * 3 + 2] = b; }
  }
  return out;
}

function preprocess(image, prep) {
  const grey = prep.channels === "L";
  const c = grey ? 1 : 3;
  let px = toMode(image.rgba, image.width * image.height, grey);
  let w = image.width, h = image.height;
  if (prep.fit === "shorter") {
    const s = prep.size[0];
    const [nw, nh] = w <= h ? [s, Math.trunc(s * h / w)] : [Math.trunc(s * w / h), s];
    px = resample(px, w, h, c, nw, nh, prep.resample); w = nw; h = nh;
  } else if (prep.fit === "exact") {
    const [th, tw] = prep.size;
    px = resample(px, w, h, c, tw, th, prep.resample); w = tw; h = th;
  } else { // letterbox
    const [th, tw] = prep.size;
    const scale = Math.min(tw / w, th / h);
    const nw = Math.max(1, roundHalfEven(w * scale)), nh = Math.max(1, roundHalfEven(h * scale));
    const inner = resample(px, w, h, c, nw, nh, prep.resample);
    px = new Uint8Array(tw * th * c).fill(prep.pad);
    const left = Math.floor((tw - nw) / 2), top = Math.floor((th - nh) / 2);
    for (let y = 0; y < nh; y++) px.set(inner.subarray(y * nw * c, (y + 1) * nw * c), ((top + y) * tw + left) * c);
    w = tw; h = th;
  }
  if (prep.crop) { // centre crop; torchvision pads a smaller image with zeros first
    const [ch, cw] = prep.crop;
    const ph = Math.max(ch - h, 0), pw = Math.max(cw - w, 0);
    if (ph || pw) {
      const H = h + ph, W = w + pw, padded = new Uint8Array(H * W * c);
      const top = Math.floor(ph / 2), left = Math.floor(pw / 2);
      for (let y = 0; y < h; y++) padded.set(px.subarray(y * w * c, (y + 1) * w * c), ((top + y) * W + left) * c);
      px = padded; w = W; h = H;
    }
    const top = roundHalfEven((h - ch) / 2), left = roundHalfEven((w - cw) / 2);
    const out = new Uint8Array(ch * cw * c);
    for (let y = 0; y < ch; y++) out.set(px.subarray(((top + y) * w + left) * c, ((top + y) * w + left + cw) * c), y * cw * c);
    px = out; w = cw; h = ch;
  }
  // float32 arithmetic in Python's order: pixel * (range / 255), minus mean, divided by std
  const f = Math.fround;
  const factor = f(prep.value_range / 255.0);
  const mean = prep.mean.map(f), std = prep.std.map(f);
  const data = new Float32Array(w * h * c);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) for (let k = 0; k < c; k++) {
    const source = prep.channels === "BGR" ? c - 1 - k : k;
    const v = f(f(f(px[(y * w + x) * c + source] * factor) - mean[k]) / std[k]);
    data[prep.layout === "NCHW" ? (k * h + y) * w + x : (y * w + x) * c + k] = v;
  }
  const dims = prep.layout === "NCHW" ? [1, c, h, w] : [1, h, w, c];
  return { data, dims, pixels: px, width: w, height: h, channels: c };
}

// ---------------------------------------------------------------- the overlay (abs view)
function perPixel(attribution, prep, w, h, c) { // signed sum over channels
  const out = new Float64Array(w * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    let s = 0;
    for (let k = 0; k < c; k++) s += attribution[prep.layout === "NCHW" ? (k * h + y) * w + x : (y * w + x) * c + k];
    out[y * w + x] = s;
  }
  return out;
}

function roughness(a, w, h) {
  if (Math.min(w, h) < 2) return 0;
  let mean = 0; for (const v of a) mean += v; mean /= a.length;
  let variance = 0; for (const v of a) variance += (v - mean) ** 2; variance /= a.length;
  if (!(variance > 0) || !isFinite(variance)) return 0;
  let dy = 0, dx = 0;
  for (let y = 0; y < h - 1; y++) for (let x = 0; x < w; x++) dy += (a[(y + 1) * w + x] - a[y * w + x]) ** 2;
  for (let y = 0; y < h; y++) for (let x = 0; x < w - 1; x++) dx += (a[y * w + x + 1] - a[y * w + x]) ** 2;
  return (dy / ((h - 1) * w) + dx / (h * (w - 1))) / (4 * variance);
}

function gaussian(a, w, h, sigma) { // separable, numpy's "reflect" edges (or "edge" on tiny maps)
  const radius = Math.max(1, Math.ceil(3 * sigma));
  const kernel = [];
  let total = 0;
  for (let i = -radius; i <= radius; i++) { const v = Math.exp(-0.5 * (i / sigma) ** 2); kernel.push(v); total += v; }
  for (let i = 0; i < kernel.length; i++) kernel[i] /= total;
  const reflect = Math.min(w, h) > radius;
  const at = (i, n) => {
    if (!reflect) return Math.min(n - 1, Math.max(0, i));
    if (i < 0) return -i;
    if (i >= n) return 2 * (n - 1) - i;
    return i;
  };
  const rows = new Float64Array(w * h), out = new Float64Array(w * h);
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    let s = 0;
    for (let i = -radius; i <= radius; i++) s += a[y * w + at(x + i, w)] * kernel[i + radius];
    rows[y * w + x] = s;
  }
  for (let y = 0; y < h; y++) for (let x = 0; x < w; x++) {
    let s = 0;
    for (let i = -radius; i <= radius; i++) s += rows[at(y + i, h) * w + x] * kernel[i + radius];
    out[y * w + x] = s;
  }
  return out;
}

function massClip(a, outliers) {
  const v = Float64Array.from(a, Math.abs).sort();
  let total = 0;
  const cumulative = new Float64Array(v.length);
  for (let i = 0; i < v.length; i++) { total += v[i]; cumulative[i] = total; }
  if (!v.length || !isFinite(total) || total <= 0) return 1.0;
  const goal = total * (1.0 - outliers / 100.0);
  let lo = 0, hi = v.length; // first index with cumulative >= goal (numpy searchsorted, left)
  while (lo < hi) { const mid = (lo + hi) >> 1; if (cumulative[mid] < goal) lo = mid + 1; else hi = mid; }
  const end = v[Math.min(lo, v.length - 1)];
  return end > 0 ? end : v[v.length - 1];
}

function overlay(pixels, channels, attribution2d, w, h, style) {
  let a = attribution2d.map((v) => (isFinite(v) ? v : 0));
  let sigma = 0;
  if (roughness(a, w, h) > style.rough) {
    sigma = style.smooth_fraction * Math.max(w, h);
    if (sigma < 0.5) sigma = 0;
  }
  a = a.map(Math.abs);
  if (sigma > 0) a = gaussian(a, w, h, sigma);
  const end = massClip(a, style.outliers);
  const rgb = new Uint8ClampedArray(w * h * 4);
  for (let i = 0; i < w * h; i++) {
    const strength = Math.min(1, Math.max(0, Math.abs(a[i]) / end));
    const colour = style.colormap[Math.min(255, Math.floor(strength * 256))];
    const [r, g, b] = channels === 1 ? [pixels[i], pixels[i], pixels[i]] : [pixels[i * 3], pixels[i * 3 + 1], pixels[i * 3 + 2]];
    const grey = r * 0.299 + g * 0.587 + b * 0.114;
    const base = grey * style.dim + (1.0 - style.dim) * 64.0;
    const alpha = style.max_alpha * strength ** style.gamma;
    for (let k = 0; k < 3; k++) {
      rgb[i * 4 + k] = Math.min(255, Math.max(0, Math.trunc(base * (1 - alpha) + colour[k] * 255.0 * alpha + 0.5)));
    }
    rgb[i * 4 + 3] = 255;
  }
  return rgb;
}

// ---------------------------------------------------------------- the page
const $ = (id) => document.getElementById(id);

function status(text) { $("status").textContent = text; }

function loadScript(src) {
  return new Promise((resolve, reject) => {
    const script = document.createElement("script");
    script.src = src;
    script.onload = resolve;
    script.onerror = () => reject(new Error(`cannot load ${src}`));
    document.head.append(script);
  });
}

async function start() {
  const config = await (await fetch("config.json")).json();
  gnl.config = config;
  $("title").textContent = `${config.title}: ${config.methods.map((m) => m.name).join(", ")}`;
  const begin = performance.now();
  const wanted = new URLSearchParams(location.search).get("ep"); // ?ep=wasm: WebAssembly even with a GPU
  let providers = ["wasm"];
  if (wanted !== "wasm" && navigator.gpu) {
    try { if (await navigator.gpu.requestAdapter()) providers = ["webgpu", "wasm"]; } catch (e) { /* no adapter */ }
  }
  // the WebGPU build is twice the size of the WebAssembly-only one: load it only where it can run
  await loadScript(providers[0] === "webgpu" ? config.runtime_files.webgpu : config.runtime_files.wasm);
  ort.env.wasm.wasmPaths = "./";
  ort.env.logLevel = "error";
  // threads need a cross-origin isolated page (COOP/COEP headers); one thread otherwise
  ort.env.wasm.numThreads = self.crossOriginIsolated ? Math.min(4, navigator.hardwareConcurrency || 1) : 1;
  status(`loading ${config.model} (${providers[0]})...`);
  // logSeverityLevel 3: errors only, not the note that inputs with defaults are not folded as constants
  gnl.session = await ort.InferenceSession.create(config.model, { executionProviders: providers, logSeverityLevel: 3 });
  gnl.provider = providers[0];
  gnl.timings.load_ms = performance.now() - begin;
  status(`ready (${providers[0]}, model loaded in ${gnl.timings.load_ms.toFixed(0)} ms): pick an image`);
  gnl.ready = true;
  $("file").addEventListener("change", () => { if ($("file").files.length) explainFile($("file").files[0]); });
}

async function explainFile(file) {
  const config = gnl.config;
  const begin = performance.now();
  gnl.result = null; gnl.error = null;
  try {
    status(`explaining ${file.name}...`);
    const image = preprocess(await decode(file), config.preprocessing);
    const input = new ort.Tensor("float32", image.data, image.dims);
    const fetches = config.methods.flatMap((m) => [m.outputs.attribution, m.outputs.scores, m.outputs.target_used]);
    const outputs = await gnl.session.run({ [config.input]: input }, fetches);
    const result = { file: file.name, provider: gnl.provider, input: image.data, dims: image.dims,
                     pixels: image.pixels, methods: {} };
    $("results").replaceChildren();
    for (const m of config.methods) {
      const attribution = outputs[m.outputs.attribution].data;
      const scores = outputs[m.outputs.scores].data;
      const target = Number(outputs[m.outputs.target_used].data[0]);
      const map = perPixel(attribution, config.preprocessing, image.width, image.height, image.channels);
      const rgba = overlay(image.pixels, image.channels, map, image.width, image.height, config.overlay);
      const max = Math.max(...scores);
      let sum = 0; for (const s of scores) sum += Math.exp(s - max);
      const probability = Math.exp(scores[target] - max) / sum;
      draw(m, target, scores[target], probability, rgba, image.width, image.height);
      result.methods[m.name] = { attribution, scores, target, score: scores[target], overlay: rgba };
    }
    gnl.timings.heatmap_ms = performance.now() - begin;
    result.timings = { ...gnl.timings };
    gnl.result = result;
    status(`${file.name}: ${config.methods.length} method(s) in ${gnl.timings.heatmap_ms.toFixed(0)} ms (${gnl.provider})`);
  } catch (e) {
    gnl.error = String(e && e.message || e);
    status(`failed: ${gnl.error}`);
    console.error(e);
  }
}

function draw(method, target, score, probability, rgba, w, h) {
  const figure = document.createElement("figure");
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = h;
  canvas.getContext("2d").putImageData(new ImageData(rgba, w, h), 0, 0);
  const caption = document.createElement("figcaption");
  const name = gnl.config.classes ? gnl.config.classes[target] : `class ${target}`;
  caption.textContent = `${method.name}: ${name} (${target}), score ${score.toFixed(3)}, p ${probability.toFixed(3)}`;
  caption.title = method.summary;
  figure.append(canvas, caption);
  $("results").append(figure);
}

window.gnlBase64 = (typed) => { // for tests and tools: a typed array's bytes, exactly
  const bytes = new Uint8Array(typed.buffer, typed.byteOffset, typed.byteLength);
  let text = "";
  for (let i = 0; i < bytes.length; i += 0x8000) text += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  return btoa(text);
};

start().catch((e) => { gnl.error = String(e && e.message || e); status(`failed: ${gnl.error}`); console.error(e); });
