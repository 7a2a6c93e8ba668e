// namegen's sampler in the browser: the one-step ONNX graph run by onnxruntime-web (wasm).
//
// It follows namegen/sampling.py and NameGenerator (namegen/api.py) step for step: every name
// starts from the model's start token ('.' = 1, or padding = 0 for notebook models); the prefix
// is forced character by character; padding is never drawn; the end token is masked until
// min_len characters and forced at max_len; temperature divides the logits, top-k keeps the
// scores >= the k-th largest. A name's log-probability is under the model at temperature 1,
// prefix and end token included, so it equals -NameGenerator.score(name). "unique" and
// "exclude" (new names only) resample in rounds, at most 20 x n + 1000 draws, as
// NameGenerator does.

import * as ort from "./ort/ort.wasm.bundle.min.mjs";
import { ModelError, checkMeta, limitProblems } from "./checks.js";

ort.env.wasm.numThreads = 1; // no SharedArrayBuffer, so no cross-origin isolation headers needed
ort.env.logLevel = "error";

export { ModelError as SamplerError };

export class Sampler {
  constructor(session, meta) {
    this.session = session;
    this.meta = meta;
    this.chars = meta.vocab;
    this.stoi = new Map(meta.vocab.map((c, i) => [c, i + 2]));
    this.V = meta.vocab.length + 2;
    this.pad = meta.pad_token;
    this.end = meta.end_token;
    this.start = meta.start_token;
    this.nLayer = meta.n_layer;
    this.hidden = meta.hidden;
    this.blockSize = meta.block_size || 20;
    this.title = meta.case === "title"; // learned in lower case, shown capitalised (namegen.data.case_of)
  }

  /** Load model.json and model.onnx from `base` (a URL of the site's directory). */
  static async load(base) {
    const metaUrl = new URL("model.json", base);
    const response = await fetch(metaUrl);
    if (!response.ok) throw new ModelError(`model.json: ${response.status} ${response.statusText}`);
    let meta;
    try {
      meta = checkMeta(JSON.parse(await response.text()));
    } catch (err) {
      throw err instanceof ModelError ? err : new ModelError(`model.json is not valid JSON: ${err.message || err}`);
    }
    const model = await fetch(new URL("model.onnx", base));
    if (!model.ok) throw new ModelError(`model.onnx: ${model.status} ${model.statusText}`);
    const bytes = new Uint8Array(await model.arrayBuffer());
    let session;
    try {
      session = await ort.InferenceSession.create(bytes, { executionProviders: ["wasm"] });
    } catch (err) {
      throw new ModelError(`model.onnx could not be read by onnxruntime-web: ${err.message || err}`);
    }
    return new Sampler(session, meta);
  }

  /** One step for m names: tokens (m ids), h (n_layer*m*hidden) -> {logits (m*V), h (n_layer*m*hidden)}. */
  async step(tokens, h, m) {
    const feeds = {
      token: new ort.Tensor("int64", BigInt64Array.from(tokens, (t) => BigInt(t)), [m]),
      h: new ort.Tensor("float32", h, [this.nLayer, m, this.hidden]),
    };
    const out = await this.session.run(feeds);
    return { logits: out.logits.data, h: out.h_next.data };
  }

  encode(text) {
    return Array.from(text, (c) => this.stoi.get(c));
  }

  decode(ids) {
    return ids.map((i) => this.chars[i - 2]).join("");
  }

  /** NameGenerator.learned_form: lower case where the model learned it, or where only the lower case is known. */
  learnedForm(text) {
    return Array.from(text, (c) => {
      const low = c.toLowerCase();
      const single = Array.from(low).length === 1;
      return single && (this.title || !this.stoi.has(c)) && this.stoi.has(low) ? low : c;
    }).join("");
  }

  /** namegen.data.shown: a name as the user sees it (capitalised parts under "title"). */
  shown(name) {
    if (!this.title) return name;
    const chars = Array.from(name);
    return chars.map((c, i) => {
      const up = c.toUpperCase();
      return (i === 0 || chars[i - 1] === " " || chars[i - 1] === "-") && Array.from(up).length === 1 ? up : c;
    }).join("");
  }

  unknownChars(text) {
    return [...new Set(Array.from(text).filter((c) => !this.stoi.has(c)))].sort();
  }

