// numgpt playground: draws what numgpt serve computed, and nothing else. Every probability, attention
// weight, kept set and count on the page is a number from the server's JSON (/v1/completions with
// echo + logprobs, /v1/chat/completions, /v1/explain/*); this file formats and colours them, it never
// recomputes them.
// Only the page's own origin is called (the page's Content-Security-Policy holds it to that).
"use strict";

const $ = (id) => document.getElementById(id);
const LOGPROBS = 5;                 // alternatives per position, asked of /v1/completions
const SETTINGS = ["temperature", "top_k", "top_p", "min_p", "repetition_penalty"];

const state = {
  key: sessionStorage.getItem("numgpt-key"),
  config: null,                     // /v1/explain/model: the model's shape
  byText: new Map(),                // token text -> ids with that text (to map logprobs' texts to ids)
  texts: [],                        // id -> token text (GET /v1/explain/model)
  eot: null,
  nodes: [],                        // the tree of generations: {n, parent, at, chosen, promptIds, tokens, kv, text}
  current: null,
  position: null,                   // the position the sampling view shows
  busy: 0,
  seen: {},                         // per view: the request last drawn (so a view redraws only when it changed)
  ticket: {},                       // per view: the latest request's number (late answers are dropped)
};

// ---- talking to the server -------------------------------------------------------------------------

async function api(path, body) {
  const headers = {"Content-Type": "application/json"};
  if (state.key) headers.Authorization = "Bearer " + state.key;
  setBusy(+1);
  try {
    const r = await fetch(path, body === undefined ? {headers} :
                          {method: "POST", headers, body: JSON.stringify(body)});
    const data = await r.json();
    if (!r.ok) {
      if (r.status === 401) askForKey("the server needs its API key: " + data.error.message);
      const e = new Error(data.error ? data.error.message : r.statusText);
      e.status = r.status;
      throw e;
    }
    return data;
  } finally {
    setBusy(-1);
  }
}

function setBusy(change) {
  state.busy += change;
  document.body.dataset.busy = String(state.busy);
}

function drawn() {
  // counts the views drawn: a reader (or a test) can wait for a drawing to finish
  document.body.dataset.drawn = String(Number(document.body.dataset.drawn || 0) + 1);
}

function say(message, isError = false) {
  const s = $("status");
  s.textContent = message;
  s.classList.toggle("error", isError);
}

// a view's request: only the latest one's answer is drawn
async function latest(view, call) {
  const ticket = (state.ticket[view] || 0) + 1;
  state.ticket[view] = ticket;
  try {
    const out = await call();
    return state.ticket[view] === ticket ? out : null;
  } catch (e) {
    if (state.ticket[view] === ticket) say(e.message, true);
    return null;
  }
}

function settings() {
  const out = {};
  for (const name of SETTINGS) out[name] = Number($(name).value);
  return out;
}

// ---- formatting ------------------------------------------------------------------------------------

const pct = (p) => (100 * p).toFixed(2) + "%";
const shown = (text) => JSON.stringify(text);          // a token's text, quoted, escapes visible

function visible(text) {
  // the token's text as it reads, with whitespace-only tokens made visible
  if (text === "\n") return "↵\n";
  if (/^\s+$/.test(text)) return text.replace(/ /g, "·").replace(/\n/g, "↵\n").replace(/\t/g, "→");
  return text;
}

function colour(p) {
  // probability -> background: red (unlikely) to green (likely), on a log scale so 1% and 10% differ
  if (p === null) return "var(--no-probability)";
  const x = Math.max(0, Math.min(1, 1 + Math.log10(Math.max(p, 1e-4)) / 4));  // 1e-4 -> 0, 1 -> 1
  return `hsl(${Math.round(120 * x)}, 70%, 82%)`;
}

function heat(w) {
  // attention weight -> cell colour: the square root spreads the small weights most rows are made of
  return `rgba(37, 99, 235, ${Math.sqrt(w).toFixed(3)})`;
}

function legend(label, entries) {
  // a row of labelled swatches drawn with the same colour function as the view it explains
  return el("div", {class: "legend", role: "img", "aria-label": label}, el("span", {class: "legend-label", text: label}),
    ...entries.map(([text, background]) => {
      const swatch = el("span", {class: "swatch", "data-label": text});
      swatch.style.background = background;
      return el("span", {class: "legend-entry"}, swatch, text);
    }));
}

