// What the page reads from outside, checked before it is used: model.json (written by namegen export, but
// served from anywhere) and the limits of a generation (the URL query fills the form). Plain functions,
// no imports, so Node runs them too (tests/test_fuzz.py). A problem is a ModelError with one message.

export class ModelError extends Error {}

// the same limits as namegen's (namegen.config.LIMITS)
export const LIMITS = { n: 10000, maxLen: 10000, nLayer: 64, hidden: 16384, vocab: 100000 };

const isInt = (v, lo, hi) => Number.isInteger(v) && v >= lo && v <= hi;

/** model.json's fields, each checked; throws ModelError naming the first field that is wrong. */
export function checkMeta(meta) {
  const bad = (field, expected, value) => {
    const shown = JSON.stringify(value);
    throw new ModelError(`model.json: ${field} is ${shown === undefined ? "missing" : shown.slice(0, 40)}; ` +
      `expected ${expected} (export the page again with namegen export --web)`);
  };
  if (meta === null || typeof meta !== "object" || Array.isArray(meta)) bad("the file", "an object", meta);
  if (meta.format !== "namegen-gru-step/1") bad("format", '"namegen-gru-step/1"', meta.format);
  const vocab = meta.vocab;
  if (!Array.isArray(vocab) || vocab.length > LIMITS.vocab ||
      !vocab.every((c) => typeof c === "string" && Array.from(c).length === 1 && c !== ".") ||
      new Set(vocab).size !== vocab.length) {
    bad("vocab", "a list of distinct single characters", Array.isArray(vocab) ? `${vocab.length} entries` : vocab);
  }
  if (meta.pad_token !== 0) bad("pad_token", "0", meta.pad_token);
  if (meta.end_token !== 1) bad("end_token", "1", meta.end_token);
  if (meta.start_token !== 0 && meta.start_token !== 1) bad("start_token", "0 or 1", meta.start_token);
  if (!isInt(meta.n_layer, 1, LIMITS.nLayer)) bad("n_layer", `an integer from 1 to ${LIMITS.nLayer}`, meta.n_layer);
  if (!isInt(meta.hidden, 1, LIMITS.hidden)) bad("hidden", `an integer from 1 to ${LIMITS.hidden}`, meta.hidden);
  if (meta.vocab_size !== undefined && meta.vocab_size !== vocab.length + 2) {
    bad("vocab_size", `${vocab.length + 2} (the vocabulary and 2)`, meta.vocab_size);
  }
  if (meta.block_size != null && !isInt(meta.block_size, 1, LIMITS.maxLen)) {
    bad("block_size", `an integer from 1 to ${LIMITS.maxLen}`, meta.block_size);
  }
  if (meta.training_names != null && !(typeof meta.training_names === "string" &&
      /^[\w][\w.-]*$/.test(meta.training_names))) {
    bad("training_names", "the name of a file beside it", meta.training_names);
  }
  if (meta.training_names != null && !isInt(meta.n_training_names, 0, Number.MAX_SAFE_INTEGER)) {
    bad("n_training_names", "a count", meta.n_training_names);
  }
  if (meta.case != null && meta.case !== "title" && meta.case !== "as-is") bad("case", '"title" or "as-is"', meta.case);
  for (const key of ["size", "namegen_version", "onnxruntime_web"]) {
    if (meta[key] != null && (typeof meta[key] !== "string" || meta[key].length > 100)) bad(key, "a short text", meta[key]);
  }
  return meta;
}

/** The problems of a generation's size: n names of up to maxLen characters (a link can ask for 10^9);
 *  a null n or maxLen is not checked. */
export function limitProblems({ n, maxLen }) {
  const problems = [];
  if (Number.isFinite(n) && n > LIMITS.n) problems.push(`n is at most ${LIMITS.n}, got ${n}`);
  if (Number.isFinite(maxLen) && maxLen > LIMITS.maxLen) {
    problems.push(`max length is at most ${LIMITS.maxLen}, got ${maxLen}`);
  }
  return problems;
}