  /** Per-name negative log-likelihood (nats), end token included: NameGenerator.score. */
  async score(names) {
    if (!names.length) return [];
    names = names.map((name) => this.learnedForm(name));
    for (const name of names) {
      const unknown = this.unknownChars(name);
      if (unknown.length || !name) {
        throw new ModelError(`cannot score ${JSON.stringify(name)}: characters not in the vocabulary: ` +
          JSON.stringify(unknown.join("")));
      }
    }
    const ids = names.map((name) => this.encode(name));
    const B = names.length;
    const T = Math.max(...ids.map((x) => x.length)) + 1;
    let h = new Float32Array(this.nLayer * B * this.hidden);
    const nll = new Array(B).fill(0);
    for (let t = 0; t < T; t++) {
      const tokens = ids.map((x) => (t === 0 ? this.start : t <= x.length ? x[t - 1] : this.end));
      const out = await this.step(tokens, h, B);
      h = out.h;
      for (let i = 0; i < B; i++) {
        if (t > ids[i].length) continue; // this name has ended: no target
        const target = t < ids[i].length ? ids[i][t] : this.end;
        nll[i] -= logSoftmaxAt(out.logits, i * this.V, this.V, target);
      }
    }
    return nll;
  }

  /** NameGenerator._check, with the page's parameter names. */
  check({ n, temperature, topK, prefix, maxLen, minLen }) {
    const problems = limitProblems({ n: null, maxLen }); // n is the caller's (the page caps a link's)
    if (!(Number.isInteger(n) && n > 0)) problems.push(`n must be a positive integer, got ${n}`);
    if (!(temperature > 0)) problems.push(`temperature must be greater than 0, got ${temperature}`);
    const nChars = this.V - 1; // every token but padding can be sampled
    if (topK !== null && !(Number.isInteger(topK) && topK >= 1 && topK <= nChars)) {
      problems.push(`top-k must be between 1 and ${nChars} (this model's vocabulary), got ${topK}`);
    }
    const unknown = this.unknownChars(prefix);
    if (unknown.length) {
      problems.push(`prefix: ${JSON.stringify(unknown.join(""))} not in this model's vocabulary ` +
        `(${JSON.stringify(this.chars.join(""))})`);
    }
    const plen = Array.from(prefix).length;
    if (!Number.isInteger(minLen) || !Number.isInteger(maxLen) || minLen < 0 || maxLen < 1 ||
        maxLen < Math.max(minLen, plen, 1)) {
      problems.push(`max length ${maxLen} must be at least 1, the min length ${minLen} and the prefix length ${plen}`);
    }
    if (problems.length) throw new ModelError(problems.join("; "));
  }

  /**
   * Sample names: NameGenerator.sample_with_logprob. opts: n, temperature (1), topK (null), prefix (""),
   * maxLen (block_size), minLen (1), unique (false), exclude (a Set, or null), seed (null: random),
   * maxDraws (20 n + 1000), batchSize (8192). Returns {names: [{name, logprob}], draws, shortfall}
   * where shortfall is null or a message saying how many were found (as NotEnoughNames).
   */
  async generate(opts = {}) {
    const o = {
      n: 20, temperature: 1.0, topK: null, prefix: "", maxLen: null, minLen: 1, unique: false,
      exclude: null, seed: null, maxDraws: null, batchSize: 8192, ...opts,
    };
    if (o.maxLen === null || o.maxLen === undefined) o.maxLen = this.blockSize;
    const typed = Array.from(o.prefix);
    o.prefix = this.learnedForm(o.prefix);
    this.check(o);
    const rng = makeRng(o.seed);
    const prefixIds = this.encode(o.prefix);
    const asTyped = (name) => (typed.join("") === o.prefix ? name : typed.join("") + Array.from(name).slice(typed.length).join(""));
    const draw = async (k) => {
      const { ids, logprob } = await this.sampleIds(k, { ...o, minLen: Math.max(o.minLen, 1), prefixIds, rng });
      return ids.map((row, i) => ({ name: asTyped(this.shown(this.decode(row))), logprob: logprob[i] }));
    };
    if (!o.unique && !o.exclude) {
      const names = [];
      for (let start = 0; start < o.n; start += o.batchSize) names.push(...(await draw(Math.min(o.batchSize, o.n - start))));
      return { names, draws: o.n, shortfall: null };
    }
    return drawFiltered(draw, o);
  }