const FRAGMENT = "a byte fragment: part of one character's UTF-8 bytes (shown as �); the tokens next to it complete it";

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") e.className = v;
    else if (k === "text") e.textContent = v;
    else if (k.startsWith("data-")) e.dataset[k.slice(5).replace(/-(\w)/g, (_, c) => c.toUpperCase())] = v;
    else e.setAttribute(k, v);
  }
  e.append(...children);
  return e;
}

// ---- generations and the tree of branches -------------------------------------------------------------

function idOf(text) {
  // the id of a token text from the API's logprobs; null when several tokens share the text (byte
  // fragments of a character, all shown as U+FFFD): OpenAI's text-keyed logprobs cannot tell them apart
  const ids = state.byText.get(text);
  return ids && ids.length === 1 ? ids[0] : null;
}

function numberOr(id) {
  // an input's number; an emptied box means its default (not 0)
  const input = $(id);
  return Number(input.value === "" ? input.defaultValue : input.value);
}

async function generate(promptIds, parent = null, at = null, chosen = null) {
  const body = {prompt: promptIds, max_tokens: numberOr("max_tokens"), echo: true, logprobs: LOGPROBS,
                ...($("seed").value === "" ? {} : {seed: Number($("seed").value)}), ...settings()};
  const request = JSON.stringify(body);
  const same = body.seed === undefined ? null : state.nodes.find((n) => n.parent === parent && n.request === request);
  if (same) {                            // the same seeded request gives the same text: no second copy
    say("the same prompt, settings and seed as a generation already in Branches: shown again");
    show(same, same.promptIds.length);
    return same;
  }
  say(parent === null ? "generating…" : `branching at position ${at} with ${shown(chosen)}…`);
  const r = await api("/v1/completions", body);
  const choice = r.choices[0];
  const lp = choice.logprobs;
  const P = promptIds.length;
  // numgpt's logprobs carry exact ids (token_ids, top_logprobs_by_id); OpenAI's text keys are the fallback
  const byId = lp.top_logprobs_by_id;
  const tokens = lp.tokens.map((text, i) => ({
    text, generated: i >= P, id: lp.token_ids ? lp.token_ids[i] : i < P ? promptIds[i] : idOf(text),
    logprob: lp.token_logprobs[i],
    top: lp.top_logprobs[i] === null ? [] : byId
      ? byId[i].map(([id, value]) => [state.texts[id], value, id])
      : Object.entries(lp.top_logprobs[i]).sort((a, b) => b[1] - a[1]).map(([t, v]) => [t, v, idOf(t)]),
  }));
  const kv = await api("/v1/explain/kvcache", {prompt_tokens: r.usage.prompt_tokens,
                                               completion_tokens: r.usage.completion_tokens});
  const node = {n: state.nodes.length, parent, at, chosen, promptIds, tokens, kv, text: choice.text,
                finish: choice.finish_reason, request};
  state.nodes.push(node);
  say(`${r.usage.prompt_tokens} prompt tokens, ${r.usage.completion_tokens} generated (${choice.finish_reason})`);
  show(node, P < tokens.length ? P : tokens.length);
  return node;
}

async function generateFromPrompt() {
  const text = $("prompt").value;
  try {
    let ids = (await api("/tokenize", {prompt: text})).tokens;
    if (!ids.length) {
      if (state.eot === null) return say("the prompt is empty and this tokenizer has no <|endoftext|>", true);
      ids = [state.eot];                 // as numgpt generate: an empty prompt starts from <|endoftext|>
    }
    await generate(ids);
  } catch (e) {
    say(e.message, true);
  }
}

async function branch(node, at, text, id) {
  const prefix = node.tokens.slice(0, at).map((t) => t.id);
  try {
    await generate([...prefix, id], node, at, text);
  } catch (e) {
    say(e.message, true);
  }
}

function show(node, position) {
  state.current = node;
  state.position = Math.max(1, Math.min(position, node.tokens.length));
  state.seen = {};
  renderTokens();
  renderTree();
  renderPositions();
  $("alternatives").replaceChildren(el("p", {class: "help", text: "Hover or focus a token to see its alternatives."}));
  drawn();
  refreshVisible();
}

