// Task page: the task's state from the REST API, live events from the WebSocket (replayed
// after the last seq seen when the socket reconnects), pages keyed by number, cancel.

import { TERMINAL, el, errorText, formatDateTime, formatDuration, requestJson, setBadge } from "./common.js";

const root = document.getElementById("task-page");
const { taskId, taskType, apiUrl, cancelUrl } = root.dataset;
const byId = (id) => document.getElementById(id);
const ui = {
  status: byId("status"),
  created: byId("created"),
  progress: byId("progress"),
  progressBar: byId("progress-bar"),
  pagesDone: byId("pages-done"),
  elapsed: byId("elapsed"),
  speed: byId("speed"),
  connection: byId("connection"),
  notice: byId("notice"),
  cancelOpen: byId("cancel-open"),
  cancelForm: byId("cancel-form"),
  cancelReason: byId("cancel-reason"),
  cancelConfirm: byId("cancel-confirm"),
  cancelDismiss: byId("cancel-dismiss"),
  cancelError: byId("cancel-error"),
  pages: byId("pages"),
  pagesEmpty: byId("pages-empty"),
  textTools: byId("text-tools"),
  copyText: byId("copy-text"),
  downloadText: byId("download-text"),
  downloadsSection: byId("downloads-section"),
  downloadsNote: byId("downloads-note"),
};

const RECONNECT_MAX_MS = 10000;
const SINGLE_PAGE_KINDS = new Set(["ocr", "llm"]);

const state = {
  lastSeq: 0,
  status: null,
  total: 0,
  processed: 0,
  failed: 0,
  startedAt: null,
  endedAt: null,
  cancelledBy: null,
  reason: null,
  error: null,
  pages: new Map(), // page_number -> page result, so a page shown twice is replaced, never duplicated
  socket: null,
  retries: 0,
  reconnectTimer: null,
};

const isTerminal = () => TERMINAL.has(state.status);

function setStatus(status) {
  // A terminal status is final, whatever older news arrives later.
  if (status && !isTerminal()) state.status = status;
}

function setCounts(total, processed, failed) {
  if (total) state.total = total;
  state.processed = Math.max(state.processed, processed || 0);
  state.failed = Math.max(state.failed, failed || 0);
}

// --- Pages ---------------------------------------------------------------------------------

function pagesOfResult(task) {
  const result = task.result;
  if (!result) return [];
  if (Array.isArray(result.results)) return result.results;
  return [
    {
      page_number: 1,
      extracted_text: result.extracted_text,
      source: result.source || "ocr",
      processing_time: result.processing_time,
      success: result.success,
      error_message: result.error_message,
      mean_confidence: result.mean_confidence,
      rotation: result.rotation,
      script: result.script,
      lang_used: result.lang_used,
    },
  ];
}

function pageNode(page) {
  const number = page.page_number;
  const title = SINGLE_PAGE_KINDS.has(taskType) ? "Image" : `Page ${number}`;
  const seconds = Number(page.processing_time);
  const header = el(
    "header",
    { class: "page-head" },
    el("h3", {}, title),
    el("span", { class: `tag tag-${page.source || "ocr"}`, title: "Source" }, page.source || "ocr"),
    Number.isFinite(seconds) ? el("span", { class: "muted" }, formatDuration(seconds)) : null,
    typeof page.mean_confidence === "number"
      ? el("span", { class: "confidence", title: "Mean word confidence (0–100)" }, `${Math.round(page.mean_confidence)}% conf.`)
      : null,
    page.rotation ? el("span", { class: "muted", title: "Turned upright before OCR" }, `rotated ${page.rotation}°`) : null,
    page.lang_used && page.lang_used !== "eng" ? el("span", { class: "muted", title: "Languages used" }, page.lang_used) : null,
  );
  const text = page.extracted_text || "";
  let body;
  if (!page.success) body = el("p", { class: "page-error" }, page.error_message || "This page failed.");
  else if (text.trim()) body = el("pre", { class: "page-text" }, text);
  else body = el("p", { class: "muted" }, "No text found on this page.");
  return el(
    "article",
    { class: page.success ? "page" : "page page-failed", "data-page": number, id: `page-${number}` },
    header,
    body,
  );
}

function addPage(page) {
  const number = Number(page.page_number);
  const known = state.pages.get(number);
  if (known && known.extracted_text === page.extracted_text && known.success === page.success) return;
  state.pages.set(number, page);
  const node = pageNode(page);
  const existing = ui.pages.querySelector(`[data-page="${number}"]`);
  if (existing) {
    existing.replaceWith(node);
    return;
  }
  // Pages are read in parallel and may finish out of order: keep them sorted.
  const next = [...ui.pages.children].find((child) => Number(child.dataset.page) > number);
  ui.pages.insertBefore(node, next || null);
}

function allText() {
  return [...state.pages.values()]
    .sort((a, b) => a.page_number - b.page_number)
    .map((page) => `--- Page ${page.page_number} ---\n${page.extracted_text || ""}`)
    .join("\n\n");
}

