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
  if (!interval) return "–";
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
  const significant = report.comparisons.filter((c) => c.significant);
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
    [`${c.candidate} vs ${c.control}`], [c.metric === "mae" ? "MAE" : "accuracy"],
    [fmt(c.difference, 3), true], [fmtP(c.p_value), true],
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