function ancestors(node) {
  const out = [];
  for (let n = node; n; n = n.parent) out.push(n);
  return out;
}

function renderTree() {
  const tree = $("tree");
  tree.replaceChildren();
  const line = new Set(ancestors(state.current));
  const item = (node) => {
    const label = node.parent === null ? `root: ${shown(node.tokens.map((t) => t.text).join("").slice(0, 40))}`
      : `at ${node.at}: ${shown(node.chosen)} → ${shown(node.text.slice(0, 30))}`;
    const button = el("button", {type: "button", class: "node", "data-node": String(node.n), text: label});
    if (node === state.current) button.setAttribute("aria-current", "true");
    else if (line.has(node)) button.classList.add("ancestor");
    button.addEventListener("click", () => show(node, node.promptIds.length));
    const li = el("li", {}, button);
    const children = state.nodes.filter((c) => c.parent === node);
    if (children.length) li.append(el("ul", {}, ...children.map(item)));
    return li;
  };
  for (const root of state.nodes.filter((n) => n.parent === null)) tree.append(item(root));
}

// ---- the tokens view -------------------------------------------------------------------------------------

function renderTokens() {
  const box = $("tokens");
  box.replaceChildren();
  state.current.tokens.forEach((t, i) => {
    const p = t.logprob === null ? null : Math.exp(t.logprob);
    const span = el("span", {class: "tok" + (t.generated ? " generated" : ""), tabindex: "0", "data-index": String(i),
                             "aria-label": `token ${i}: ${shown(t.text)}, ${p === null ? "no probability" : pct(p)}`,
                             text: visible(t.text)});
    span.style.backgroundColor = colour(p);
    if (t.text.includes("\uFFFD")) span.title = FRAGMENT;
    span.addEventListener("mouseenter", () => showAlternatives(i));
    span.addEventListener("focus", () => showAlternatives(i));
    span.addEventListener("click", () => { showAlternatives(i); choosePosition(i); });
    span.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" || ev.key === " ") {
        ev.preventDefault();
        choosePosition(i);
        const first = $("alternatives").querySelector("button:not([disabled])");
        if (first) first.focus();
      }
    });
    box.append(span);
  });
}

function showAlternatives(i) {
  const node = state.current;
  const t = node.tokens[i];
  const panel = $("alternatives");
  const p = t.logprob === null ? null : Math.exp(t.logprob);
  const head = el("p", {class: "chosen"}, el("span", {class: "alt-token", text: shown(t.text)}), " at position ",
                  String(i), ": ", el("span", {class: "chosen-p", "data-index": String(i),
                                               text: p === null ? "—" : pct(p)}),
                  p === null ? " (the first token has no context to predict it from)" : "");
  panel.replaceChildren(head);
  if (!t.top.length) return;
  const unknown = node.tokens.slice(0, i).findIndex((x) => x.id === null);
  const list = el("ul", {class: "alt-list", "aria-label": `alternatives at position ${i}`});
  for (const [text, lp, id] of t.top) {
    const button = el("button", {type: "button", class: "alt" + (text === t.text ? " is-chosen" : ""),
                                 "data-text": text, "data-index": String(i)},
                      el("span", {class: "alt-token", text: shown(text)}), " ",
                      el("span", {class: "alt-p", text: pct(Math.exp(lp))}));
    if (id === null || unknown >= 0) {
      button.disabled = true;
      button.title = id === null ? "a byte fragment: several tokens share this text, so its id is not known"
        : `token ${unknown}'s id is not known (a byte fragment), so the prefix cannot be sent exactly`;
    } else {
      button.title = `branch: continue from ${shown(text)} (id ${id}) at position ${i}`;
      button.addEventListener("click", () => branch(node, i, text, id));
    }
    button.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") $("tokens").querySelector(`[data-index="${i}"]`).focus();
    });
    list.append(el("li", {}, button));
  }
  panel.append(list);
}

function choosePosition(i) {
  if (i < 1) return;
  state.position = i;
  $("position").value = String(i);
  if (!$("view-sampling").hidden) refreshSampling();
}

