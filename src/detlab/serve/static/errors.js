// detlab serve: the Errors view. With `detlab serve --data SPEC`, the server analysed each
// detector's errors on that data set at start (GET /api/errors): TIDE's dAP of each error type,
// the AP50 gained if its errors were fixed, and galleries of the worst examples
// (GET /api/errors/MODEL/TYPE.jpg). Shown for the model chosen above; uses app.js's helpers.
"use strict";

const errorsView = { answer: null, shown: null };
window.detlabErrors = errorsView;

const ERROR_WORDS = {
  classification: "right box, wrong class",
  localization: "right class, box off",
  both: "wrong class and box off",
  duplicate: "a second box on a found object",
  background: "fired on background",
  missed: "object never found",
  false_positive: "all false positives",
  false_negative: "all missed objects",
};

async function loadErrors() {
  let response;
  try {
    response = await fetch("/api/errors", withToken());
  } catch (error) {
    return;
  }
  if (!response.ok) return;  // 404: started without --data; 401: app.js asks for the token
  errorsView.answer = await response.json();
  $("errors").hidden = false;
  showErrors();
}

function formatAp(value) {
  return value === null || value === undefined ? "-" : (100 * value).toFixed(1);
}

function showErrors() {
  const answer = errorsView.answer;
  if (!answer) return;
  const name = $("model").value || Object.keys(answer.models)[0];  // before app.js filled the list
  const view = answer.models[name];
  const rows = $("error-rows");
  rows.replaceChildren();
  $("error-figures").replaceChildren();
  $("gallery").hidden = true;
  if (!view || !view.available) {
    $("errors-summary").textContent = view ? `${name}: ${view.reason}` : "";
    return;
  }
  $("errors-data").textContent = `on ${answer.data} [${view.split}]`;
  $("errors-summary").textContent = `${name}: AP50 ${formatAp(view.AP50)} on ${view.images} images. ` +
    "dAP50: the points of AP50 gained if that kind of error were fixed, each on its own (TIDE). " +
    `Best-F1 score threshold ${view.best_confidence === null ? "-" : view.best_confidence.toFixed(2)}.`;
  for (const type of answer.types) {
    const row = document.createElement("tr");
    row.dataset.type = type.type;
    const count = view.counts[type.type];
    const cells = [ERROR_WORDS[type.type] || type.type, type.name,
      count === undefined ? "" : String(count), formatAp(view.dap[type.type])];
    for (const text of cells) {
      const cell = document.createElement("td");
      cell.textContent = text;
      row.append(cell);
    }
    const last = document.createElement("td");
    const gallery = view.galleries[type.type];
    if (gallery) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = `show ${gallery.examples}`;
      button.addEventListener("click", () => showGallery(name, type, gallery));
      last.append(button);
    }
    row.append(last);
    rows.append(row);
  }
  for (const [figure, url] of Object.entries(view.figures)) showFigure(figure, url);
}

async function fetchImage(url) {
  const response = await fetch(url, withToken());
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return URL.createObjectURL(await response.blob());
}

async function showFigure(figure, url) {
  try {
    const image = document.createElement("img");
    image.alt = figure.replaceAll("_", " ");
    image.dataset.figure = figure;
    image.src = await fetchImage(url);
    $("error-figures").append(image);
  } catch (error) {
    showError(`cannot load the ${figure} figure: ${error.message}`);
  }
}

async function showGallery(name, type, gallery) {
  try {
    const source = await fetchImage(gallery.url);
    if ($("model").value !== name) return;  // another model was chosen meanwhile
    if (errorsView.shown) URL.revokeObjectURL(errorsView.shown);
    errorsView.shown = source;
    $("gallery-image").src = source;
    $("gallery-image").alt = `the worst ${type.name} errors of ${name}`;
    $("gallery-image").dataset.type = type.type;
    $("gallery-caption").textContent = `${ERROR_WORDS[type.type]} (${type.name}): ` +
      `the ${gallery.examples} worst examples, the ground truth drawn beside each`;
    $("gallery").hidden = false;
  } catch (error) {
    showError(`cannot load the gallery: ${error.message}`);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("model").addEventListener("change", showErrors);
  loadErrors();
});
