// toolkit-web.js: run a toolkit export in the browser with onnxruntime-web, no other dependency.
//   readMetadata(bytes)        the ONNX file's metadata_props (ORT-web exposes none), parsed from the protobuf
//   contractOf(props)          labels, preprocessing, calibration (temperature, ood) when the file has them
//   pixels(rgba, w, h, pre)    toolkit.preprocess.Preprocess.resize_crop in integer arithmetic: Pillow's resampling
//                              (its coefficients and 22-bit fixed point), fit crop | letterbox | squash
//   normalize(px, pre)         Preprocess.normalize: float32 NCHW, (x / 255 - mean) / std
//   decode(blob)               the browser's decoder, EXIF-rotated, no colour management (alpha onto white in pixels)
//   scores(logits, meta, k)    softmax(logits / T), top-k, the "unknown" answer when the file has one, and the
//                              answer in words as toolkit predict and serve-local say it

// ---- ONNX ModelProto: only field 14, metadata_props (StringStringEntryProto: key = 1, value = 2) ----
function varint(buf, pos) {
  let value = 0, scale = 1, byte;
  do {
    if (pos >= buf.length) throw new Error("truncated ONNX file");
    byte = buf[pos++];
    value += (byte & 0x7f) * scale;  // plain arithmetic: lengths may pass 2^31
    scale *= 128;
  } while (byte & 0x80);
  return [value, pos];
}

function skip(buf, pos, wire) {
  if (wire === 0) return varint(buf, pos)[1];
  if (wire === 1) return pos + 8;
  if (wire === 5) return pos + 4;
  if (wire === 2) { const [len, p] = varint(buf, pos); return p + len; }
  throw new Error(`unsupported protobuf wire type ${wire}`);
}

function entry(buf, start, end) {
  const text = new TextDecoder();
  let pos = start, key = "", value = "";
  while (pos < end) {
    const [tag, p] = varint(buf, pos);
    const field = Math.floor(tag / 8), wire = tag & 7;
    if (wire === 2 && (field === 1 || field === 2)) {
      const [len, q] = varint(buf, p);
      const s = text.decode(buf.subarray(q, q + len));
      if (field === 1) key = s; else value = s;
      pos = q + len;
    } else pos = skip(buf, p, wire);
  }
  return [key, value];
}

export function readMetadata(bytes) {
  const buf = bytes instanceof Uint8Array ? bytes : new Uint8Array(bytes);
  const props = {};
  let pos = 0;
  while (pos < buf.length) {
    const [tag, p] = varint(buf, pos);
    const field = Math.floor(tag / 8), wire = tag & 7;
    if (field === 14 && wire === 2) {
      const [len, q] = varint(buf, p);
      const [key, value] = entry(buf, q, q + len);
      props[key] = value;
      pos = q + len;
    } else pos = skip(buf, p, wire);
    if (pos > buf.length) throw new Error("truncated ONNX file");
  }
  return props;
}

export function contractOf(props) {
  if (!("labels" in props) || !("preprocess" in props)) throw new Error("not a toolkit export (no labels/preprocess metadata)");
  const pre = JSON.parse(props.preprocess);
  const input = props.input ? JSON.parse(props.input) : {};
  if (input.raw) throw new Error("a raw-input file: the page expects the float32 NCHW export");
  return {
    labels: JSON.parse(props.labels),
    preprocess: { resize: pre.resize, crop: pre.crop, interpolation: pre.interpolation, mean: pre.mean, std: pre.std,
                  decode: pre.decode || "full", fit: pre.fit || "crop" },
    precision: props.precision || "fp32",
    temperature: props.temperature ? Number(JSON.parse(props.temperature)) : null,
    ood: props.ood ? JSON.parse(props.ood) : null,
  };
}

// ---- Pillow's resampling (libImaging/Resample.c), RGB 8 bits per channel ----
const FILTERS = {
  bilinear: [1.0, (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; }],
  bicubic: [2.0, (x) => {
    const a = -0.5; x = Math.abs(x);
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
  }],
  lanczos: [3.0, (x) => (x >= -3.0 && x < 3.0 ? sinc(x) * sinc(x / 3.0) : 0.0)],
};
function sinc(x) { if (x === 0.0) return 1.0; x *= Math.PI; return Math.sin(x) / x; }
const PRECISION_BITS = 32 - 8 - 2;