// ---- the sampling view ---------------------------------------------------------------------------------

function renderPositions() {
  const select = $("position");
  select.replaceChildren();
  const tokens = state.current.tokens;
  for (let i = 1; i <= tokens.length; i++) {
    const what = i < tokens.length ? `${i}: ${shown(tokens[i].text)}` : `${i}: the next token`;
    select.append(el("option", {value: String(i), text: what}));
  }
  select.value = String(state.position);
}

function samplingRequest() {
  const node = state.current;
  const i = state.position;
  const P = node.promptIds.length;
  const ids = node.tokens.slice(0, i).map((t) => t.id);
  if (ids.includes(null)) return null;
  return {prompt: ids.slice(0, Math.min(i, P)), generated: ids.slice(P), top: 12, ...settings()};
}

async function refreshSampling() {
  const body = samplingRequest();
  const box = $("stages");
  if (body === null) {
    box.replaceChildren(el("p", {text: "a token before this position is a byte fragment whose id is not known"}));
    return;
  }
  const key = JSON.stringify(body);
  if (state.seen.sampling === key) return;
  const view = await latest("sampling", () => api("/v1/explain/sampling", body));
  if (view === null) return;
  state.seen.sampling = key;
  const top = Math.max(...view.stages.flatMap((s) => s.top.map((t) => t.probability)));
  box.replaceChildren(...view.stages.map((stage, k) => {
    const setting = stage.setting === null || !stage.applied ? "" : ` = ${JSON.stringify(stage.setting)}`;
    const rows = stage.top.map((t) => {
      const fill = el("span", {class: "bar-fill"});
      fill.style.width = `${(100 * t.probability / top).toFixed(2)}%`;
      return el("div", {class: "bar" + (t.logit === null ? " removed" : ""), "data-id": String(t.id),
                        "data-kept": String(t.logit !== null),
                        title: `id ${t.id}, logit ${t.logit === null ? "-inf (removed)" : t.logit}`},
        el("span", {class: "bar-token", text: shown(t.token)}), el("span", {class: "bar-track"}, fill),
        el("span", {class: "bar-p", text: t.logit === null ? "removed" : pct(t.probability)}));
    });
    return el("div", {class: "stage" + (stage.applied ? "" : " off"), "data-stage": stage.name},
      el("h3", {text: `${k}. ${stage.name.replace("presence_frequency", "presence/frequency").replace(/_/g, " ")}` +
                      `${setting}${stage.applied ? "" : " (off)"}`}),
      el("p", {class: "note", text: stage.note}),
      el("p", {class: "kept"}, "kept ", el("span", {class: "kept-count", text: String(stage.kept)}),
         ` of ${state.config.vocab_size} tokens, holding ${pct(stage.kept_mass)} of the incoming probability`),
      el("div", {class: "bars"}, ...(stage.applied ? rows : [])));   // an off stage: its numbers, no repeated bars
  }));
  drawn();
}

// ---- the attention view ------------------------------------------------------------------------------

function attentionIds() {
  const ids = state.current.tokens.map((t) => t.id);
  const unknown = ids.indexOf(null);
  return unknown < 0 ? ids : ids.slice(0, unknown);
}

async function refreshAttention() {
  const body = {prompt: attentionIds(), layer: Number($("layer").value), head: Number($("head").value)};
  const key = JSON.stringify(body);
  if (state.seen.attention !== key) {
    const view = await latest("attention", () => api("/v1/explain/attention", body));
    if (view !== null) {
      state.seen.attention = key;
      drawHeatmap(view);
    }
  }
  drawKVCache(state.current.kv);
}