  /** namegen.sampling.sample_ids: n names as id lists (end token stripped) and their log-probabilities. */
  async sampleIds(n, { maxLen, minLen, temperature, topK, prefixIds, rng }) {
    let rows = Array.from({ length: n }, (_, i) => i); // which of the n names each live row is
    let tokens = new Array(n).fill(this.start);
    let h = new Float32Array(this.nLayer * n * this.hidden);
    const logprob = new Float64Array(n);
    const ids = Array.from({ length: n }, () => []);
    for (let t = 0; t <= maxLen; t++) {
      const m = rows.length;
      const out = await this.step(tokens, h, m);
      const going = [];
      const next = [];
      for (let i = 0; i < m; i++) {
        const c = t < prefixIds.length ? prefixIds[t]
          : this.draw(out.logits, i * this.V, t, maxLen, minLen, temperature, topK, rng);
        logprob[rows[i]] += logSoftmaxAt(out.logits, i * this.V, this.V, c);
        if (c !== this.end) {
          if (t < maxLen) ids[rows[i]].push(c);
          going.push(i);
          next.push(c);
        }
      }
      if (!going.length) break;
      h = going.length === m ? out.h : this.keepRows(out.h, m, going);
      rows = going.map((i) => rows[i]);
      tokens = next;
    }
    return { ids, logprob: Array.from(logprob) };
  }

  /** The state rows `keep` of h (n_layer, m, hidden). */
  keepRows(h, m, keep) {
    const H = this.hidden;
    const out = new Float32Array(this.nLayer * keep.length * H);
    for (let l = 0; l < this.nLayer; l++) {
      keep.forEach((i, j) => out.set(h.subarray((l * m + i) * H, (l * m + i + 1) * H), (l * keep.length + j) * H));
    }
    return out;
  }

  /** namegen.sampling._draw for one name: the next token from logits[off .. off+V). */
  draw(logits, off, t, maxLen, minLen, temperature, topK, rng) {
    const V = this.V;
    const scores = new Float64Array(V);
    for (let j = 0; j < V; j++) scores[j] = Math.fround(logits[off + j] / temperature);
    scores[this.pad] = -Infinity; // padding is never sampled
    if (t < minLen) scores[this.end] = -Infinity; // too short to end
    if (t === maxLen) { // out of room: the name ends here
      scores.fill(-Infinity);
      scores[this.end] = 0;
    }
    if (topK !== null && topK < V) {
      const kth = Float64Array.from(scores).sort().reverse()[topK - 1];
      for (let j = 0; j < V; j++) if (scores[j] < kth) scores[j] = -Infinity;
    }
    let max = -Infinity;
    for (let j = 0; j < V; j++) max = Math.max(max, scores[j]);
    const p = new Float64Array(V);
    let total = 0;
    for (let j = 0; j < V; j++) { p[j] = Math.exp(scores[j] - max); total += p[j]; }
    let u = rng() * total;
    let last = -1;
    for (let j = 0; j < V; j++) {
      if (p[j] <= 0) continue;
      last = j;
      u -= p[j];
      if (u < 0) return j;
    }
    return last; // u rounded past the end: the last token with any probability
  }
}

/** NameGenerator's _draw_filtered: drop repeats (unique) and excluded names, in bounded rounds. */
async function drawFiltered(draw, o) {
  const limit = o.maxDraws ?? 20 * o.n + 1000;
  if (limit < o.n) throw new ModelError(`max draws must be at least n (${o.n}), got ${limit}`);
  const exclude = o.exclude || new Set();
  const seen = new Set();
  const names = [];
  let draws = 0;
  while (names.length < o.n && draws < limit) {
    const k = Math.min(o.batchSize, limit - draws, Math.max(2 * (o.n - names.length), 256));
    draws += k;
    for (const item of await draw(k)) {
      if (exclude.has(item.name) || (o.unique && seen.has(item.name))) continue;
      seen.add(item.name);
      names.push(item);
      if (names.length === o.n) break;
    }
  }
  let shortfall = null;
  if (names.length < o.n) {
    const wanted = [o.unique && "distinct", exclude.size && "new"].filter(Boolean).join(" and ") || "allowed";
    shortfall = `only ${names.length} of ${o.n} ${wanted} names after ${draws} draws; ask for fewer, or loosen ` +
      "the length bounds, prefix, top-k or temperature";
  }
  return { names, draws, shortfall };
}

/** log_softmax(logits[off .. off+V))[target], in float64. */
export function logSoftmaxAt(logits, off, V, target) {
  let max = -Infinity;
  for (let j = 0; j < V; j++) max = Math.max(max, logits[off + j]);
  let sum = 0;
  for (let j = 0; j < V; j++) sum += Math.exp(logits[off + j] - max);
  return logits[off + target] - max - Math.log(sum);
}

/** A uniform [0, 1) generator: seeded (mulberry32) when seed is a number, else from crypto. */
export function makeRng(seed) {
  let a = seed === null || seed === undefined || Number.isNaN(seed)
    ? crypto.getRandomValues(new Uint32Array(1))[0] : seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}
