// A form generated from a JSON Schema (the psij JobSpec): what the contract says, nothing
// spelt here. Strings, numbers, booleans and string lists get inputs; maps (environment,
// custom_attributes) a KEY=VALUE textarea; nested objects a fieldset. Fields the schema marks
// required come first; the rest are under "More".

import { h } from "./dom.js";

function resolve(schema, root) {
  if (schema?.$ref) return resolve(root.$defs[schema.$ref.split("/").pop()], root);
  const options = schema?.anyOf?.filter((s) => s.type !== "null");
  if (options?.length === 1) return { ...resolve(options[0], root), nullable: true, default: schema.default, description: schema.description ?? options[0].description };
  return schema;
}

function field(name, schema, root, path, defaults) {
  const s = resolve(schema, root);
  const id = path.join(".");
  const title = schema.title ?? s.title ?? name;
  const hint = schema.description ?? s.description ?? "";
  const shown = defaults?.[name];
  if (s.type === "object" && s.properties) {
    return h("fieldset", { dataset: { field: id, kind: "object" } }, h("legend", {}, title),
      ...Object.entries(s.properties).map(([k, v]) => field(k, v, root, [...path, k], shown)));
  }
  let input;
  if (s.type === "boolean") {
    input = h("input", { type: "checkbox", name: id, checked: (s.default ?? schema.default) === true });
  } else if (s.type === "array") {
    input = h("textarea", { name: id, rows: 2, placeholder: "one per line" });
  } else if (s.type === "object") {
    input = h("textarea", { name: id, rows: 2, placeholder: "KEY=VALUE, one per line" });
  } else if (s.type === "integer" || s.type === "number") {
    input = h("input", { type: "number", name: id, step: s.type === "integer" ? 1 : "any" });
  } else {
    input = h("input", { name: id });
  }
  input.dataset.kind = s.type ?? "string";
  if (shown !== undefined && shown !== null) input.placeholder = `site default: ${JSON.stringify(shown)}`;
  return h("label", { title: hint }, h("span", {}, title), input, hint ? h("small", {}, hint) : null);
}

export function schemaForm(schema, { defaults = {}, extra = [], submit = "Submit" } = {}) {
  const required = new Set(schema.required ?? []);
  const names = Object.keys(schema.properties ?? {});
  const first = names.filter((n) => required.has(n));
  const rest = names.filter((n) => !required.has(n));
  return h("form", { class: "schema-form" },
    ...first.map((n) => field(n, schema.properties[n], schema, [n], defaults)),
    ...extra,
    h("details", {}, h("summary", {}, "More"),
      ...rest.map((n) => field(n, schema.properties[n], schema, [n], defaults))),
    h("button", { type: "submit" }, submit));
}

function value(input) {
  const text = input.value.trim();
  switch (input.dataset.kind) {
    case "boolean": return input.checked;
    case "array": return text ? text.split("\n").map((l) => l.trim()).filter(Boolean) : undefined;
    case "object": {
      if (!text) return undefined;
      const pairs = text.split("\n").filter((l) => l.includes("=")).map((l) => {
        const at = l.indexOf("=");
        const raw = l.slice(at + 1).trim();
        const number = Number(raw);
        return [l.slice(0, at).trim(), raw !== "" && !Number.isNaN(number) ? number : raw];
      });
      return Object.fromEntries(pairs);
    }
    case "integer": case "number": return text ? Number(text) : undefined;
    default: return text || undefined;
  }
}

// The form's values as the schema's JSON: only what was filled in (defaults stay the endpoint's).
export function formValue(form) {
  const result = {};
  for (const input of form.querySelectorAll("[name]")) {
    if (input.closest("[data-extra]")) continue;
    const v = value(input);
    if (v === undefined || (input.dataset.kind === "boolean" && v === (input.defaultChecked))) continue;
    const path = input.name.split(".");
    let target = result;
    for (const key of path.slice(0, -1)) target = target[key] ??= {};
    target[path.at(-1)] = v;
  }
  return result;
}
