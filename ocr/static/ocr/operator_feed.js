// The admin dashboard's live panel: the staff operator feed (ws/ocr/events/) as table rows,
// newest first. It reconnects with ?after= the last id shown, so nothing is missed or doubled;
// a task that ends is also marked in the "running and queued" table.

import { el, formatDateTime, urlWithId } from "./common.js";

const MAX_ROWS = 200;
const panel = document.getElementById("operator-feed-panel");
const { taskUrl, placeholder } = panel.dataset;
const rows = document.querySelector("#operator-feed tbody");
const state = document.getElementById("operator-feed-state");
let lastId = null;
let retryMs = 1000;

const LABELS = {
  completed: "completed",
  failed: "failed",
  cancelled: "cancelled",
  cancel_refused: "cancel refused",
};

function show(item) {
  if (lastId !== null && item.id <= lastId) return;
  lastId = item.id;
  const who = [item.cancelled_by, item.cancelled_by_user].filter(Boolean).join(" / ");
  const row = el(
    "tr",
    { class: `feed-item feed-${item.type}`, "data-task-id": item.task_id, "data-id": item.id },
    el("td", {}, formatDateTime(item.timestamp)),
    el("td", {}, LABELS[item.type] || item.type),
    el("td", {}, el("a", { href: urlWithId(taskUrl, placeholder, item.task_id) }, item.task_id)),
    el("td", {}, item.task_type),
    el("td", {}, item.owner || "anonymous"),
    el("td", { class: "feed-reason" }, item.reason || ""),
    el("td", {}, who),
    el("td", {}, `${item.processed_pages}/${item.total_pages}`),
    el("td", {}, item.worker_node || ""),
  );
  document.getElementById("operator-feed-empty")?.remove();
  rows.prepend(row);
  while (rows.children.length > MAX_ROWS) rows.lastElementChild.remove();
  if (item.type !== "cancel_refused") {
    const running = document.querySelector(`#running-tasks tr[data-task-id="${item.task_id}"]`);
    if (running) {
      running.classList.add("feed-ended");
      running.querySelector(".task-status").textContent = item.status;
      running.querySelector("form")?.remove();
    }
  }
}

function connect() {
  const scheme = window.location.protocol === "https:" ? "wss" : "ws";
  const query = lastId === null ? "" : `?after=${lastId}`;
  const socket = new WebSocket(`${scheme}://${window.location.host}/ws/ocr/events/${query}`);
  socket.addEventListener("open", () => {
    state.textContent = "live";
    retryMs = 1000;
  });
  socket.addEventListener("message", (message) => {
    const item = JSON.parse(message.data);
    if (item.type !== "error") show(item);
  });
  socket.addEventListener("close", () => {
    state.textContent = `disconnected; reconnecting in ${Math.round(retryMs / 1000)} s`;
    window.setTimeout(connect, retryMs);
    retryMs = Math.min(retryMs * 2, 30000);
  });
}

connect();
