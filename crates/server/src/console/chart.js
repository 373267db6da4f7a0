// A stacked bar chart in SVG: one bar per day, one segment per model. Drawn here rather
// than by a library, so the console stays small and loads nothing from elsewhere.

const NS = "http://www.w3.org/2000/svg";
const PALETTE = ["#3867d6", "#20bf6b", "#f7b731", "#eb3b5a", "#8854d0", "#0fb9b1", "#fa8231", "#778ca3"];

export function color(i) {
  return PALETTE[i % PALETTE.length];
}

function svg(tag, attrs, text) {
  const node = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

// The smallest 1, 2 or 5 times a power of ten at or above `v`: round axis steps.
function niceStep(v) {
  const p = 10 ** Math.floor(Math.log10(v));
  return [1, 2, 5, 10].map((m) => m * p).find((s) => s >= v);
}

// Draws into `root`: `days` are the x axis (YYYY-MM-DD), `models` the stack order (and
// colours), `value(day, model)` a segment's height; `label` formats axis values.
export function stackedBars(root, { days, models, value, label }) {
  // Drawn at the element's own width, so text is not scaled with the bars.
  const W = Math.max(320, Math.round(root.getBoundingClientRect().width) || 760);
  const [H, left, right, top, bottom] = [240, 56, 12, 12, 28];
  const plotW = W - left - right;
  const plotH = H - top - bottom;
  root.setAttribute("viewBox", `0 0 ${W} ${H}`);
  root.replaceChildren();
  const totals = days.map((d) => models.reduce((s, m) => s + value(d, m), 0));
  const max = Math.max(...totals, 0);
  if (max === 0) {
    root.append(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle", class: "empty" }, "No usage in this period"));
    return;
  }
  const step = niceStep(max / 4);
  const ceiling = Math.ceil(max / step) * step;
  const y = (v) => top + plotH - (v / ceiling) * plotH;
  for (let v = 0; v <= ceiling + step / 2; v += step) {
    root.append(
      svg("line", { x1: left, x2: W - right, y1: y(v), y2: y(v), class: "grid" }),
      svg("text", { x: left - 6, y: y(v) + 4, "text-anchor": "end", class: "axis" }, label(v)),
    );
  }
  const slot = plotW / days.length;
  const width = Math.max(2, Math.min(48, slot * 0.7));
  const every = Math.ceil(days.length / 10);
  days.forEach((day, i) => {
    const x = left + i * slot + (slot - width) / 2;
    let base = 0;
    models.forEach((m, j) => {
      const v = value(day, m);
      if (v <= 0) return;
      const bar = svg("rect", {
        x,
        y: y(base + v),
        width,
        height: Math.max(1, y(base) - y(base + v)),
        fill: color(j),
        class: "bar",
        "data-day": day,
        "data-model": m,
        "data-value": v,
      });
      bar.append(svg("title", {}, `${day} · ${m}: ${label(v)}`));
      root.append(bar);
      base += v;
    });
    // Labelled back from today, so the newest day always has its date.
    if ((days.length - 1 - i) % every === 0) {
      root.append(svg("text", { x: x + width / 2, y: H - 8, "text-anchor": "middle", class: "axis" }, day.slice(5)));
    }
  });
}
