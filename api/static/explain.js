// The explanation page: posts the review to /v1/explanations and shades each word by its
// attribution. Everything shown is set through textContent and class names, never parsed as HTML.
"use strict";

const EXPLAIN_URL = "/v1/explanations";
const SHADES = 5;

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function shade(attribution, largest) {
  if (!largest || !attribution) return "";
  const level = Math.max(1, Math.min(SHADES, Math.ceil((Math.abs(attribution) / largest) * SHADES)));
  return (attribution > 0 ? "pos-" : "neg-") + level;
}

function drawReview(body) {
  const review = document.getElementById("review");
  review.replaceChildren();
  const largest = Math.max(0, ...body.words.map((w) => Math.abs(w.attribution)));
  let at = 0;
  for (const word of body.words) {
    if (word.start > at) review.append(document.createTextNode(body.text.slice(at, word.start)));
    const span = el("span", body.text.slice(word.start, word.end), shade(word.attribution, largest));
    span.title = "attribution " + word.attribution.toFixed(3);
    span.dataset.attribution = String(word.attribution);
    review.append(span);
    at = word.end;
  }
  if (at < body.text.length) review.append(document.createTextNode(body.text.slice(at)));
}

function drawProbabilities(body) {
  const box = document.getElementById("probabilities");
  box.replaceChildren();
  for (const star of ["1", "2", "3", "4", "5"]) {
    const p = body.probabilities[star];
    const row = el("div", null, "bar" + (Number(star) === body.stars ? " best" : ""));
    row.append(el("span", star + " ★"));
    const track = el("div", null, "track");
    const fill = el("div", null, "fill");
    fill.style.width = (p * 100).toFixed(1) + "%";
    track.append(fill);
    row.append(track, el("span", (p * 100).toFixed(1) + "%"));
    box.append(row);
  }
}

async function explain(event) {
  event.preventDefault();
  const status = document.getElementById("status");
  const headers = { "Content-Type": "application/json" };
  const version = document.getElementById("version").value.trim();
  if (version) headers["X-Model-Version"] = version;
  status.textContent = "explaining…";
  status.className = "small";
  try {
    const response = await fetch(EXPLAIN_URL, {
      method: "POST",
      headers,
      body: JSON.stringify({ text: document.getElementById("text").value }),
    });
    const body = await response.json();
    if (!response.ok) throw new Error(body.error ? body.error.message : response.statusText);
    document.getElementById("stars").textContent = "★".repeat(body.stars) + "☆".repeat(5 - body.stars);
    document.getElementById("meta").textContent =
      body.stars + " stars · version " + body.version + " · variant " + body.variant;
    drawReview(body);
    drawProbabilities(body);
    document.getElementById("check").textContent =
      body.steps + " integration steps; attributions sum to the logit difference within " +
      Math.abs(body.convergence_delta).toFixed(4) + (body.truncated ? " · text truncated" : "");
    document.getElementById("result").hidden = false;
    status.textContent = "";
  } catch (error) {
    status.textContent = String(error.message || error);
    status.className = "small error";
  }
}

document.getElementById("form").addEventListener("submit", explain);
