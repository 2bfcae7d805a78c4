// Resume button of a cancelled or failed PDF task: POST .../resume, then open the new task,
// which keeps the pages read so far. Shown once the status badge (task.js) says so.

import { errorText, requestJson, urlWithId } from "./common.js";

const root = document.getElementById("task-page");
const { resumeUrl, taskUrl, placeholder } = root.dataset;
const button = document.getElementById("resume");
const error = document.getElementById("resume-error");
const badge = document.getElementById("status");
const RESUMABLE = new Set(["cancelled", "failed"]);

function update() {
  button.hidden = !resumeUrl || !RESUMABLE.has(badge.textContent.trim());
}

button.addEventListener("click", async () => {
  button.disabled = true;
  const { ok, status, data } = await requestJson(resumeUrl, { method: "POST" });
  if (ok) {
    window.location.assign(urlWithId(taskUrl, placeholder, data.task_id));
    return;
  }
  button.disabled = false;
  error.textContent = `Could not resume: ${errorText(status, data)}`;
  error.hidden = false;
});

new MutationObserver(update).observe(badge, { childList: true, characterData: true, subtree: true });
update();
