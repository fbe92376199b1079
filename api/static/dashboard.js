// The A/B dashboard: fetches /v1/experiment/report and draws it with plain DOM and SVG.
// Everything shown is set through textContent or SVG attributes, never parsed as HTML.
"use strict";

const REPORT_URL = "/v1/experiment/report";
const REFRESH_MS = 5000;
const SVG_NS = "http://www.w3.org/2000/svg";
const COLORS = ["#3b6fb6", "#e07b39", "#3a9a5b", "#9b59b6", "#c0392b", "#16a2a8", "#7f8c8d"];

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function svgEl(tag, attrs, text) {
  const node = document.createElementNS(SVG_NS, tag);
  for (const [key, value] of Object.entries(attrs || {})) node.setAttribute(key, String(value));
  if (text !== undefined) node.textContent = String(text);
  return node;
}

function fmt(value, digits) {
  return value === null || value === undefined ? "–" : Number(value).toFixed(digits);
}

function fmtP(p) {
  if (p === null || p === undefined) return "–";
  return p < 0.001 ? "<0.001" : p.toFixed(3);
}

function pText(p) {
  return p < 0.001 ? "p<0.001" : `p=${fmtP(p)}`;
}

function withInterval(interval, digits, scale) {
  if (!interval || interval.value === null || interval.value === undefined) return "–";
  const s = scale || 1;
  const bounds = interval.low === null || interval.high === null ? ""
    : ` [${fmt(interval.low * s, digits)}, ${fmt(interval.high * s, digits)}]`;
  return fmt(interval.value * s, digits) + bounds;
}

// One row per item: a label, a line from low to high and a dot at the value.
function intervalChart(rows, domain, digits) {
  const width = 440, rowHeight = 30, left = 110, right = 80, top = 8;
  const height = top + rows.length * rowHeight + 22;
  const [lo, hi] = domain;
  const x = (v) => left + ((v - lo) / (hi - lo || 1)) * (width - left - right);
  const root = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img" });
  rows.forEach((row, i) => {
    const y = top + i * rowHeight + rowHeight / 2;
    root.append(svgEl("text", { x: 0, y: y + 4 }, row.name));
    if (!row.interval) {
      root.append(svgEl("text", { x: left, y: y + 4, class: "label" }, "no data yet"));
      return;
    }
    const { value, low, high } = row.interval;
    if (low !== null && high !== null) {
      root.append(svgEl("line", { x1: x(low), x2: x(high), y1: y, y2: y, stroke: row.color,
        "stroke-width": 4, "stroke-linecap": "round", opacity: 0.45 }));
    }
    root.append(svgEl("circle", { cx: x(value), cy: y, r: 6, fill: row.color }));
    root.append(svgEl("text", { x: width - right + 8, y: y + 4 }, fmt(value, digits)));
  });
  const axisY = top + rows.length * rowHeight + 4;
  root.append(svgEl("line", { x1: left, x2: width - right, y1: axisY, y2: axisY, class: "axis" }));
  root.append(svgEl("text", { x: left, y: axisY + 14, class: "label" }, fmt(lo, digits)));
  root.append(svgEl("text", { x: width - right, y: axisY + 14, class: "label",
    "text-anchor": "end" }, fmt(hi, digits)));
  return root;
}

function domainOf(intervals, floor, ceiling) {
  const values = intervals.filter(Boolean)
    .flatMap((i) => [i.value, i.low, i.high]).filter((v) => v !== null);
  if (!values.length) return [floor, ceiling ?? floor + 1];
  const lo = Math.min(floor, ...values);
  const hi = ceiling !== undefined ? ceiling : Math.max(...values) * 1.1 || 1;
  return [lo, hi];
}