// --- State from the API and from events ------------------------------------------------------

function applyTask(task) {
  setStatus(task.status);
  setCounts(task.progress.total_pages, task.progress.processed_pages, task.progress.failed_pages);
  state.startedAt = task.started_at || state.startedAt;
  state.endedAt = task.cancelled_at || task.completed_at || state.endedAt;
  state.reason = task.cancellation_reason || state.reason;
  state.cancelledBy = task.cancelled_by || state.cancelledBy;
  state.error = task.error_message || state.error;
  ui.created.textContent = `created ${formatDateTime(task.created_at)}`;
  for (const page of pagesOfResult(task)) addPage(page);
  render();
}

function applyEvent(event) {
  if (typeof event.seq !== "number" || event.seq <= state.lastSeq) return; // replayed twice
  state.lastSeq = event.seq;
  if (event.status === "processing" && !state.startedAt) state.startedAt = event.timestamp;
  setStatus(event.status);
  setCounts(event.total_pages, event.processed_pages, event.failed_pages);
  if (event.latest_page_result) addPage(event.latest_page_result);
  if (event.type === "cancelled") {
    state.endedAt = event.cancelled_at || event.timestamp;
    state.reason = event.cancellation_reason;
    state.cancelledBy = event.cancelled_by || state.cancelledBy;
  } else if (event.type === "failed") {
    state.endedAt = state.endedAt || event.timestamp;
    state.error = event.error_message || state.error;
  } else if (event.type === "completed") {
    state.endedAt = state.endedAt || event.timestamp;
  }
  if (TERMINAL.has(event.type)) loadTask(); // the stored result is the reference for the final text
  render();
}

async function loadTask() {
  const { ok, status, data } = await requestJson(apiUrl);
  if (ok) applyTask(data);
  else showNotice("error", `Could not load the task: ${errorText(status, data)}`);
  return ok;
}

// --- Rendering -------------------------------------------------------------------------------

function showNotice(kind, ...content) {
  const parts = content.filter(Boolean);
  ui.notice.className = `alert alert-${kind}`;
  ui.notice.replaceChildren(...parts);
  ui.notice.hidden = parts.length === 0;
}

function runSeconds() {
  if (!state.startedAt) return null;
  const end = state.endedAt ? Date.parse(state.endedAt) : Date.now();
  return Math.max(0, (end - Date.parse(state.startedAt)) / 1000);
}

const CANCELLED_BY = {
  admin: " by an administrator",
  deadline: " by its deadline",
  disconnect: " as its client disconnected",
  system: " by the service (a limit, or preempted)",
  websocket: " over a WebSocket",
};

function renderNotice() {
  const pages = state.total > 1 ? `${state.processed} of ${state.total} pages` : null;
  if (state.status === "cancelled") {
    const by = CANCELLED_BY[state.cancelledBy] || "";
    showNotice(
      "warning",
      el("strong", {}, `Cancelled at ${formatDateTime(state.endedAt)}${by}`),
      el("span", { class: "reason" }, `Reason: ${state.reason || "none given"}`),
      pages ? el("span", {}, `Partial result: ${pages} read before the cancel.`) : null,
    );
  } else if (state.status === "failed") {
    showNotice("error", el("strong", {}, "Failed"), el("span", {}, state.error || "No error message."));
  } else if (state.status === "completed") {
    const failed = state.failed ? `, ${state.failed} failed` : "";
    const seconds = runSeconds();
    const took = seconds === null ? "" : ` in ${formatDuration(seconds)}`;
    const summary = pages ? el("span", {}, `${pages} read${failed}.`) : null;
    showNotice("success", el("strong", {}, `Completed${took}`), summary);
  } else if (state.status === "pending") {
    showNotice("info", el("span", {}, "Waiting for a free worker…"));
  } else {
    showNotice("info");
  }
}

function tick() {
  const done = state.processed + state.failed;
  const seconds = runSeconds();
  if (seconds === null) {
    ui.elapsed.textContent = state.status === "pending" ? "queued" : "–";
    ui.speed.textContent = "–";
    return;
  }
  ui.elapsed.textContent = formatDuration(seconds);
  ui.speed.textContent = done && seconds > 0 ? `${(done / seconds).toFixed(2)} pages/s` : "–";
}

function render() {
  setBadge(ui.status, state.status || "loading");
  const done = state.processed + state.failed;
  const percent = state.total ? Math.min(100, Math.round((100 * done) / state.total)) : 0;
  ui.progress.setAttribute("aria-valuenow", String(percent));
  ui.progressBar.style.width = `${percent}%`;
  ui.progress.dataset.status = state.status || "";
  const failed = state.failed ? ` (${state.failed} failed)` : "";
  ui.pagesDone.textContent = state.total ? `${done} / ${state.total}${failed}` : "–";
  renderNotice();
  const cancellable = state.status === "pending" || state.status === "processing";
  if (!cancellable) ui.cancelForm.hidden = true;
  ui.cancelOpen.hidden = !cancellable || !ui.cancelForm.hidden;
  ui.pagesEmpty.hidden = state.pages.size > 0;
  ui.pagesEmpty.textContent = isTerminal() ? "No page was read." : "Waiting for the first page…";
  ui.textTools.hidden = state.pages.size === 0;
  ui.downloadsSection.hidden = !isTerminal() || state.pages.size === 0;
  ui.downloadsNote.textContent =
    state.status === "cancelled" ? `Downloads hold the ${state.processed} of ${state.total} pages read before the cancel.` : "";
  tick();
}