function coefficients(inSize, in0, in1, outSize, filter) {
  const [support0, fn] = FILTERS[filter];
  const scale = (in1 - in0) / outSize;
  const filterscale = Math.max(scale, 1.0);
  const support = support0 * filterscale;
  const ksize = Math.ceil(support) * 2 + 1;
  const kk = new Int32Array(outSize * ksize), bounds = new Int32Array(outSize * 2);
  const w = new Float64Array(ksize), ss = 1.0 / filterscale;
  for (let xx = 0; xx < outSize; xx++) {
    const center = in0 + (xx + 0.5) * scale;
    let xmin = Math.trunc(center - support + 0.5); if (xmin < 0) xmin = 0;
    let xmax = Math.trunc(center + support + 0.5); if (xmax > inSize) xmax = inSize;
    xmax -= xmin;
    let ww = 0.0;
    for (let x = 0; x < xmax; x++) { w[x] = fn((x + xmin - center + 0.5) * ss); ww += w[x]; }
    for (let x = 0; x < xmax; x++) {
      const k = ww !== 0.0 ? w[x] / ww : w[x];
      kk[xx * ksize + x] = Math.trunc(k < 0 ? -0.5 + k * (1 << PRECISION_BITS) : 0.5 + k * (1 << PRECISION_BITS));
    }
    bounds[xx * 2] = xmin; bounds[xx * 2 + 1] = xmax;
  }
  return { ksize, kk, bounds };
}

function clip8(v) {
  if (v >= 2 ** (PRECISION_BITS + 8)) return 255;
  if (v <= 0) return 0;
  return Math.floor(v / 2 ** PRECISION_BITS);
}

// A packed RGB image {w, h, data: Uint8Array(w * h * 3)}.
function image(w, h) { return { w, h, data: new Uint8Array(w * h * 3) }; }

function nearest(img, w, h, box) {
  const out = image(w, h), sx = (box[2] - box[0]) / w, sy = (box[3] - box[1]) / h;
  for (let y = 0; y < h; y++) {
    const yin = Math.min(img.h - 1, Math.floor(box[1] + (y + 0.5) * sy));
    for (let x = 0; x < w; x++) {
      const xin = Math.min(img.w - 1, Math.floor(box[0] + (x + 0.5) * sx));
      for (let c = 0; c < 3; c++) out.data[(y * w + x) * 3 + c] = img.data[(yin * img.w + xin) * 3 + c];
    }
  }
  return out;
}

// One pass of Pillow's separable resampling: along x (horizontal) or y, over the rows (columns) first..first+n.
function pass(src, c, horizontal, first, n) {
  const out = horizontal ? image(c.bounds.length / 2, n) : image(n, c.bounds.length / 2);
  for (let y = 0; y < out.h; y++) {
    for (let x = 0; x < out.w; x++) {
      const j = horizontal ? x : y, min = c.bounds[j * 2], len = c.bounds[j * 2 + 1], k = j * c.ksize;
      for (let ch = 0; ch < 3; ch++) {
        let ss = 2 ** (PRECISION_BITS - 1);
        for (let i = 0; i < len; i++) {
          const at = horizontal ? (y + first) * src.w + i + min : (i + min) * src.w + x + first;
          ss += src.data[at * 3 + ch] * c.kk[k + i];
        }
        out.data[(y * out.w + x) * 3 + ch] = clip8(ss);
      }
    }
  }
  return out;
}

// The source rows (columns) the other pass reads, and its bounds shifted to start there.
function span(c) {
  const n = c.bounds.length / 2, first = c.bounds[0], last = c.bounds[n * 2 - 2] + c.bounds[n * 2 - 1];
  for (let i = 0; i < n; i++) c.bounds[i * 2] -= first;
  return [first, last - first];
}

// Image.resize(size, filter, box). Pillow 13 runs the vertical pass first when the width does not shrink and
// the height does (else horizontal first); where it picks otherwise (some images shrinking both ways) the
// page's pixels differ by a few levels: the export's browser check measures that on real images.
export function resize(img, w, h, filter, box = [0, 0, img.w, img.h]) {
  box = box.map(Math.fround);  // Pillow holds the box as C floats
  if (w === img.w && h === img.h && box[0] === 0 && box[1] === 0 && box[2] === img.w && box[3] === img.h) return img;
  if (filter === "nearest") return nearest(img, w, h, box);
  const needH = w !== img.w || box[0] !== 0 || box[2] !== w;
  const needV = h !== img.h || box[1] !== 0 || box[3] !== h;
  const horiz = coefficients(img.w, box[0], box[2], w, filter);
  const vert = coefficients(img.h, box[1], box[3], h, filter);
  const horizontalFirst = !(w >= Math.fround(box[2] - box[0]) && h < Math.fround(box[3] - box[1]));
  let src = img;
  if (horizontalFirst) {
    if (needH) src = needV ? pass(src, horiz, true, ...span(vert)) : pass(src, horiz, true, 0, src.h);
    return needV ? pass(src, vert, false, 0, src.w) : src;
  }
  if (needV) src = needH ? pass(src, vert, false, ...span(horiz)) : pass(src, vert, false, 0, src.w);
  return needH ? pass(src, horiz, true, 0, src.h) : src;
}