function trafficChart(variants) {
  const width = 900, rowHeight = 30, left = 110, right = 150;
  const total = variants.reduce((sum, v) => sum + v.requests, 0);
  const weights = variants.reduce((sum, v) => sum + v.weight, 0) || 1;
  const root = svgEl("svg", { viewBox: `0 0 ${width} ${variants.length * rowHeight + 8}`,
    width: "100%", role: "img" });
  const barWidth = width - left - right;
  variants.forEach((v, i) => {
    const y = 4 + i * rowHeight;
    const share = total ? v.requests / total : 0;
    root.append(svgEl("text", { x: 0, y: y + 17 }, v.name));
    root.append(svgEl("rect", { x: left, y: y + 4, width: barWidth, height: 18, fill: "#eef1f5" }));
    root.append(svgEl("rect", { x: left, y: y + 4, width: share * barWidth, height: 18,
      fill: v.color }));
    const target = left + (v.weight / weights) * barWidth;
    root.append(svgEl("line", { x1: target, x2: target, y1: y, y2: y + 26, stroke: "#1d2733",
      "stroke-width": 2 }));
    root.append(svgEl("text", { x: width - right + 8, y: y + 17 },
      `${v.requests} (${(share * 100).toFixed(1)}%)`));
  });
  return root;
}

function starsChart(variants) {
  const width = 440, height = 170, left = 30, bottom = 20, top = 10;
  const root = svgEl("svg", { viewBox: `0 0 ${width} ${height + 24}`, width: "100%",
    role: "img" });
  const groupWidth = (width - left) / 5;
  const barWidth = Math.max(4, (groupWidth - 12) / Math.max(variants.length, 1));
  const shares = variants.map((v) => {
    const total = Object.values(v.stars).reduce((a, b) => a + b, 0);
    return ["1", "2", "3", "4", "5"].map((s) => (total ? v.stars[s] / total : 0));
  });
  const peak = Math.max(0.01, ...shares.flat());
  for (let s = 0; s < 5; s++) {
    const gx = left + s * groupWidth;
    root.append(svgEl("text", { x: gx + groupWidth / 2, y: height + 2, "text-anchor": "middle",
      class: "label" }, `${s + 1}★`));
    variants.forEach((v, i) => {
      const h = (shares[i][s] / peak) * (height - bottom - top);
      root.append(svgEl("rect", { x: gx + 6 + i * barWidth, y: height - bottom - h,
        width: barWidth - 2, height: h, fill: v.color }));
    });
  }
  root.append(svgEl("line", { x1: left, x2: width, y1: height - bottom, y2: height - bottom,
    class: "axis" }));
  variants.forEach((v, i) => {
    root.append(svgEl("rect", { x: left + i * 110, y: height + 10, width: 10, height: 10,
      fill: v.color }));
    root.append(svgEl("text", { x: left + 14 + i * 110, y: height + 19 }, v.name));
  });
  return root;
}

function verdictClass(report) {
  if (report.sample_ratio.mismatch) return "alarm";
  // The verdict's metric only: the same comparisons the autopilot decides on.
  const significant = report.comparisons.filter(
    (c) => c.significant && c.metric === (report.primary_metric || "accuracy"));
  if (!significant.length) return "waiting";
  const better = significant.some((c) => (c.metric === "accuracy") === (c.difference > 0));
  return better ? "better" : "worse";
}

function fillTable(table, rows) {
  const body = table.tBodies[0];
  body.replaceChildren(...rows.map((cells) => {
    const tr = el("tr");
    cells.forEach(([text, numeric]) => tr.append(el("td", text, numeric ? "num" : "")));
    return tr;
  }));
}

const ACTION_SHAPES = { ramp: "▲", promote: "●", rollback: "■" };
const METRIC_NAMES = { accuracy: "accuracy", mae: "MAE" };
const GUARDRAIL_NAMES = {
  error_rate: "error rate", latency_p95_ms: "latency p95 (ms)", disagreement_rate: "disagreement",
};

function ticks(lo, hi, count) {
  const step = (hi - lo) / (count - 1);
  return Array.from({ length: count }, (_, i) => lo + i * step);
}

