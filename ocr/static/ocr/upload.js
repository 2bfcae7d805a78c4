// Upload page: read the form into the API's `request` JSON, post the file, open the task page.

import { cookie, errorText, formatBytes, urlWithId } from "./common.js";

const form = document.getElementById("upload-form");
const fields = form.elements;
const fileInfo = document.getElementById("file-info");
const pdfOptions = document.getElementById("pdf-options");
const errorBox = document.getElementById("form-error");
const submitButton = document.getElementById("submit");
const uploadProgress = document.getElementById("upload-progress");

async function isPdf(file) {
  // Judged by content, like the server: a PDF starts with "%PDF-".
  const head = new Uint8Array(await file.slice(0, 5).arrayBuffer());
  return String.fromCharCode(...head) === "%PDF-";
}

function showError(message) {
  errorBox.textContent = message;
  errorBox.hidden = !message;
}

async function onFileChosen() {
  const file = fields.file.files[0];
  showError("");
  if (!file) {
    fileInfo.textContent = "";
    pdfOptions.hidden = false;
    return;
  }
  const pdf = await isPdf(file);
  fileInfo.textContent = `${pdf ? "PDF" : "Image"} · ${formatBytes(file.size)}`;
  pdfOptions.hidden = !pdf;
}

// "1-3, 7" -> [1, 2, 3, 7]; throws with a message for anything else.
function parsePages(text) {
  const pages = [];
  for (const part of text.split(",").map((item) => item.trim()).filter(Boolean)) {
    const match = /^(\d+)\s*(?:-\s*(\d+))?$/.exec(part);
    if (!match) throw new Error(`Pages: "${part}" is not a page number or a range like 2-5.`);
    const first = Number(match[1]);
    const last = match[2] === undefined ? first : Number(match[2]);
    if (first < 1 || last < first) throw new Error(`Pages: "${part}" is not a valid range.`);
    if (pages.length + last - first > 10000) throw new Error("Pages: too many pages selected.");
    for (let page = first; page <= last; page += 1) pages.push(page);
  }
  return pages;
}

function readParams(pdf) {
  const outputs = [...form.querySelectorAll("input[name=outputs]:checked")].map((box) => box.value);
  if (!outputs.length) throw new Error("Outputs: choose at least one.");
  const params = {
    threshold: fields.threshold_mode.value === "auto" ? "auto" : Number.parseInt(fields.threshold.value, 10),
    contrast_level: Number.parseFloat(fields.contrast_level.value),
    lang: fields.lang.value.trim(),
    outputs,
    rotate: fields.rotate.value,
    deskew: fields.deskew.checked,
  };
  if (fields.deadline_seconds.value !== "") {
    params.deadline_seconds = Number.parseInt(fields.deadline_seconds.value, 10);
  }
  if (pdf) {
    params.dpi = Number.parseInt(fields.dpi.value, 10);
    params.text_layer = fields.text_layer.value;
    const pages = parsePages(fields.page_select.value);
    if (pages.length) params.page_select = pages;
  }
  return params;
}

function firstInvalidField(pdf) {
  for (const field of form.querySelectorAll("input, select")) {
    if (!pdf && pdfOptions.contains(field)) continue;
    if (!field.hidden && !field.checkValidity()) return field;
  }
  return null;
}

function fieldLabel(field) {
  const label = field.closest("label");
  return label ? label.firstChild.textContent.trim() : field.name;
}

function setBusy(busy) {
  submitButton.disabled = busy;
  submitButton.textContent = busy ? "Uploading…" : "Start OCR";
  uploadProgress.hidden = !busy;
  uploadProgress.firstElementChild.style.width = "0%";
}

function post(url, body) {
  // XMLHttpRequest rather than fetch: it reports upload progress for large PDFs.
  return new Promise((resolve) => {
    const request = new XMLHttpRequest();
    request.open("POST", url);
    request.setRequestHeader("Accept", "application/json");
    request.setRequestHeader("X-CSRFToken", cookie("csrftoken"));
    request.upload.addEventListener("progress", (event) => {
      if (event.lengthComputable) {
        uploadProgress.firstElementChild.style.width = `${Math.round((100 * event.loaded) / event.total)}%`;
      }
    });
    request.addEventListener("load", () => {
      let data = null;
      try {
        data = JSON.parse(request.responseText);
      } catch {
        data = null;
      }
      resolve({ status: request.status, data });
    });
    request.addEventListener("error", () => resolve({ status: 0, data: null }));
    request.send(body);
  });
}

async function onSubmit(event) {
  event.preventDefault();
  showError("");
  const file = fields.file.files[0];
  if (!file) {
    showError("Choose an image or a PDF first.");
    fields.file.focus();
    return;
  }
  const pdf = await isPdf(file);
  const invalid = firstInvalidField(pdf);
  if (invalid) {
    showError(`${fieldLabel(invalid)}: ${invalid.validationMessage}`);
    invalid.focus();
    return;
  }
  let params;
  try {
    params = readParams(pdf);
  } catch (error) {
    showError(error.message);
    (error.message.startsWith("Outputs") ? form.querySelector("input[name=outputs]") : fields.page_select).focus();
    return;
  }
  const { urlImage, urlPdf, urlPdfStream, taskUrl, placeholder } = form.dataset;
  const url = !pdf ? urlImage : fields.streaming.checked ? urlPdfStream : urlPdf;
  const body = new FormData();
  body.append("file", file);
  body.append("request", JSON.stringify(params));

  setBusy(true);
  const { status, data } = await post(url, body);
  if (status === 202 && data && data.task_id) {
    window.location.assign(urlWithId(taskUrl, placeholder, data.task_id));
    return;
  }
  setBusy(false);
  showError(errorText(status, data));
}

function onThresholdMode() {
  const global = fields.threshold_mode.value === "global";
  fields.threshold.hidden = !global;
  fields.threshold.required = global;
}

fields.file.addEventListener("change", onFileChosen);
fields.threshold_mode.addEventListener("change", onThresholdMode);
onThresholdMode();
form.addEventListener("submit", onSubmit);
// Coming back from the task page (back button) restores this page as it was left: ready it again.
window.addEventListener("pageshow", () => setBusy(false));
onFileChosen();