function drawHeatmap(view) {
  const w = view.weights[0];
  const labels = view.tokens.map((t) => visible(t).replace(/\n/g, ""));
  const table = el("table", {class: "heatmap", "data-layer": String(view.layer), "data-head": String(view.heads[0])},
    el("caption", {text: `layer ${view.layer}, head ${view.heads[0]}: row = attending token, column = attended token`}));
  table.append(el("tr", {}, el("th", {}), ...labels.map((l) => el("th", {scope: "col", class: "col"}, el("span", {text: l})))));
  w.forEach((row, t) => {
    const tr = el("tr", {"data-row": String(t)}, el("th", {scope: "row", text: labels[t]}));
    row.forEach((x, s) => {
      const td = el("td", {"data-w": String(x), title: `${shown(view.tokens[t])} → ${shown(view.tokens[s])}: ${pct(x)}`});
      if (s > t) td.className = "masked";
      else td.style.backgroundColor = heat(x);
      tr.append(td);
    });
    table.append(tr);
  });
  $("heatmap").replaceChildren(table, legend("attention weight", [0, 0.01, 0.1, 0.25, 0.5, 1].map(
    (w) => [pct(w).replace(".00%", "%"), heat(w)])));
  drawn();
}

function drawKVCache(kv) {
  const row = (name, value) => el("tr", {}, el("th", {scope: "row", text: name}), el("td", {text: value}));
  const n = (x) => x.toLocaleString("en-US");
  $("kvcache").replaceChildren(el("table", {class: "kv"},
    row("prompt tokens, generated tokens", `${kv.prompt}, ${kv.generated}`),
    row("positions computed with the cache", n(kv.computed)),
    row("positions reused from the cache (per layer, summed over steps)", n(kv.reused)),
    row("positions computed without the cache", n(kv.computed_without_cache)),
    row("multiply-adds with / without the cache", `${n(kv.macs_cached)} / ${n(kv.macs_full)}`)));
}

// ---- the BPE view --------------------------------------------------------------------------------------

async function refreshBPE() {
  // the shown generation's prompt: the text box's, or a branch's (its ids as text, via /detokenize)
  const node = state.current;
  const text = node.parent === null ? $("prompt").value
    : (await latest("bpe", () => api("/detokenize", {tokens: node.promptIds})) || {}).prompt;
  if (text === undefined) return;
  $("bpe-source").textContent = node.parent === null ? "" :
    `The prompt of the branch at position ${node.at} (its tokens as text, tokenized again).`;
  if (!text) {
    $("bpe").replaceChildren(el("p", {text: "type a prompt to see how it is tokenized"}));
    return;
  }
  if (state.seen.bpe === text) return;
  const view = await latest("bpe", () => api("/v1/explain/tokens", {text}));
  if (view === null) return;
  state.seen.bpe = text;
  const chips = (tokens) => el("span", {class: "chips"}, ...tokens.map((t) => el("span", {class: "chip", text: t})));
  $("bpe").replaceChildren(...view.pieces.map((piece) => el("div", {class: "piece"},
    el("h3", {}, shown(piece.piece), piece.special ? " (special token)" : ""),
    el("ol", {class: "steps"},
      el("li", {}, "bytes: ", chips(piece.start)),
      ...piece.steps.map((s) => el("li", {}, `merge rank ${s.rank}: `, chips(s.pair), " → ", chips(s.tokens)))),
    el("p", {class: "ids", text: `ids: ${piece.ids.join(" ")}`}))));
  drawn();
}

// ---- the chat view -------------------------------------------------------------------------------------

const chat = {messages: [], sending: false};     // the conversation so far (the system prompt apart)

function chatMessages() {
  const system = $("chat-system").value.trim();
  return [...(system ? [{role: "system", content: system}] : []), ...chat.messages];
}

function addTurn(role, text) {
  const body = el("div", {class: "turn-body", text});
  const turn = el("div", {class: `turn ${role}`, "data-role": role},
                  el("div", {class: "turn-role", text: role === "user" ? "You" : "Assistant"}), body);
  $("chat-log").append(turn);
  return turn;
}

async function streamChat(messages, onText) {
  // /v1/chat/completions with stream: true; calls onText with each piece; returns the whole reply
  const headers = {"Content-Type": "application/json"};
  if (state.key) headers.Authorization = "Bearer " + state.key;
  const body = {messages, stream: true, max_tokens: numberOr("max_tokens") || 1, ...settings(),
                ...($("seed").value === "" ? {} : {seed: Number($("seed").value)})};
  setBusy(+1);
  try {
    const r = await fetch("/v1/chat/completions", {method: "POST", headers, body: JSON.stringify(body)});
    if (!r.ok) {
      const data = await r.json();
      if (r.status === 401) askForKey("the server needs its API key: " + data.error.message);
      throw new Error(data.error ? data.error.message : r.statusText);
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = "", reply = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) return reply;
      buffer += value;
      const events = buffer.split("\n\n");
      buffer = events.pop();
      for (const event of events) {
        const payload = event.replace(/^data: /, "");
        if (payload === "[DONE]") return reply;
        const chunk = JSON.parse(payload);
        if (chunk.error) throw new Error(chunk.error.message);
        const piece = chunk.choices.length ? chunk.choices[0].delta.content || "" : "";
        reply += piece;
        onText(reply);
      }
    }
  } finally {
    setBusy(-1);
  }
}

