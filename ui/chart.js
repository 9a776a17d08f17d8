// Charts drawn as SVG (no library, no inline style: colours come from classes in style.css).

const NS = "http://www.w3.org/2000/svg";
const W = 480;
const H = 160;
const PAD = { l: 44, r: 8, t: 8, b: 20 };

function s(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
  if (text !== undefined) el.textContent = text;
  return el;
}

function short(v) {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e6) return `${(v / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${(v / 1e3).toFixed(1)}k`;
  if (a < 0.01) return v.toExponential(0);
  return a < 10 ? v.toFixed(2) : v.toFixed(0);
}

function frame(svg, max, labels) {
  const x0 = PAD.l;
  const x1 = W - PAD.r;
  const y0 = H - PAD.b;
  const y1 = PAD.t;
  svg.append(s("line", { class: "axis", x1: x0, y1: y0, x2: x1, y2: y0 }));
  svg.append(s("line", { class: "axis", x1: x0, y1, x2: x0, y2: y0 }));
  svg.append(s("text", { class: "tick", x: x0 - 4, y: y1 + 8, "text-anchor": "end" }, short(max)));
  svg.append(s("text", { class: "tick", x: x0 - 4, y: y0, "text-anchor": "end" }, "0"));
  if (labels.length) {
    svg.append(s("text", { class: "tick", x: x0, y: H - 4 }, labels[0]));
    svg.append(s("text", { class: "tick", x: x1, y: H - 4, "text-anchor": "end" }, labels[labels.length - 1]));
  }
  return { x0, x1, y0, y1 };
}

function figure(title, svg, legend) {
  const box = document.createElement("figure");
  box.className = "chart";
  const h = document.createElement("h3");
  h.textContent = title;
  box.append(h, svg);
  if (legend) box.append(legend);
  return box;
}

function legendOf(series) {
  if (series.length < 2) return null;
  const div = document.createElement("div");
  div.className = "legend";
  series.forEach((se, i) => {
    const span = document.createElement("span");
    const sw = document.createElement("span");
    sw.className = `swatch s${i + 1}`;
    span.append(sw, se.name);
    div.append(span);
  });
  return div;
}

// `series`: [{name, values: [number|null]}] sharing `labels` (x axis, oldest first).
export function lineChart(title, labels, series, unit = "") {
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const all = series.flatMap((se) => se.values.filter((v) => v !== null && v !== undefined));
  const max = Math.max(...all, 0) || 1;
  const last = series.map((se) => `${se.name} ${short(se.values[se.values.length - 1] ?? 0)}${unit}`).join(", ");
  svg.setAttribute("aria-label", `${title}: ${labels.length} points; latest ${last || "none"}`);
  svg.append(s("title", {}, title));
  const f = frame(svg, max, labels);
  const n = Math.max(labels.length - 1, 1);
  series.forEach((se, i) => {
    const pts = se.values
      .map((v, j) => (v === null || v === undefined ? null : `${f.x0 + ((f.x1 - f.x0) * j) / n},${f.y0 - ((f.y0 - f.y1) * v) / max}`))
      .filter(Boolean);
    // One point so far: a level line across the chart rather than an invisible dot.
    if (pts.length === 1) pts.push(`${f.x1},${pts[0].split(",")[1]}`);
    if (pts.length) svg.append(s("polyline", { class: `line s${i + 1}`, points: pts.join(" ") }));
  });
  if (!all.length) svg.append(s("text", { class: "tick", x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
  return figure(title, svg, legendOf(series));
}

// One bar per label.
export function barChart(title, labels, values, format = short) {
  const svg = s("svg", { viewBox: `0 0 ${W} ${H}`, role: "img" });
  const max = Math.max(...values, 0) || 1;
  svg.setAttribute("aria-label", `${title}: ${labels.map((l, i) => `${l} ${format(values[i])}`).join(", ") || "no data"}`);
  svg.append(s("title", {}, title));
  const f = frame(svg, max, labels);
  const slot = (f.x1 - f.x0) / Math.max(values.length, 1);
  values.forEach((v, i) => {
    const hgt = ((f.y0 - f.y1) * v) / max;
    const bar = s("rect", { class: "bar", x: f.x0 + i * slot + slot * 0.15, y: f.y0 - hgt, width: slot * 0.7, height: Math.max(hgt, 0) });
    bar.append(s("title", {}, `${labels[i]}: ${format(v)}`));
    svg.append(bar);
  });
  if (!values.length) svg.append(s("text", { class: "tick", x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
  return figure(title, svg, null);
}
