// The page: settings from the form and the URL query, names into <ol id="names">.
// window.namegen = { ready, sampler, generate(opts), score(names), trainingNames(), timings }.

import { Sampler } from "./sampler.js";
import { limitProblems } from "./checks.js";

const $ = (id) => document.getElementById(id);
const BASE = new URL(".", document.baseURI);
// query parameter -> [form field, kind]
const PARAMS = {
  n: ["n", "int"], temperature: ["temperature", "float"], top_k: ["top_k", "int"], prefix: ["prefix", "text"],
  min_len: ["min_len", "int"], max_len: ["max_len", "int"], new: ["new", "bool"], unique: ["unique", "bool"],
  seed: [null, "int"],
};
const api = { sampler: null, timings: {}, seed: null };
window.namegen = api;
let trainingNames = null;

function setStatus(text, error = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", error);
  el.setAttribute("role", error ? "alert" : "status");
}

/** The query's settings into the form (a link shares a configuration). */
function applyQuery(query) {
  for (const [key, [field, kind]] of Object.entries(PARAMS)) {
    if (!query.has(key)) continue;
    const value = query.get(key);
    if (field === null) api.seed = value === "" ? null : Number(value);
    else if (kind === "bool") $(field).checked = ["1", "true", "yes", "on"].includes(value.toLowerCase());
    else $(field).value = value;
  }
}

function number(field, kind) {
  const text = $(field).value.trim();
  if (text === "") return null;
  return kind === "int" ? Number(text) : parseFloat(text);
}

/** The form's settings, as Sampler.generate options. */
function formOptions() {
  return {
    n: number("n", "int") ?? 20, temperature: number("temperature", "float") ?? 1, topK: number("top_k", "int"),
    prefix: $("prefix").value.trim(), minLen: number("min_len", "int") ?? 1, maxLen: number("max_len", "int"),
    unique: $("unique").checked, newOnly: $("new").checked, seed: api.seed,
  };
}

function shareUrl() {
  const query = new URLSearchParams();
  for (const [key, [field, kind]] of Object.entries(PARAMS)) {
    if (field === null) { if (api.seed !== null) query.set(key, api.seed); continue; }
    if (kind === "bool") { if ($(field).checked) query.set(key, "1"); continue; }
    if ($(field).value.trim() !== "") query.set(key, $(field).value.trim());
  }
  return `${location.origin}${location.pathname}?${query}`;
}

async function loadTrainingNames() {
  if (trainingNames === null) {
    const file = api.sampler.meta.training_names;
    const response = await fetch(new URL(file, BASE));
    if (!response.ok) throw new Error(`${file}: ${response.status} ${response.statusText}`);
    trainingNames = new Set((await response.text()).split("\n").filter((line) => line));
  }
  return trainingNames;
}

/** Generate with Sampler options plus newOnly (leave out the training names). */
async function generate(opts) {
  const { newOnly = false, ...rest } = opts;
  if (newOnly && !api.sampler.meta.training_names) throw new Error("this page has no training names");
  const exclude = newOnly ? await loadTrainingNames() : null;
  return api.sampler.generate({ ...rest, exclude });
}

function render(result) {
  const list = $("names");
  list.replaceChildren(...result.names.map(({ name, logprob }) => {
    const li = document.createElement("li");
    const span = document.createElement("span");
    span.className = "name";
    span.textContent = name;
    const lp = document.createElement("span");
    lp.className = "logprob";
    lp.textContent = logprob.toFixed(2);
    lp.title = "log-probability (nats)";
    li.dataset.logprob = String(logprob);
    li.append(span, lp);
    return li;
  }));
}

async function onGenerate(event) {
  event?.preventDefault();
  const started = performance.now();
  try {
    $("generate").disabled = true;
    // a seed for every generation (the link's, else a random one), kept in the URL: a copied link
    // shows the same names; the next click draws new ones
    if (api.seed === null || !Number.isFinite(api.seed)) api.seed = crypto.getRandomValues(new Uint32Array(1))[0];
    const opts = formOptions();
    const problems = limitProblems(opts); // a link can ask for 10^9 names
    if (problems.length) throw new Error(problems.join("; "));
    const result = await generate(opts);
    render(result);
    api.timings.lastGenerateMs = performance.now() - started;
    setStatus(result.shortfall || "", Boolean(result.shortfall));
    history.replaceState(null, "", shareUrl());
  } catch (err) {
    setStatus(err.message || String(err), true);
  } finally {
    api.seed = null;
    $("generate").disabled = false;
    document.body.dataset.state = "done";
  }
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
    button.textContent = "Copied";
  } catch {
    button.textContent = "Copy failed";
  }
  setTimeout(() => { button.textContent = button.dataset.label; }, 1500);
}

function describe(meta) {
  const names = meta.training_names ? `${meta.n_training_names.toLocaleString()} training names` : "no training names";
  $("about").textContent = `Model: ${meta.size || "GRU"} (${meta.n_layer} layer${meta.n_layer > 1 ? "s" : ""} ` +
    `of ${meta.hidden}), ${meta.vocab.length} characters, ${names}; namegen ${meta.namegen_version}, ` +
    `onnxruntime-web ${meta.onnxruntime_web}.`;
  if (!meta.training_names) {
    $("new").disabled = true;
    $("new").checked = false;
    $("new-note").textContent = "(no training names shipped)";
  }
  if ($("max_len").value === "") $("max_len").placeholder = String(meta.block_size);
  $("top_k").max = String(meta.vocab.length + 1);
}

async function start() {
  applyQuery(new URLSearchParams(location.search));
  for (const id of ["copy", "share"]) $(id).dataset.label = $(id).textContent;
  try {
    api.sampler = await Sampler.load(BASE);
  } catch (err) {
    setStatus(`The model could not be loaded, so no names can be made: ${err.message || err}`, true);
    document.body.dataset.state = "error";
    throw err;
  }
  api.timings.readyMs = performance.now(); // since navigation started
  describe(api.sampler.meta);
  setStatus("");
  for (const id of ["generate", "copy", "share"]) $(id).disabled = false;
  $("controls").addEventListener("submit", onGenerate);
  $("copy").addEventListener("click", () =>
    copy([...document.querySelectorAll("#names .name")].map((el) => el.textContent).join("\n"), $("copy")));
  $("share").addEventListener("click", () => copy(location.href, $("share"))); // the shown names' link
  await onGenerate();
}

api.generate = async (opts) => {
  await api.ready;
  return generate(opts);
};
api.score = async (names) => {
  await api.ready;
  return api.sampler.score(names);
};
api.trainingNames = async () => {
  await api.ready;
  return [...(await loadTrainingNames())];
};
api.ready = start();
api.ready.catch(() => {}); // shown on the page; callers awaiting it still see the error