async function sendChat(ev) {
  ev.preventDefault();
  const text = $("chat-input").value;
  if (chat.sending) return;
  if (!text.trim()) return say("type a message first", true);
  chat.sending = true;
  $("chat-send").disabled = true;
  $("chat-system").disabled = true;     // one system prompt per chat: the turns drawn were scored under it
  chat.messages.push({role: "user", content: text});
  const asked = addTurn("user", text);
  const turn = addTurn("assistant", "…");
  try {
    say("the assistant is answering…");
    const reply = await streamChat(chatMessages(), (sofar) => { turn.querySelector(".turn-body").textContent = sofar; });
    chat.messages.push({role: "assistant", content: reply});
    $("chat-input").value = "";
    await explainTurn(turn, chatMessages());
  } catch (e) {
    if (chat.messages.length && chat.messages[chat.messages.length - 1].role === "user") {
      chat.messages.pop();              // the message got no reply: take it back (its text stays in the box)
      asked.remove();
      turn.remove();
    }
    say(e.message, true);
  } finally {
    chat.sending = false;
    $("chat-send").disabled = false;
    $("chat-system").disabled = chat.messages.length > 0;
  }
}

async function explainTurn(turn, messages) {
  // the reply's tokens, probabilities, SFT mask and rewards: POST /v1/explain/chat, drawn as they come
  const view = await api("/v1/explain/chat", {messages});
  const tokens = el("div", {class: "tokens chat-tokens", "aria-label": "the reply as tokens"});
  view.tokens.forEach((text, i) => {
    const p = view.probabilities[i];
    const trained = view.trained === null ? null : view.trained[i];
    const what = `token ${i}: ${shown(text)}, ${pct(p)}` +
      (trained === null ? "" : trained ? ", trained on by SFT" : ", not trained on by SFT");
    const span = el("span", {class: "tok" + (trained ? " trained" : ""), tabindex: "0", "data-index": String(i),
                             "data-p": String(p), "aria-label": what, title: what, text: visible(text)});
    span.style.backgroundColor = colour(p);
    const detail = () => { turn.querySelector(".token-detail").textContent = what; };
    span.addEventListener("mouseenter", detail);
    span.addEventListener("focus", detail);
    tokens.append(span);
  });
  turn.querySelector(".turn-body").replaceChildren(tokens);
  turn.append(el("p", {class: "token-detail note", "aria-live": "polite",
                       text: "hover or focus a token for its probability"}));
  const notes = [view.trained_note, view.reward_note].filter((n) => n);
  turn.append(el("div", {class: "rewards"}, ...view.rewards.map(rewardLine)),
              ...notes.map((n) => el("p", {class: "note", text: n})));
  say(`reply: ${view.tokens.length} tokens after ${view.prompt_tokens} of the conversation (${view.template} template)`);
  drawn();
}

function rewardLine(r) {
  const value = el("span", {class: "reward-value", text: r.value.toFixed(4)});
  if (r.kind === "reward model") {
    return el("p", {class: "reward", "data-kind": "reward model"}, `reward model (${r.name}): `, value);
  }
  return el("p", {class: "reward", "data-kind": "implicit DPO",
                  title: `beta × (log π(reply) − log π_ref(reply)) = ${r.beta} × (${r.policy_logprob.toFixed(4)} − ` +
                         `${r.reference_logprob.toFixed(4)})`},
            `implicit DPO reward (β ${r.beta}, reference ${r.name}): `, value,
            el("span", {class: "note", text: ` log π ${r.policy_logprob.toFixed(2)}, log π_ref ${r.reference_logprob.toFixed(2)}`}));
}