function setConnection(text, kind) {
  ui.connection.textContent = text;
  ui.connection.dataset.state = kind;
}

// --- WebSocket -------------------------------------------------------------------------------

function socketUrl() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${window.location.host}/ws/ocr/tasks/${taskId}/?after=${state.lastSeq}`;
}

function connect() {
  clearTimeout(state.reconnectTimer);
  const socket = new WebSocket(socketUrl());
  state.socket = socket;
  socket.addEventListener("open", () => {
    state.retries = 0;
    setConnection("live", "live");
  });
  socket.addEventListener("message", (message) => {
    let data;
    try {
      data = JSON.parse(message.data);
    } catch {
      return;
    }
    if (data.type === "cancel_result" || data.type === "error") return; // answers to our own frames
    applyEvent(data);
  });
  socket.addEventListener("close", (close) => onSocketClosed(socket, close));
}

function onSocketClosed(socket, close) {
  if (socket !== state.socket) return;
  state.socket = null;
  if (isTerminal()) {
    setConnection("finished", "done");
    return;
  }
  if (close.code === 4404 || close.code === 4403) {
    setConnection(close.code === 4404 ? "task not found" : "not allowed", "error");
    return;
  }
  // Dropped: come back with ?after=<last seq seen>; the server replays what we missed.
  const delay = Math.min(RECONNECT_MAX_MS, 500 * 2 ** state.retries);
  state.retries += 1;
  setConnection(`reconnecting in ${Math.ceil(delay / 1000)} s`, "retry");
  state.reconnectTimer = setTimeout(reconnect, delay);
}

async function reconnect() {
  clearTimeout(state.reconnectTimer); // one way back at a time (timer or "online")
  await loadTask(); // the task may have ended while the socket was down
  if (state.socket) return;
  if (isTerminal()) setConnection("finished", "done");
  else connect();
}

window.addEventListener("online", () => {
  if (!state.socket && !isTerminal()) reconnect();
});

// --- Cancel ----------------------------------------------------------------------------------

function showCancelError(message) {
  ui.cancelError.textContent = message;
  ui.cancelError.hidden = !message;
}

ui.cancelOpen.addEventListener("click", () => {
  ui.cancelForm.hidden = false;
  ui.cancelOpen.hidden = true;
  showCancelError("");
  ui.cancelReason.focus();
});

function dismissCancel() {
  ui.cancelForm.hidden = true;
  render();
  if (!ui.cancelOpen.hidden) ui.cancelOpen.focus();
}

ui.cancelDismiss.addEventListener("click", dismissCancel);
ui.cancelForm.addEventListener("keydown", (event) => {
  if (event.key === "Escape") dismissCancel();
});

ui.cancelForm.addEventListener("submit", async (event) => {
  event.preventDefault();
  const reason = ui.cancelReason.value.trim();
  ui.cancelConfirm.disabled = true;
  ui.cancelConfirm.textContent = "Cancelling…";
  const { ok, status, data } = await requestJson(cancelUrl, { method: "POST", body: reason ? { reason } : {} });
  ui.cancelConfirm.disabled = false;
  ui.cancelConfirm.textContent = "Cancel task";
  if (ok) {
    setStatus(data.status);
    state.endedAt = data.cancelled_at || state.endedAt;
    state.reason = data.cancellation_reason || state.reason;
    ui.cancelForm.hidden = true;
    render();
    loadTask(); // the partial result: every page finished before the cancel
    return;
  }
  showCancelError(errorText(status, data));
  if (status === 400 || status === 404) loadTask(); // finished meanwhile
});

// --- Text tools ------------------------------------------------------------------------------

ui.copyText.addEventListener("click", async () => {
  try {
    await navigator.clipboard.writeText(allText());
    ui.copyText.textContent = "Copied";
  } catch {
    ui.copyText.textContent = "Copy not allowed";
  }
  setTimeout(() => {
    ui.copyText.textContent = "Copy all";
  }, 1500);
});

ui.downloadText.addEventListener("click", () => {
  const previous = ui.downloadText.href;
  if (previous.startsWith("blob:")) URL.revokeObjectURL(previous);
  ui.downloadText.href = URL.createObjectURL(new Blob([allText()], { type: "text/plain;charset=utf-8" }));
});

// --- Start -----------------------------------------------------------------------------------

render();
loadTask();
connect();
setInterval(tick, 1000);