// Python's round(): halves to even.
function pyRound(v) {
  const f = Math.floor(v), d = v - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

function cropOf(img, left, top, size) {
  const out = image(size, size);
  for (let y = 0; y < size; y++) {
    for (let x = 0; x < size; x++) {
      const sx = x + left, sy = y + top, o = (y * size + x) * 3;
      if (sx < 0 || sy < 0 || sx >= img.w || sy >= img.h) continue;  // Pillow's crop pads with black
      for (let c = 0; c < 3; c++) out.data[o + c] = img.data[(sy * img.w + sx) * 3 + c];
    }
  }
  return out;
}

const WHOLE_RESIZE_ASPECT = 8;

function centreCrop(img, pre) {
  const { w: width, h: height } = img;
  const [short, long] = width <= height ? [width, height] : [height, width];
  const newLong = Math.max(pre.resize, Math.trunc(pre.resize * long / short));
  const [nw, nh] = width <= height ? [pre.resize, newLong] : [newLong, pre.resize];
  const left = Math.trunc(pyRound((nw - pre.crop) / 2.0)), top = Math.trunc(pyRound((nh - pre.crop) / 2.0));
  if (newLong <= WHOLE_RESIZE_ASPECT * pre.resize) {
    return cropOf(resize(img, nw, nh, pre.interpolation), left, top, pre.crop);
  }
  const sx = width / nw, sy = height / nh;
  const box = [left * sx, top * sy, Math.min(width, (left + pre.crop) * sx), Math.min(height, (top + pre.crop) * sy)];
  return resize(img, pre.crop, pre.crop, pre.interpolation, box);
}

function letterbox(img, pre) {
  const scale = pre.crop / Math.max(img.w, img.h);
  const nw = Math.min(pre.crop, Math.max(1, pyRound(img.w * scale)));
  const nh = Math.min(pre.crop, Math.max(1, pyRound(img.h * scale)));
  const small = resize(img, nw, nh, pre.interpolation);
  const pad = pre.mean.map((m) => Math.min(255, Math.max(0, pyRound(m * 255))));
  const out = image(pre.crop, pre.crop);
  for (let i = 0; i < pre.crop * pre.crop; i++) for (let c = 0; c < 3; c++) out.data[i * 3 + c] = pad[c];
  const ox = Math.floor((pre.crop - nw) / 2), oy = Math.floor((pre.crop - nh) / 2);
  for (let y = 0; y < nh; y++) out.data.set(small.data.subarray(y * nw * 3, (y + 1) * nw * 3), ((y + oy) * pre.crop + ox) * 3);
  return out;
}

function squash(img, pre) {
  if (img.h > WHOLE_RESIZE_ASPECT * pre.crop && img.w < pre.crop) img = resize(img, img.w, pre.crop, pre.interpolation);
  return resize(img, pre.crop, pre.crop, pre.interpolation);
}

// decode "draft": Pillow has libjpeg decode a JPEG at 1/2, 1/4 or 1/8 scale (the smallest that keeps both sides
// >= resize); a browser decodes every pixel, so the page averages scale x scale blocks instead: close to
// libjpeg's scaled IDCT, not equal (the export's browser check measures the difference on real images).
export function draftScale(w, h, pre) {
  const s = Math.min(Math.floor(w / pre.resize), Math.floor(h / pre.resize));
  return s >= 8 ? 8 : s >= 4 ? 4 : s >= 2 ? 2 : 1;
}

function blockMean(img, s) {
  const w = Math.ceil(img.w / s), h = Math.ceil(img.h / s), out = image(w, h);
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      const y1 = Math.min(img.h, (y + 1) * s), x1 = Math.min(img.w, (x + 1) * s);
      const n = (y1 - y * s) * (x1 - x * s);
      for (let c = 0; c < 3; c++) {
        let sum = 0;
        for (let yy = y * s; yy < y1; yy++) for (let xx = x * s; xx < x1; xx++) sum += img.data[(yy * img.w + xx) * 3 + c];
        out.data[(y * w + x) * 3 + c] = Math.floor((sum + n / 2) / n);
      }
    }
  }
  return out;
}

