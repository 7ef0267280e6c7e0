// The dashboard's playground: a chat with one model through /v1/chat/completions, streamed,
// with the answer's time to first token and tokens/s as this browser saw them. The
// conversation lives in this page only. Uses app.js's $, el, headers, failure and ROOT.
"use strict";

const playground = { history: [], controller: null, models: "" };

function renderModelChoice(catalogue) {
  const ids = catalogue.filter((m) => m.embeddings !== true).map((m) => m.id);
  if (ids.join("\n") === playground.models) return; // keep the user's choice as it is
  playground.models = ids.join("\n");
  const select = $("pg-model");
  const chosen = select.value;
  const ready = catalogue.find((m) => m.state === "ready");
  select.replaceChildren(...ids.map((id) => el("option", { value: id, text: id })));
  if (ids.includes(chosen)) select.value = chosen;
  else if (ready) select.value = ready.id;
}

function turn(role, text) {
  const body = el("span", { text });
  const node = el("p", { class: `turn ${role}`, "data-role": role },
    el("b", { text: role === "user" ? "you" : $("pg-model").value }), body);
  $("pg-log").append(node);
  $("pg-log").scrollTop = $("pg-log").scrollHeight;
  return { node, body };
}

function stats(started, first, ended, tokens) {
  const parts = [];
  if (first !== null) parts.push(`TTFT ${((first - started) / 1000).toFixed(2)} s`);
  if (first !== null && tokens > 1 && ended > first) {
    parts.push(`${((tokens - 1) / ((ended - first) / 1000)).toFixed(1)} tokens/s`);
  }
  parts.push(`${tokens} tokens`);
  $("pg-stats").textContent = parts.join(" · ");
}

function busyChat(busy) {
  $("pg-send").disabled = busy;
  $("pg-stop").disabled = !busy;
}

// The text and usage of one SSE frame of an OpenAI chat stream.
function frameOf(line) {
  const data = JSON.parse(line.slice(6));
  if (data.error) throw new Error(data.error.message);
  const choice = data.choices && data.choices[0];
  return { piece: (choice && choice.delta && choice.delta.content) || "", usage: data.usage };
}

async function send(event) {
  event.preventDefault();
  const text = $("pg-input").value.trim();
  if (!text || playground.controller) return;
  playground.history.push({ role: "user", content: text });
  turn("user", text);
  $("pg-input").value = "";
  const answer = turn("assistant", "");
  const controller = playground.controller = new AbortController();
  busyChat(true);
  const started = performance.now();
  let first = null;
  let said = "";
  let tokens = 0;
  try {
    const reply = await fetch(new URL("v1/chat/completions", ROOT), {
      method: "POST", headers: headers(), cache: "no-store", signal: controller.signal,
      body: JSON.stringify({ model: $("pg-model").value, messages: playground.history,
        max_tokens: Number($("pg-max").value) || 256, stream: true,
        stream_options: { include_usage: true } }),
    });
    if (!reply.ok) throw await failure(reply);
    const reader = reply.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const lines = buffer.slice(0, cut).split("\n");
        buffer = buffer.slice(cut + 2);
        for (const line of lines) {
          if (!line.startsWith("data: {")) continue;
          const { piece, usage } = frameOf(line);
          if (usage) tokens = usage.completion_tokens;
          if (!piece) continue;
          if (first === null) first = performance.now();
          said += piece;
          tokens += usage ? 0 : 1;
          answer.body.textContent = said;
          stats(started, first, performance.now(), tokens);
        }
      }
    }
    playground.history.push({ role: "assistant", content: said });
    stats(started, first, performance.now(), tokens);
  } catch (error) {
    playground.history.pop(); // the question goes with its failed answer
    answer.node.classList.add("failed");
    answer.body.textContent = `${said}${said ? " " : ""}(${controller.signal.aborted
      ? "stopped" : error.message})`;
    if (error.status === 401 || error.status === 403) askForKey(error.message);
  } finally {
    playground.controller = null;
    busyChat(false);
  }
}

$("pg-form").addEventListener("submit", send);
$("pg-input").addEventListener("keydown", (event) => {
  if (event.key === "Enter" && !event.shiftKey) {
    event.preventDefault();
    $("pg-form").requestSubmit();
  }
});
$("pg-stop").addEventListener("click", () => playground.controller
  && playground.controller.abort());
$("pg-clear").addEventListener("click", () => {
  playground.history = [];
  $("pg-log").replaceChildren();
  $("pg-stats").textContent = "";
});