// A decision marker: a dashed line at the feedback count it was taken at and a shape on top,
// with the reason as the tooltip (an SVG <title>, set as text).
function decisionMarker(decision, x, top, bottom) {
  const group = svgEl("g", { class: `decision decision-${decision.action}`,
    "data-feedbacks": decision.feedbacks });
  group.append(svgEl("title", {}, `${decision.action}${decision.applied ? "" : " (dry run)"} ` +
    `at ${decision.feedbacks} feedbacks, weight ${fmt(decision.weight_before, 2)} → ` +
    `${fmt(decision.weight_after, 2)}: ${decision.reason}`));
  group.append(svgEl("line", { x1: x, x2: x, y1: top, y2: bottom, class: "decision-line" }));
  const size = 7;
  if (decision.action === "ramp") {
    group.append(svgEl("polygon", { class: "decision-shape",
      points: `${x},${top - size} ${x - size},${top + size} ${x + size},${top + size}` }));
  } else if (decision.action === "rollback") {
    group.append(svgEl("rect", { class: "decision-shape", x: x - size, y: top - size,
      width: 2 * size, height: 2 * size }));
  } else {
    group.append(svgEl("circle", { class: "decision-shape", cx: x, cy: top, r: size }));
  }
  return group;
}

// The interval over time for one candidate: band (low..high), line (difference), zero line,
// decision markers. Coordinates are in a fixed viewBox so the page scales it.
function historyChart(candidate, points, decisions, metric) {
  const width = 900, height = 260, left = 70, right = 20, top = 24, bottom = 40;
  const root = svgEl("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img",
    class: "history-chart", "data-candidate": candidate, "data-points": points.length });
  root.append(svgEl("title", {}, `${candidate}: difference in ${METRIC_NAMES[metric] || metric}` +
    " to the control with its always-valid 95% interval"));
  const mine = decisions.filter((d) => d.candidate === candidate && d.feedbacks !== undefined);
  const xs = points.map((p) => p.feedbacks).concat(mine.map((d) => d.feedbacks));
  const ys = points.flatMap((p) => [p.low, p.high]).concat([0]);
  const x0 = xs.length ? Math.min(...xs) : 0;
  const x1 = xs.length ? Math.max(...xs) : 1;
  const pad = (Math.max(...ys) - Math.min(...ys)) * 0.08 || 0.05;
  // No axis past what the difference can be: accuracy in [-1, 1], MAE in [-4, 4] stars.
  const bound = metric === "mae" ? 4 : 1;
  const y0 = Math.max(Math.min(...ys) - pad, -bound), y1 = Math.min(Math.max(...ys) + pad, bound);
  const x = (v) => left + ((v - x0) / (x1 - x0 || 1)) * (width - left - right);
  const y = (v) => top + (1 - (v - y0) / (y1 - y0)) * (height - top - bottom);

  for (const t of ticks(y0, y1, 5)) {
    root.append(svgEl("line", { x1: left, x2: width - right, y1: y(t), y2: y(t), class: "grid" }));
    root.append(svgEl("text", { x: left - 6, y: y(t) + 4, class: "label", "text-anchor": "end" },
      fmt(t, 3)));
  }
  for (const t of ticks(x0, x1, 6)) {
    root.append(svgEl("text", { x: x(t), y: height - bottom + 16, class: "label",
      "text-anchor": "middle" }, Math.round(t)));
  }
  root.append(svgEl("text", { x: (left + width - right) / 2, y: height - 6, class: "label",
    "text-anchor": "middle" }, "feedbacks"));
  if (!points.length) {
    root.append(svgEl("text", { x: left + 10, y: top + 20, class: "label" },
      "not enough feedback for an interval yet"));
  } else {
    const upper = points.map((p) => `${x(p.feedbacks)},${y(p.high)}`);
    const lower = points.map((p) => `${x(p.feedbacks)},${y(p.low)}`).reverse();
    root.append(svgEl("polygon", { class: "band", points: upper.concat(lower).join(" ") }));
    root.append(svgEl("polyline", { class: "difference",
      points: points.map((p) => `${x(p.feedbacks)},${y(p.difference)}`).join(" ") }));
  }
  root.append(svgEl("line", { x1: left, x2: width - right, y1: y(0), y2: y(0), class: "zero" }));
  root.append(svgEl("text", { x: width - right, y: y(0) - 4, class: "label",
    "text-anchor": "end" }, "no difference"));
  for (const d of mine) root.append(decisionMarker(d, x(d.feedbacks), top - 10, height - bottom));
  return root;
}

