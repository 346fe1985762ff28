// isacir edge runtime for the browser: photo -> pseudo tokens -> token payload, on this device.
//
// The same steps as the Python edge runner (isacir.edge.runner), so the tokens match it within
// the export's parity tolerance:
//   * preprocessing replays Pillow: resize of the short side with Pillow's bicubic resampling
//     (its fixed-point two-pass filter, so pixels match byte for byte), centre crop, /255, and
//     normalisation in float32;
//   * the light model runs in ONNX Runtime Web (WebAssembly, one thread);
//   * the payload is the ISAT binary format, byte for byte what isacir.edge.payload writes.
// The photo never leaves the browser: only the payload is sent.
(function (root) {
  "use strict";

  // ----- the token payload (isacir.edge.payload) ----------------------------------------------
  const DTYPES = { fp16: 1, int8: 2, int4: 3 };
  const CRC_TABLE = (() => {
    const t = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      t[n] = c >>> 0;
    }
    return t;
  })();

  function crc32(bytes) {
    let c = 0xffffffff;
    for (let i = 0; i < bytes.length; i++) c = CRC_TABLE[(c ^ bytes[i]) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  }

  // float32 -> IEEE half, round half to even (what NumPy's astype("<f2") does)
  const f32 = new Float32Array(1);
  const u32 = new Uint32Array(f32.buffer);
  function toHalf(value) {
    f32[0] = value;
    const x = u32[0];
    const sign = (x >>> 16) & 0x8000;
    const exp = (x >>> 23) & 0xff;
    let mant = x & 0x7fffff;
    if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
    const e = exp - 127 + 15;
    if (e >= 0x1f) throw new Error("token values overflow fp16; use int8");
    if (e <= 0) {
      if (e < -10) return sign;
      mant |= 0x800000;
      const shift = 14 - e;
      let half = mant >>> shift;
      const rest = mant & ((1 << shift) - 1);
      const mid = 1 << (shift - 1);
      if (rest > mid || (rest === mid && half & 1)) half += 1;
      return sign | half;
    }
    let half = (e << 10) | (mant >>> 13);
    const rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest === 0x1000 && half & 1)) half += 1;
    if ((half & 0x7fff) >= 0x7c00) throw new Error("token values overflow fp16; use int8");
    return sign | half;
  }

  // NumPy's np.round: half to even
  function roundHalfEven(v) {
    const r = Math.round(v);
    return Math.abs(v % 1) === 0.5 && r % 2 !== 0 ? r - 1 : r;
  }

  function encodePayload(tokens, n, d, fingerprint, dtype = "fp16") {
    if (!(dtype in DTYPES)) throw new Error(`dtype must be fp16, int8 or int4, got ${dtype}`);
    if (!/^[0-9a-f]{16}$/.test(fingerprint)) throw new Error("fingerprint must be 16 lowercase hex characters");
    if (tokens.length !== n * d) throw new Error(`expected ${n}x${d} tokens, got ${tokens.length} values`);
    const scalesLen = dtype === "fp16" ? 0 : 4 * n;
    const dataLen = dtype === "fp16" ? 2 * n * d : dtype === "int8" ? n * d : Math.floor((n * d + 1) / 2);
    const size = 26 + scalesLen + dataLen + 4;
    const buf = new ArrayBuffer(size);
    const view = new DataView(buf);
    const bytes = new Uint8Array(buf);
    bytes.set([0x49, 0x53, 0x41, 0x54], 0); // "ISAT"
    view.setUint8(4, 1);
    view.setUint8(5, DTYPES[dtype]);
    view.setUint16(6, n, true);
    view.setUint16(8, d, true);
    for (let i = 0; i < 16; i++) bytes[10 + i] = fingerprint.charCodeAt(i);
    let off = 26;
    if (dtype === "fp16") {
      for (let i = 0; i < n * d; i++, off += 2) view.setUint16(off, toHalf(tokens[i]), true);
    } else {
      const levels = dtype === "int8" ? 127 : 7;
      const q = new Int8Array(n * d);
      for (let t = 0; t < n; t++) {
        let max = 0;
        for (let j = 0; j < d; j++) max = Math.max(max, Math.abs(tokens[t * d + j]));
        let scale = Math.fround(max / levels);
        if (scale === 0) scale = 1;
        view.setFloat32(off + 4 * t, scale, true);
        for (let j = 0; j < d; j++) {
          const v = roundHalfEven(Math.fround(tokens[t * d + j] / scale));
          q[t * d + j] = Math.max(-levels, Math.min(levels, v));
        }
      }
      off += scalesLen;
      if (dtype === "int8") {
        bytes.set(new Uint8Array(q.buffer), off);
      } else {
        for (let i = 0; i < n * d; i += 2) {
          const lo = q[i] & 0x0f;
          const hi = i + 1 < n * d ? q[i + 1] & 0x0f : 0;
          bytes[off + i / 2] = lo | (hi << 4);
        }
      }
    }
    view.setUint32(size - 4, crc32(bytes.subarray(0, size - 4)), true);
    return bytes;
  }

  // ----- preprocessing (isacir.edge.runner.preprocess_image, i.e. Pillow) --------------------
  const PRECISION_BITS = 32 - 8 - 2;
  const FILTERS = {
    bicubic: { support: 2.0, f: (x) => {
      const a = -0.5;
      x = Math.abs(x);
      if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
      if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
      return 0.0;
    } },
    bilinear: { support: 1.0, f: (x) => { x = Math.abs(x); return x < 1.0 ? 1.0 - x : 0.0; } },
    nearest: null,
  };

  // Pillow's precompute_coeffs + normalize_coeffs_8bpc (Resample.c)
  function coeffs(inSize, outSize, filter) {
    const scale = inSize / outSize;
    const filterscale = Math.max(scale, 1.0);
    const support = filter.support * filterscale;
    const ksize = Math.ceil(support) * 2 + 1;
    const kk = new Int32Array(outSize * ksize);
    const bounds = new Int32Array(outSize * 2);
    const w = new Float64Array(ksize);
    for (let xx = 0; xx < outSize; xx++) {
      const center = (xx + 0.5) * scale;
      const ss = 1.0 / filterscale;
      let xmin = Math.trunc(center - support + 0.5);
      if (xmin < 0) xmin = 0;
      let xmax = Math.trunc(center + support + 0.5);
      if (xmax > inSize) xmax = inSize;
      xmax -= xmin;
      let ww = 0.0;
      for (let x = 0; x < xmax; x++) {
        w[x] = filter.f((x + xmin - center + 0.5) * ss);
        ww += w[x];
      }
      for (let x = 0; x < ksize; x++) {
        const k = x < xmax && ww !== 0.0 ? w[x] / ww : x < xmax ? w[x] : 0;
        kk[xx * ksize + x] = k < 0 ? Math.trunc(-0.5 + k * (1 << PRECISION_BITS)) : Math.trunc(0.5 + k * (1 << PRECISION_BITS));
      }
      bounds[xx * 2] = xmin;
      bounds[xx * 2 + 1] = xmax;
    }
    return { ksize, kk, bounds };
  }

  function clip8(v) {
    if (v >= 2 ** (PRECISION_BITS + 8)) return 255;
    if (v <= 0) return 0;
    return Math.floor(v / (1 << PRECISION_BITS));
  }

  // RGB (3 bytes per pixel) -> RGB, Pillow's two passes: horizontal over the rows the vertical
  // pass reads, then vertical; each pass rounds to 8 bits.
  function resize(rgb, w, h, ow, oh, interpolation) {
    const filter = FILTERS[interpolation];
    if (filter === undefined) throw new Error(`unknown interpolation ${interpolation}`);
    if (filter === null) {
      const out = new Uint8Array(ow * oh * 3);
      for (let y = 0; y < oh; y++) {
        const sy = Math.min(h - 1, Math.floor((y + 0.5) * h / oh));
        for (let x = 0; x < ow; x++) {
          const sx = Math.min(w - 1, Math.floor((x + 0.5) * w / ow));
          for (let c = 0; c < 3; c++) out[(y * ow + x) * 3 + c] = rgb[(sy * w + sx) * 3 + c];
        }
      }
      return out;
    }
    const horiz = coeffs(w, ow, filter);
    const vert = coeffs(h, oh, filter);
    const needH = ow !== w;
    const needV = oh !== h;
    let src = rgb, sw = w, sh = h, yFirst = 0;
    if (needH) {
      yFirst = needV ? vert.bounds[0] : 0;
      const yLast = needV ? vert.bounds[oh * 2 - 2] + vert.bounds[oh * 2 - 1] : h;
      const rows = yLast - yFirst;
      const tmp = new Uint8Array(ow * rows * 3);
      for (let y = 0; y < rows; y++) {
        for (let xx = 0; xx < ow; xx++) {
          const xmin = horiz.bounds[xx * 2], xmax = horiz.bounds[xx * 2 + 1], k0 = xx * horiz.ksize;
          for (let c = 0; c < 3; c++) {
            let ss = 1 << (PRECISION_BITS - 1);
            for (let x = 0; x < xmax; x++) ss += src[((y + yFirst) * w + x + xmin) * 3 + c] * horiz.kk[k0 + x];
            tmp[(y * ow + xx) * 3 + c] = clip8(ss);
          }
        }
      }
      src = tmp; sw = ow; sh = rows;
    }
    if (!needV) return src;
    const out = new Uint8Array(sw * oh * 3);
    for (let yy = 0; yy < oh; yy++) {
      const ymin = vert.bounds[yy * 2] - (needH ? yFirst : 0), ymax = vert.bounds[yy * 2 + 1], k0 = yy * vert.ksize;
      for (let x = 0; x < sw; x++) {
        for (let c = 0; c < 3; c++) {
          let ss = 1 << (PRECISION_BITS - 1);
          for (let y = 0; y < ymax; y++) ss += src[((y + ymin) * sw + x) * 3 + c] * vert.kk[k0 + y];
          out[(yy * sw + x) * 3 + c] = clip8(ss);
        }
      }
    }
    return out;
  }

  // RGBA from a canvas -> normalised [3, S, S] float32 pixels, as the Python runner makes them
  function preprocess(rgba, w, h, spec) {
    const rgb = new Uint8Array(w * h * 3);
    for (let i = 0, j = 0; i < w * h; i++) {
      const a = rgba[i * 4 + 3];
      for (let c = 0; c < 3; c++, j++) {
        // transparent pixels over white, as isacir.data.imageio.to_rgb does
        rgb[j] = a === 255 ? rgba[i * 4 + c] : Math.round((rgba[i * 4 + c] * a + 255 * (255 - a)) / 255);
      }
    }
    const size = spec.image_size;
    const short = roundHalfEven(size / (spec.crop_pct ?? 1.0));
    let nw, nh;
    if (w <= h) { nw = short; nh = Math.trunc(short * h / w); } else { nw = Math.trunc(short * w / h); nh = short; }
    const resized = nw !== w || nh !== h ? resize(rgb, w, h, nw, nh, spec.interpolation || "bicubic") : rgb;
    const top = roundHalfEven((nh - size) / 2.0), left = roundHalfEven((nw - size) / 2.0);
    const mean = spec.mean.map(Math.fround), std = spec.std.map(Math.fround);
    const out = new Float32Array(3 * size * size);
    for (let y = 0; y < size; y++) {
      for (let x = 0; x < size; x++) {
        const sy = y + top, sx = x + left;
        for (let c = 0; c < 3; c++) {
          const inside = sy >= 0 && sy < nh && sx >= 0 && sx < nw;
          const v = inside ? resized[(sy * nw + sx) * 3 + c] : 0; // Pillow's crop pads with black
          const unit = Math.fround(v / 255);
          out[c * size * size + y * size + x] = Math.fround(Math.fround(unit - mean[c]) / std[c]);
        }
      }
    }
    return out;
  }

  // ----- the model ----------------------------------------------------------------------------
  async function decodeImage(blob) {
    const bitmap = await createImageBitmap(blob, { colorSpaceConversion: "none", premultiplyAlpha: "none" });
    const canvas = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = canvas.getContext("2d", { willReadFrequently: true });
    ctx.drawImage(bitmap, 0, 0);
    const data = ctx.getImageData(0, 0, bitmap.width, bitmap.height).data;
    const out = { rgba: data, width: bitmap.width, height: bitmap.height };
    bitmap.close();
    return out;
  }

  class EdgeModel {
    constructor(session, config, manifest) {
      this.session = session;
      this.config = config;
      this.manifest = manifest;
    }

    // fetchBytes(path) -> ArrayBuffer, with the caller's API key
    static async load(manifest, fetchBytes) {
      const ort = root.ort;
      if (!ort || typeof WebAssembly !== "object") throw new Error("this browser cannot run WebAssembly");
      ort.env.wasm.wasmPaths = "/ui/vendor/";
      ort.env.wasm.numThreads = 1; // threads need cross-origin isolation; one is what devices use
      const base = `/v1/edge/files/${encodeURIComponent(manifest.version)}/`;
      const config = JSON.parse(new TextDecoder().decode(await fetchBytes(base + "edge.json")));
      if (config.query_encoder_fingerprint !== manifest.fingerprint) {
        throw new Error("the edge package does not belong to the manifest's version");
      }
      const model = await fetchBytes(base + config.files.fp32);
      const session = await ort.InferenceSession.create(model, { executionProviders: ["wasm"] });
      return new EdgeModel(session, config, manifest);
    }

    async tokens(blob) {
      const img = await decodeImage(blob);
      const spec = this.config.preprocess;
      const pixels = preprocess(img.rgba, img.width, img.height, spec);
      const t0 = performance.now();
      const input = new root.ort.Tensor("float32", pixels, [1, 3, spec.image_size, spec.image_size]);
      const out = await this.session.run({ pixels: input });
      const ms = performance.now() - t0;
      return { tokens: out.tokens.data, n: this.config.num_tokens, d: this.config.word_dim, encodeMs: ms };
    }

    async payload(blob, dtype = "fp16") {
      const t = await this.tokens(blob);
      const bytes = encodePayload(t.tokens, t.n, t.d, this.config.query_encoder_fingerprint, dtype);
      return { ...t, bytes };
    }
  }

  function toBase64(bytes) {
    let s = "";
    for (let i = 0; i < bytes.length; i += 0x8000) s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    return btoa(s);
  }

  root.IsacirEdge = { encodePayload, preprocess, resize, crc32, toHalf, EdgeModel, toBase64, decodeImage };
})(typeof window !== "undefined" ? window : globalThis);
