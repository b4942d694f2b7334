// /docs: renders the gateway's /openapi.json (the repository's openapi.yaml) as a page.
// Self-contained: no renderer is fetched from anywhere.
"use strict";

const el = (tag, props = {}, ...children) => {
  const node = document.createElement(tag);
  Object.assign(node, props);
  for (const child of children) node.append(child);
  return node;
};

function refName(ref) { return ref.split("/").pop(); }

// A schema as short readable text: $refs by name, one level of properties.
function schemaText(spec, schema, depth = 0) {
  if (!schema) return "";
  if (schema.$ref) return refName(schema.$ref);
  if (schema.oneOf) return schema.oneOf.map((s) => schemaText(spec, s, depth)).join(" | ");
  if (schema.allOf) return schema.allOf.map((s) => schemaText(spec, s, depth)).join(" & ");
  if (schema.type === "array") return `[${schemaText(spec, schema.items, depth)}]`;
  if (schema.type === "object" && schema.properties && depth < 1) {
    const req = new Set(schema.required || []);
    const fields = Object.entries(schema.properties)
      .map(([k, v]) => `${k}${req.has(k) ? "" : "?"}: ${schemaText(spec, v, depth + 1)}`);
    return `{${fields.join(", ")}}`;
  }
  let text = schema.type || "any";
  if (schema.enum) text = schema.enum.map((v) => JSON.stringify(v)).join(" | ");
  if (schema.format) text += ` (${schema.format})`;
  if (schema.nullable) text += " | null";
  return text;
}

function resolve(spec, obj) {
  if (obj && obj.$ref) {
    const parts = obj.$ref.replace(/^#\//, "").split("/");
    return parts.reduce((o, k) => (o ? o[k] : undefined), spec);
  }
  return obj;
}

function operation(spec, path, method, op, shared) {
  const body = el("div", { className: "body" });
  if (op.description) body.append(el("p", {}, op.description));
  const params = [...shared, ...(op.parameters || [])].map((p) => resolve(spec, p));
  if (params.length) {
    const table = el("table", {}, el("tr", {}, el("th", {}, "Parameter"), el("th", {}, "In"),
      el("th", {}, "Type"), el("th", {}, "Description")));
    for (const p of params) {
      table.append(el("tr", {}, el("td", { className: "mono" }, p.name + (p.required ? "" : "?")),
        el("td", {}, p.in), el("td", { className: "mono" }, schemaText(spec, p.schema)),
        el("td", {}, p.description || "")));
    }
    body.append(el("h4", {}, "Parameters"), table);
  }
  if (op.requestBody) {
    const media = (op.requestBody.content || {})["application/json"] || {};
    body.append(el("h4", {}, "Request body (application/json)"),
      el("p", { className: "mono" }, schemaText(spec, media.schema)));
    const examples = media.examples ? Object.values(media.examples).map((e) => e.value) : [];
    if (examples.length) body.append(el("pre", {}, JSON.stringify(examples[0], null, 2)));
  }
  const responses = el("table", {}, el("tr", {}, el("th", {}, "Status"), el("th", {}, "Description"),
    el("th", {}, "Body")));
  for (const [status, raw] of Object.entries(op.responses || {})) {
    const r = resolve(spec, raw);
    const media = ((r.content || {})["application/json"] || {}).schema;
    responses.append(el("tr", {}, el("td", { className: "mono" }, status),
      el("td", {}, r.description || ""), el("td", { className: "mono" }, schemaText(spec, media))));
  }
  body.append(el("h4", {}, "Responses"), responses);
  const secured = op.security ? op.security.length > 0 : (spec.security || []).length > 0;
  const summary = el("summary", {}, el("span", { className: `verb ${method}` }, method.toUpperCase()),
    el("code", {}, path), el("span", {}, op.summary || ""),
    el("span", { className: "muted" }, secured ? "" : "(no key)"));
  const details = el("details", { className: "op", id: op.operationId || "" }, summary, body);
  return details;
}

async function main() {
  const response = await fetch("/openapi.json", { cache: "no-store" });
  if (!response.ok) {
    document.getElementById("description").textContent = `GET /openapi.json: HTTP ${response.status}`;
    return;
  }
  const spec = await response.json();
  document.title = spec.info.title + " docs";
  document.getElementById("title").textContent = spec.info.title;
  document.getElementById("version").textContent = `v${spec.info.version} · OpenAPI ${spec.openapi}`;
  document.getElementById("description").textContent = spec.info.description || "";
  const schemes = (spec.components || {}).securitySchemes || {};
  const sec = document.getElementById("security");
  for (const [name, s] of Object.entries(schemes)) {
    const how = s.type === "http" ? `Authorization: ${s.scheme}` : `${s.in} ${s.name}`;
    sec.append(el("p", {}, el("strong", {}, name), `: ${how}. ${s.description || ""}`));
  }
  const ops = document.getElementById("operations");
  for (const [path, item] of Object.entries(spec.paths)) {
    for (const method of ["get", "post", "put", "patch", "delete"]) {
      if (item[method]) ops.append(operation(spec, path, method, item[method], item.parameters || []));
    }
  }
  const schemas = document.getElementById("schemas");
  for (const [name, schema] of Object.entries((spec.components || {}).schemas || {})) {
    schemas.append(el("details", { className: "op", id: "schema-" + name },
      el("summary", {}, el("code", {}, name), el("span", { className: "muted" }, schema.description || "")),
      el("div", { className: "body" }, el("pre", {}, JSON.stringify(schema, null, 2)))));
  }
}

main();