function renderHistory(report) {
  const metric = report.primary_metric || "accuracy";
  document.getElementById("primary-metric").textContent =
    `${METRIC_NAMES[metric] || metric} (${metric === "mae" ? "lower" : "higher"} is better)`;
  const history = report.interval_history || {};
  const decisions = report.decisions || [];
  const charts = report.variants.slice(1).map((v) => {
    const figure = el("figure", undefined, "history");
    figure.append(el("figcaption", `${v.name} vs ${report.control}`));
    figure.append(historyChart(v.name, history[v.name] || [], decisions, metric));
    return figure;
  });
  document.getElementById("interval-history").replaceChildren(...charts);
}

function renderAutopilot(report) {
  const settings = report.autopilot || {};
  const status = report.status || "running";
  const mode = settings.mode || "off";
  const parts = [`experiment ${status.replace("_", " ")}`, `autopilot ${mode}`];
  if (mode !== "off" && settings.ramp) parts.push(`ramp ${settings.ramp.join(" → ")}`);
  if (mode !== "off" && settings.min_feedback !== undefined) {
    parts.push(`acts after ${settings.min_feedback} feedbacks`);
  }
  const line = document.getElementById("autopilot-status");
  line.textContent = parts.join(" · ");
  line.className = `status ${status}`;
  const decisions = report.decisions || [];
  const items = decisions.length ? decisions.map((d) => {
    const item = el("li", undefined, `decision-${d.action}`);
    item.append(el("span", `${ACTION_SHAPES[d.action] || "·"} ${d.action}`, "action"));
    item.append(el("span", ` ${d.candidate} ${fmt(d.weight_before, 2)} → ` +
      `${fmt(d.weight_after, 2)} at ${d.feedbacks} feedbacks` +
      `${d.applied ? "" : " (dry run, not applied)"} · ${new Date(d.at).toLocaleString()}`));
    item.append(el("div", d.reason, "small"));
    return item;
  }) : [el("li", "no decisions yet", "small")];
  document.getElementById("decisions").replaceChildren(...items);
}

function renderGuardrails(report) {
  const body = document.getElementById("guardrails").tBodies[0];
  const rows = (report.guardrails || []).map((g) => {
    const tr = el("tr");
    const digits = g.metric === "latency_p95_ms" ? 1 : 3;
    tr.append(el("td", g.candidate), el("td", GUARDRAIL_NAMES[g.metric] || g.metric),
      el("td", fmt(g.control_value, digits), "num"), el("td", fmt(g.candidate_value, digits), "num"),
      el("td", `+${fmt(g.limit, digits)}`, "num"),
      el("td", g.status.replaceAll("_", " "), `guardrail ${g.status}`));
    return tr;
  });
  body.replaceChildren(...(rows.length ? rows : [el("tr")]));
  if (!rows.length) body.rows[0].append(el("td", "no guardrail data yet", "small"));
}

function renderTrust(report) {
  const banner = document.getElementById("trust-banner");
  const untrusted = report.trustworthy === false;
  banner.hidden = !untrusted;
  document.getElementById("trust-cause").textContent = untrusted
    ? (report.srm_cause || "the sample-ratio check failed") +
      ". Nothing is promoted or ramped until the split follows the weights again."
    : "";
}

