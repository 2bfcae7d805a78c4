// Task list: the caller's tasks from GET /v1/ocr/tasks, filtered and paged, refreshed while
// some of them are still running.

import { ACTIVE, KIND_LABELS, el, errorText, formatDateTime, requestJson, setBadge, urlWithId } from "./common.js";

const root = document.getElementById("task-list-page");
const { apiUrl, taskUrl, placeholder, bulkCancelUrl } = root.dataset;
const pageSize = Number(root.dataset.pageSize) || 20;
const filters = document.getElementById("filters");
const list = document.getElementById("tasks");
const message = document.getElementById("list-message");
const pager = document.getElementById("pager");
const prev = document.getElementById("prev");
const next = document.getElementById("next");
const pageLabel = document.getElementById("page-label");
const bulkCancel = document.getElementById("bulk-cancel");
const bulkMessage = document.getElementById("bulk-message");

const REFRESH_MS = 3000;
const query = new URLSearchParams(window.location.search);
let page = Math.max(1, Number.parseInt(query.get("page") || "1", 10) || 1);
let refreshTimer = null;

filters.elements.status.value = query.get("status") || "";
filters.elements.task_type.value = query.get("task_type") || "";

function currentQuery() {
  const params = new URLSearchParams();
  for (const name of ["status", "task_type"]) {
    if (filters.elements[name].value) params.set(name, filters.elements[name].value);
  }
  if (page > 1) params.set("page", String(page));
  return params;
}

// The mean of the OCR pages' mean_confidence (null when no page has one).
function meanConfidence(result) {
  if (!result) return null;
  const pages = Array.isArray(result.results) ? result.results : [result];
  const values = pages.map((page) => page.mean_confidence).filter((value) => typeof value === "number");
  if (!values.length) return null;
  return Math.round(values.reduce((sum, value) => sum + value, 0) / values.length);
}

function taskRow(task) {
  const badge = el("span", {});
  setBadge(badge, task.status);
  const kind = KIND_LABELS[task.task_type] || task.task_type;
  const { total_pages: total, processed_pages: processed, failed_pages: failed } = task.progress;
  const pages = task.task_type.startsWith("pdf") && total ? `${processed + failed} / ${total} pages` : "";
  const confidence = meanConfidence(task.result);
  const detail =
    task.status === "cancelled"
      ? task.cancellation_reason
      : task.status === "failed"
        ? task.error_message
        : null;
  return el(
    "li",
    {},
    el(
      "a",
      { class: "task-row", href: urlWithId(taskUrl, placeholder, task.task_id), "data-task-id": task.task_id },
      badge,
      el("span", { class: "task-kind" }, kind, task.streaming ? " · live" : ""),
      el("code", { class: "task-id", title: task.task_id }, task.task_id.slice(0, 8)),
      pages ? el("span", { class: "muted" }, pages) : null,
      confidence === null
        ? null
        : el("span", { class: "confidence", title: "Mean OCR confidence over the pages (0–100)" }, `${confidence}% conf.`),
      el("time", { class: "muted task-time", datetime: task.created_at }, formatDateTime(task.created_at)),
      detail ? el("span", { class: "task-detail" }, detail) : null,
    ),
  );
}

async function load() {
  clearTimeout(refreshTimer);
  const params = currentQuery();
  window.history.replaceState(null, "", params.size ? `?${params}` : window.location.pathname);
  const { ok, status, data } = await requestJson(`${apiUrl}?${params}`);
  if (!ok) {
    if (status === 404 && page > 1) {
      page = 1; // the list got shorter
      load();
      return;
    }
    message.textContent = `Could not load the tasks: ${errorText(status, data)}`;
    return;
  }
  list.replaceChildren(...data.results.map(taskRow));
  const filtered = filters.elements.status.value || filters.elements.task_type.value;
  message.textContent = data.count
    ? `${data.count} task${data.count === 1 ? "" : "s"}`
    : filtered
      ? "No task matches these filters."
      : "No tasks yet in this browser session.";
  pager.hidden = !data.next && !data.previous;
  prev.disabled = !data.previous;
  next.disabled = !data.next;
  pageLabel.textContent = `page ${page} of ${Math.max(1, Math.ceil(data.count / pageSize))}`;
  const anyActive = data.results.some((task) => ACTIVE.has(task.status));
  bulkCancel.hidden = !anyActive && page === 1;
  if (anyActive) refreshTimer = setTimeout(load, REFRESH_MS);
}

// Bulk cancel of the caller's active tasks (of the selected kind): a dry run says how many,
// the confirmation names that number, then the same filter cancels them.
function activeFilter() {
  const filter = { status: ["pending", "processing"] };
  if (filters.elements.task_type.value) filter.task_type = [filters.elements.task_type.value];
  return filter;
}

function say(text) {
  bulkMessage.textContent = text;
  bulkMessage.hidden = !text;
}

bulkCancel.addEventListener("click", async () => {
  const body = { filter: activeFilter(), dry_run: true };
  const dry = await requestJson(bulkCancelUrl, { method: "POST", body });
  if (!dry.ok) return say(`Could not cancel: ${errorText(dry.status, dry.data)}`);
  const count = dry.data.cancelled.length;
  if (!count) return say("No running or queued task to cancel.");
  const more = dry.data.truncated ? " (the first 1000)" : "";
  if (!window.confirm(`Cancel ${count} task${count === 1 ? "" : "s"}${more}?`)) return;
  const done = await requestJson(bulkCancelUrl, { method: "POST", body: { filter: activeFilter() } });
  if (!done.ok) return say(`Could not cancel: ${errorText(done.status, done.data)}`);
  const n = done.data.cancelled.length;
  say(`${n} task${n === 1 ? "" : "s"} cancelled.`);
  load();
});

filters.addEventListener("change", () => {
  page = 1;
  load();
});
prev.addEventListener("click", () => {
  page = Math.max(1, page - 1);
  load();
});
next.addEventListener("click", () => {
  page += 1;
  load();
});

load();
