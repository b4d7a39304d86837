// Small DOM helpers and the pictures (sparklines, a stacked chart of job states).

export function h(tag, attributes = {}, ...children) {
  const element = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) element.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(element.dataset, value);
    else element.setAttribute(key, value === true ? "" : value);
  }
  element.append(...children.flat().filter((c) => c !== null && c !== undefined));
  return element;
}

export function clear(element, ...children) {
  element.replaceChildren(...children.flat());
  return element;
}

const SVG = "http://www.w3.org/2000/svg";

function svg(tag, attributes = {}) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attributes)) element.setAttribute(key, value);
  return element;
}

// A line of the last values (0..max), newest on the right.
export function sparkline(values, { max = 100, width = 160, height = 32, label = "" } = {}) {
  const picture = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  picture.append(Object.assign(svg("title"), { textContent: label }));
  if (values.length > 1) {
    const step = width / (values.length - 1);
    const points = values.map((v, i) =>
      `${(i * step).toFixed(1)},${(height - (Math.min(v, max) / max) * (height - 2) - 1).toFixed(1)}`);
    picture.append(svg("polyline", { points: points.join(" "), class: "spark" }));
  }
  return picture;
}

export const STATE_COLOURS = {
  NEW: "#9aa5b1", QUEUED: "#f0b429", STAGE_IN: "#7cc4fa", ACTIVE: "#2186eb",
  STAGE_OUT: "#7cc4fa", CLEANUP: "#bcccdc", COMPLETED: "#3ebd93", FAILED: "#e12d39",
  CANCELED: "#616e7c",
};

// Job states over time: one stacked column per snapshot ({state: count}).
export function stateChart(snapshots, { width = 320, height = 80 } = {}) {
  const picture = svg("svg", { width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
  picture.append(Object.assign(svg("title"), { textContent: "job states over time" }));
  const top = Math.max(1, ...snapshots.map((s) => Object.values(s).reduce((a, b) => a + b, 0)));
  const column = width / Math.max(snapshots.length, 1);
  snapshots.forEach((snapshot, i) => {
    let y = height;
    for (const [state, colour] of Object.entries(STATE_COLOURS)) {
      const size = ((snapshot[state] ?? 0) / top) * height;
      if (!size) continue;
      y -= size;
      picture.append(svg("rect", {
        x: (i * column).toFixed(1), y: y.toFixed(1), width: Math.max(column - 1, 1).toFixed(1),
        height: size.toFixed(1), fill: colour,
      }));
    }
  });
  return picture;
}

export function badge(state) {
  return h("span", { class: "badge", style: `background:${STATE_COLOURS[state] ?? "#ccc"}` }, state);
}

export function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  for (; n >= 1024 && i < units.length - 1; i++) n /= 1024;
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