function render(report) {
  const variants = report.variants.map((v, i) => ({ ...v, color: COLORS[i % COLORS.length] }));
  document.getElementById("experiment").textContent = report.experiment;
  document.getElementById("revision").textContent = report.revision ?? "–";
  document.getElementById("control").textContent = report.control;
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  document.getElementById("verdict").textContent = report.verdict;
  document.getElementById("verdict-box").className = "verdict " + verdictClass(report);
  const srm = report.sample_ratio;
  document.getElementById("srm").textContent = srm.mismatch
    ? `Sample ratio mismatch (${pText(srm.p_value)}): the split does not follow the weights.`
    : `Split follows the weights (sample-ratio check ${pText(srm.p_value)}).`;

  renderTrust(report);
  renderHistory(report);
  renderAutopilot(report);
  renderGuardrails(report);
  document.getElementById("traffic").replaceChildren(trafficChart(variants));
  const acc = variants.map((v) => ({ name: v.name, color: v.color, interval: v.accuracy }));
  document.getElementById("accuracy").replaceChildren(
    intervalChart(acc, domainOf(acc.map((r) => r.interval), 0, 1), 3));
  const mae = variants.map((v) => ({ name: v.name, color: v.color, interval: v.mae }));
  document.getElementById("mae").replaceChildren(
    intervalChart(mae, domainOf(mae.map((r) => r.interval), 0), 2));
  const latency = variants.flatMap((v) => [
    { name: `${v.name} p50`, color: v.color, interval: v.latency_p50_ms },
    { name: `${v.name} p95`, color: v.color, interval: v.latency_p95_ms },
  ]);
  document.getElementById("latency").replaceChildren(
    intervalChart(latency, domainOf(latency.map((r) => r.interval), 0), 1));
  document.getElementById("stars").replaceChildren(starsChart(variants));

  fillTable(document.getElementById("comparisons"), report.comparisons.map((c) => [
    [c.shadow_version === null || c.shadow_version === undefined
      ? `${c.candidate} vs ${c.control}`
      : `${c.candidate} vs ${c.control}, paired on ${c.shadow_version}'s shadow answers`],
    [c.metric === "mae" ? "MAE" : "accuracy"],
    [withInterval({ value: c.difference, low: c.low, high: c.high }, 3), true],
    [fmtP(c.p_value), true], [fmtP(c.p_value_holm), true],
    [`${fmtP(c.p_value_fixed)} (${c.fixed_test})`, true], [c.significant ? "yes" : "no"],
    [c.significant ? "–" : (c.feedback_needed ?? "–"), true],
  ]));
  fillTable(document.getElementById("variants"), variants.map((v) => [
    [v.name], [v.version], [fmt(v.weight, 2), true], [v.requests, true], [v.units, true],
    [v.feedback, true], [withInterval(v.accuracy, 3), true], [withInterval(v.mae, 2), true],
    [withInterval(v.off_by_one, 3), true], [withInterval(v.latency_p50_ms, 1), true],
    [withInterval(v.latency_p95_ms, 1), true],
  ]));
  document.getElementById("overrides").textContent =
    `${report.override_requests} requests forced a version with X-Model-Version (not compared).`;
  document.getElementById("shadow").textContent = report.shadow.length
    ? report.shadow.map((s) => `Shadow ${s.version}: ${s.copies} copies, ${s.errors} errors, ` +
      `agreement with live answers ${withInterval(s.agreement, 3)}.`).join(" ")
    : "No shadow traffic.";
}

async function refresh() {
  try {
    const response = await fetch(REPORT_URL, { cache: "no-store" });
    const body = await response.json();
    if (!response.ok) {
      document.getElementById("verdict").textContent =
        (body && body.error && body.error.message) || `the report answered ${response.status}`;
      document.getElementById("verdict-box").className = "verdict pending";
      return;
    }
    render(body);
  } catch (error) {
    document.getElementById("verdict").textContent = `cannot load the report: ${error}`;
  }
}

refresh();
setInterval(refresh, REFRESH_MS);