// RGBA (a canvas's ImageData) -> Preprocess.resize_crop's uint8 crop x crop x 3 (HWC). jpeg: the bytes were a
// JPEG (decode "draft" applies to JPEGs only).
export function pixels(rgba, w, h, pre, jpeg = false) {
  let img = image(w, h);
  for (let i = 0; i < w * h; i++) {
    const a = rgba[i * 4 + 3];
    for (let c = 0; c < 3; c++) img.data[i * 3 + c] = a === 255 ? rgba[i * 4 + c] : onWhite(rgba[i * 4 + c], a);
  }
  const scale = jpeg && pre.decode === "draft" ? draftScale(w, h, pre) : 1;
  if (scale > 1) img = blockMean(img, scale);
  const fit = { crop: centreCrop, letterbox, squash }[pre.fit];
  if (!fit) throw new Error(`preprocess.fit ${pre.fit}: this page knows crop, letterbox and squash`);
  return fit(img, pre).data;
}

// Pillow's alpha_composite of (v, a) over opaque white (libImaging/AlphaComposite.c, 7 bits of precision).
function onWhite(v, a) {
  if (a === 0) return 255;
  const outa255 = a * 255 + 255 * (255 - a);
  const coef1 = Math.floor(a * 255 * 255 * 128 / outa255), coef2 = 255 * 128 - coef1;
  const t = v * coef1 + 255 * coef2 + (0x80 << 7);
  return Math.floor((Math.floor(t / 256) + t) / 256) >> 7;
}

export function normalize(px, pre) {
  const n = pre.crop * pre.crop, x = new Float32Array(3 * n);
  const inv = Math.fround(1.0 / 255.0);
  for (let c = 0; c < 3; c++) {
    const mean = Math.fround(pre.mean[c]), std = Math.fround(pre.std[c]);
    for (let i = 0; i < n; i++) x[c * n + i] = Math.fround(Math.fround(Math.fround(px[i * 3 + c] * inv) - mean) / std);
  }
  return x;
}

export async function decode(blob) {
  const head = new Uint8Array(await blob.slice(0, 3).arrayBuffer());
  const jpeg = head[0] === 0xff && head[1] === 0xd8 && head[2] === 0xff;
  const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none",
                                                 imageOrientation: "from-image" });
  const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
  const ctx = canvas.getContext("2d", { willReadFrequently: true });
  ctx.drawImage(bitmap, 0, 0);
  const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
  bitmap.close();
  return { rgba: data, w: canvas.width, h: canvas.height, jpeg };
}

export function scores(logits, meta, k = 5) {
  const t = meta.temperature || 1.0;
  const x = Array.from(logits, (v) => v / t);
  const top = Math.max(...x);
  const e = x.map((v) => Math.exp(v - top)), sum = e.reduce((a, b) => a + b, 0);
  const probs = e.map((v) => v / sum);
  const order = probs.map((p, i) => [p, i]).sort((a, b) => b[0] - a[0]).slice(0, k);
  const result = { top: order.map(([p, i]) => ({ label: String(meta.labels[i]), score: p })), accepted: true };
  if (meta.ood) {
    const score = meta.ood.score === "energy" ? top + Math.log(sum) : order[0][0];
    result.ood_score = score;
    result.accepted = score >= meta.ood.threshold;
  }
  // the Predictor's words (Predictions.text): "rose 0.97", or "unknown (best guess: rose 0.41)"
  const best = result.top.length ? `${result.top[0].label} ${result.top[0].score.toFixed(2)}` : "-";
  result.answer = result.accepted ? best : `unknown (best guess: ${best})`;
  return result;
}

// Everything the page does for one image: decode, preprocess, infer, score.
export async function classify(session, meta, blob, k = 5) {
  const { rgba, w, h, jpeg } = await decode(blob);
  const pre = meta.preprocess;
  const x = normalize(pixels(rgba, w, h, pre, jpeg), pre);
  const feed = { input: new session.ort.Tensor("float32", x, [1, 3, pre.crop, pre.crop]) };
  const out = await session.run(feed);
  return scores(out.logits.data, meta, k);
}

export async function load(ort, url, options = {}) {
  const bytes = new Uint8Array(await (await fetch(url)).arrayBuffer());
  const meta = contractOf(readMetadata(bytes));
  const session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"], ...options });
  session.ort = ort;
  return { session, meta };
}