function resetChat() {
  chat.messages = [];
  $("chat-log").replaceChildren();
  $("chat-system").disabled = false;
  say("a new chat");
}

function probabilityLegend() {
  return legend("probability", [["no context", colour(null)], ["≤ 0.01%", colour(1e-4)],
    ["0.1%", colour(1e-3)], ["1%", colour(1e-2)], ["10%", colour(0.1)], ["100%", colour(1)]]);
}

function trainedLegend() {
  return el("div", {class: "legend", role: "img", "aria-label": "SFT loss"}, el("span", {class: "legend-label", text: "SFT loss"}),
    el("span", {class: "legend-entry"}, el("span", {class: "tok trained sample", text: "abc"}), "underlined: trained on"),
    el("span", {class: "legend-entry"}, el("span", {class: "tok sample", text: "abc"}), "plain: not trained on"));
}

// ---- tabs and start-up -----------------------------------------------------------------------------------

function refreshVisible() {
  if (!state.current) return;
  if (!$("view-sampling").hidden) refreshSampling();
  if (!$("view-attention").hidden) refreshAttention();
  if (!$("view-bpe").hidden) refreshBPE();
}

function selectTab(tab) {
  for (const t of document.querySelectorAll("[role=tab]")) {
    const on = t === tab;
    t.setAttribute("aria-selected", String(on));
    $(t.getAttribute("aria-controls")).hidden = !on;
  }
  document.body.dataset.view = tab.id.replace("tab-", "");     // the chat view hides the prompt's box
  refreshVisible();
}

function debounce(fn, ms) {
  let timer = null;
  return () => { clearTimeout(timer); timer = setTimeout(fn, ms); };
}

function askForKey(message) {
  $("key-form").hidden = false;
  say(message, true);
  $("key").focus();
}

async function start() {
  try {
    const model = await api("/v1/explain/model");
    state.config = model.config;
    state.eot = model.eot_id;
    state.texts = model.tokens;
    model.tokens.forEach((text, id) => {
      if (!state.byText.has(text)) state.byText.set(text, []);
      state.byText.get(text).push(id);
    });
    const fill = (select, count) => select.replaceChildren(
      ...Array.from({length: count}, (_, i) => el("option", {value: String(i), text: String(i)})));
    fill($("layer"), model.config.n_layer);
    fill($("head"), model.config.n_head);
    $("legend").replaceChildren(probabilityLegend());
    $("chat-legend").replaceChildren(probabilityLegend(), trainedLegend());
    say(`${model.model}: ${model.config.n_layer} layers x ${model.config.n_head} heads, ` +
        `${model.config.vocab_size} tokens, context ${model.config.n_positions}`);
    await generateFromPrompt();
  } catch (e) {
    if (e.status !== 401) say(e.message, true);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setBusy(0);
  document.body.dataset.drawn = "0";
  for (const name of SETTINGS) {
    const input = $(name);
    const out = input.parentElement.querySelector("output");
    const update = () => { out.textContent = input.value; };
    update();
    input.addEventListener("input", update);
    input.addEventListener("input", debounce(() => { if (!$("view-sampling").hidden && state.current) refreshSampling(); }, 150));
  }
  $("generate").addEventListener("click", generateFromPrompt);
  $("chat-form").addEventListener("submit", sendChat);
  $("chat-reset").addEventListener("click", resetChat);
  $("position").addEventListener("change", () => choosePosition(Number($("position").value)));
  $("layer").addEventListener("change", refreshAttention);
  $("head").addEventListener("change", refreshAttention);
  $("prompt").addEventListener("input", () => { state.seen.bpe = null; });
  for (const tab of document.querySelectorAll("[role=tab]")) tab.addEventListener("click", () => selectTab(tab));
  $("key-form").addEventListener("submit", (ev) => {
    ev.preventDefault();
    state.key = $("key").value;
    sessionStorage.setItem("numgpt-key", state.key);
    $("key-form").hidden = true;
    start();
  });
  if (document.documentElement.dataset.keyRequired === "true" && !state.key) {
    askForKey("this server has an API key: enter it to start (it is kept in this tab only)");
  } else {
    start();
  }
});
