// The explorer: endpoints with live presence, a host's metrics, jobs with live states and
// output, a submit form made from the psij JobSpec schema, tasks by state, staging files.

import * as api from "./api.js";
import { badge, bytes, clear, h, sparkline, stateChart } from "./dom.js";
import { formValue, schemaForm } from "./form.js";

const REFRESH = 2000; // ms between presence and metrics refreshes
const HISTORY = 60; // samples kept per sparkline and chart
const $ = (selector) => document.querySelector(selector);

const view = {
  endpoints: [],
  selected: null,
  tab: null,
  metrics: {}, // endpoint -> {cpu: [], memory: [], load: []}
  jobs: new Map(), // job_id -> job (of the selected endpoint)
  snapshots: [], // job-state counts over time
  stops: [], // what to stop when the endpoint or tab changes
  refresher: null, // the presence refresh's interval
};

function say(text) {
  $("#status").textContent = text;
}

function failed(error) {
  say(error.message);
  console.error(error);
}

// -- login -----------------------------------------------------------------------------------

$("#login").addEventListener("submit", async (event) => {
  event.preventDefault();
  const form = new FormData(event.target);
  let user;
  try {
    user = await api.login(form.get("user"), form.get("password"));
  } catch (error) {
    $("#login-error").textContent =
      error.status === 401 ? "Wrong user or password." : error.message;
    return;
  }
  event.target.reset(); // the password is not kept in the page
  await enter(user);
});

// The page after a login, or after a reload while the session cookie still holds.
async function enter(user) {
  try {
    view.endpoints = await api.get("/endpoints");
  } catch (error) {
    $("#login-error").textContent = error.message;
    return;
  }
  $("#login-error").textContent = "";
  $("#who").textContent = `as ${user}`;
  $("#login").hidden = true;
  $("#main").hidden = false;
  $("#logout").hidden = false;
  renderEndpoints();
  view.refresher ??= setInterval(refreshEndpoints, REFRESH);
}

$("#logout").addEventListener("click", async () => {
  stopAll();
  try {
    await api.logout();
  } catch (error) {
    console.warn(`logout: ${error.message}`);
  }
  location.reload();
});

// A session that ended under the page (expired, or the gateway restarted): back to the form.
api.whenEnded(() => {
  stopAll();
  clearInterval(view.refresher);
  view.refresher = null;
  $("#main").hidden = true;
  $("#logout").hidden = true;
  $("#who").textContent = "";
  $("#login").hidden = false;
  $("#login-error").textContent = "Your session has ended; log in again.";
});

api.resume().then((user) => user && enter(user)).catch(failed);

// -- endpoints -------------------------------------------------------------------------------

async function refreshEndpoints() {
  try {
    view.endpoints = await api.get("/endpoints");
    renderEndpoints();
  } catch (error) {
    failed(error);
  }
}

function renderEndpoints() {
  $("#endpoint-count").textContent = `(${view.endpoints.length} online)`;
  clear($("#endpoints"), view.endpoints.map((info) =>
    h("li", {
      class: info.endpoint === view.selected ? "selected" : "",
      dataset: { endpoint: info.endpoint },
      onclick: () => select(info.endpoint),
    },
    h("span", { class: info.draining ? "dot draining" : "dot online" }),
    h("b", {}, info.endpoint), info.pool ? h("small", {}, ` pool ${info.pool}`) : null,
    h("div", { class: "muted" }, `${info.host} · ${info.host_role} · ${info.user}`),
    h("div", { class: "muted" }, info.plugins.map((p) => p.name).join(", ")))));
  if (view.selected && !view.endpoints.some((i) => i.endpoint === view.selected)) {
    $("#endpoint-host").textContent = "offline: requests wait until it is back";
  }
}

function info(endpoint = view.selected) {
  return view.endpoints.find((i) => i.endpoint === endpoint);
}

function serves(plugin) {
  return info()?.plugins.some((p) => p.name === plugin);
}

function stopAll() {
  view.stops.splice(0).forEach((stop) => stop());
}

function select(endpoint) {
  stopAll();
  view.selected = endpoint;
  view.jobs = new Map();
  view.snapshots = [];
  const found = info(endpoint);
  $("#endpoint").hidden = false;
  $("#endpoint-name").textContent = endpoint;
  $("#endpoint-host").textContent = `${found.host} (${found.host_role}), orbit_mq ${found.version}`;
  const tabs = [["host", "Host"], ["jobs", "Jobs", "psij"], ["tasks", "Tasks", "tasks"],
    ["files", "Files", "staging"]].filter(([, , plugin]) => !plugin || serves(plugin));
  clear($("#tabs"), tabs.map(([id, title]) =>
    h("button", { role: "tab", dataset: { tab: id }, onclick: () => open(id) }, title)));
  renderEndpoints();
  open(tabs.some(([id]) => id === "jobs") ? "jobs" : "host");
}

function open(tab) {
  stopAll();
  view.tab = tab;
  for (const button of document.querySelectorAll("#tabs button")) {
    button.setAttribute("aria-selected", button.dataset.tab === tab);
  }
  const panel = clear($("#panel"));
  ({ host: hostTab, jobs: jobsTab, tasks: tasksTab, files: filesTab })[tab](panel)
    .catch(failed);
}

function every(ms, work) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    try {
      await work();
    } catch (error) {
      failed(error);
    }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  view.stops.push(() => { stopped = true; clearTimeout(timer); });
}

// -- host ------------------------------------------------------------------------------------

async function hostTab(panel) {
  const endpoint = view.selected;
  const history = (view.metrics[endpoint] ??= { cpu: [], memory: [], load: [] });
  const pictures = h("div", { class: "metrics" });
  const partitions = h("div");
  panel.append(h("h3", {}, "Host"), pictures, partitions);
  if (serves("sysinfo")) {
    every(REFRESH, async () => {
      const m = await api.method(endpoint, "sysinfo", "metrics");
      const push = (list, v) => { list.push(v); list.splice(0, list.length - HISTORY); };
      push(history.cpu, m.cpu.percent);
      push(history.memory, m.memory.percent);
      push(history.load, m.cpu.load_1m ?? 0);
      const cores = m.cpu.logical || 1;
      clear(pictures,
        metric("CPU", `${m.cpu.percent.toFixed(0)} % of ${cores}`, history.cpu, 100),
        metric("Memory", `${m.memory.percent.toFixed(0)} % of ${bytes(m.memory.total)}`,
          history.memory, 100),
        metric("Load", (m.cpu.load_1m ?? 0).toFixed(2), history.load, cores));
    });
  }
  if (serves("queue_info")) {
    const found = await api.method(endpoint, "queue_info", "get_info");
    clear(partitions, h("h3", {}, `Partitions (${found.backend})`), table(
      ["partition", "state", "nodes idle/total", "cpus idle/total", "max walltime"],
      found.partitions.map((p) => [p.name + (p.default ? " *" : ""), p.state,
        `${p.nodes?.idle ?? "?"}/${p.nodes?.total ?? "?"}`,
        `${p.cpus?.idle ?? "?"}/${p.cpus?.total ?? "?"}`, p.max_walltime ?? ""])));
  }
}

function metric(title, now, values, max) {
  return h("figure", {}, h("figcaption", {}, `${title}: ${now}`),
    sparkline(values, { max, label: `${title} over the last ${values.length} samples` }));
}

function table(columns, rows, onRow) {
  return h("table", {}, h("thead", {}, h("tr", {}, columns.map((c) => h("th", {}, c)))),
    h("tbody", {}, rows.map((cells, i) => h("tr", { onclick: onRow && (() => onRow(i)) },
      cells.map((c) => h("td", {}, c))))));
}

// -- jobs ------------------------------------------------------------------------------------

async function jobsTab(panel) {
  const endpoint = view.selected;
  const [description, executors, health] = await Promise.all([
    api.get(`/endpoints/${endpoint}/psij`),
    api.method(endpoint, "psij", "executors"),
    api.method(endpoint, "psij", "health"),
  ]);
  const siteDefaults = health.details.site_defaults ?? {};
  const submit = description.methods.find((m) => m.name === "submit_job").params;
  const specSchema = { ...submit.$defs.JobSpec, $defs: submit.$defs };
  const defaultExecutor = submit.properties.executor?.default ?? executors[0];
  const executor = h("label", { "data-extra": "" }, h("span", {}, "Executor"),
    h("select", { name: "executor" }, h("option", { value: "" }, `default (${defaultExecutor})`),
      executors.map((e) => h("option", {}, e))));
  const hookUrl = h("label", { "data-extra": "" }, h("span", {}, "Webhook URL (optional)"),
    h("input", { name: "callback", placeholder: "https://… gets every state change" }));
  const hookSecret = h("label", { "data-extra": "" }, h("span", {}, "Webhook secret"),
    h("input", { name: "callback_secret", type: "password", autocomplete: "off" }));
  const defaultsShown = h("p", { class: "muted", id: "site-defaults", "data-extra": "" });
  const showDefaults = () => {
    const chosen = executor.querySelector("select").value || defaultExecutor;
    const given = siteDefaults[chosen] ?? {};
    defaultsShown.textContent = Object.keys(given).length
      ? `Site defaults (${chosen}), merged under your custom attributes: ${JSON.stringify(given)}`
      : `No site defaults for ${chosen}.`;
  };
  executor.querySelector("select").addEventListener("change", showDefaults);
  showDefaults();
  const form = schemaForm(specSchema,
    { extra: [executor, defaultsShown, hookUrl, hookSecret], submit: "Submit job" });
  form.id = "submit-form";
  const list = h("div", { id: "jobs" });
  const chart = h("div", { class: "chart" });
  const hooks = h("div", { id: "webhooks" });
  panel.append(h("h3", {}, "Submit"), form, h("h3", {}, "Job states over time"), chart,
    h("h3", {}, "Jobs"), list, h("h3", {}, "Webhooks"), hooks);
  every(REFRESH * 2, async () => {
    let found;
    try {
      found = await api.get("/webhooks");
    } catch (error) {
      clear(hooks, h("p", { class: "muted" }, error.message));
      return;
    }
    // a job's (delivered: its last seq) or a task batch's (delivered: its last group)
    const what = (w) => (w.kind === "tasks" ? `${w.tasks} tasks (batch ${w.batch.slice(0, 8)})`
      : w.job_id.slice(0, 8));
    clear(hooks, found.length ? table(["job or tasks", "url", "status", "delivered", "attempts",
      "last error"], found.map((w) => [what(w), w.url, w.status, String(w.delivered),
      String(w.attempts), w.last_error ?? ""])) : h("p", { class: "muted" }, "none"));
  });
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    try {
      const spec = formValue(form);
      const chosen = executor.querySelector("select").value;
      const job = await api.post(`/endpoints/${endpoint}/psij/submit_job`,
        chosen ? { spec, executor: chosen } : { spec });
      remember(job);
      say(`submitted ${job.job_id}`);
      const callback = form.querySelector("[name=callback]").value.trim();
      if (callback) {
        const secret = form.querySelector("[name=callback_secret]").value;
        await api.post(`/endpoints/${endpoint}/jobs/${job.job_id}/webhook`, { url: callback, secret });
        say(`submitted ${job.job_id}; its state changes go to ${callback}`);
      }
      renderJobs(list);
    } catch (error) {
      failed(error);
    }
  });
  for (const job of (await api.get(`/endpoints/${endpoint}/jobs`)).jobs) remember(job);
  renderJobs(list);
  view.stops.push(api.events([`${endpoint}.psij.job_status`], (event) => {
    remember(event.data);
    renderJobs(list);
  }));
  every(REFRESH, () => {
    const counts = {};
    for (const job of view.jobs.values()) counts[job.state] = (counts[job.state] ?? 0) + 1;
    view.snapshots.push(counts);
    view.snapshots.splice(0, view.snapshots.length - HISTORY);
    clear(chart, stateChart(view.snapshots));
  });
}

// What is known of a job: the newest state by seq wins, whichever came first (a submit's
// answer can arrive after the events of the job's later states).
function remember(update) {
  const known = view.jobs.get(update.job_id);
  const newer = (update.seq ?? 0) >= (known?.seq ?? 0);
  view.jobs.set(update.job_id, newer ? { ...known, ...update } : { ...update, ...known });
}

function renderJobs(list) {
  const jobs = [...view.jobs.values()].sort((a, b) => (b.submitted ?? "").localeCompare(a.submitted ?? ""));
  clear(list, table(["job", "name", "state", "exit code"], jobs.map((j) => [
    h("code", { dataset: { job: j.job_id } }, j.job_id.slice(0, 8)), j.name ?? j.executable ?? "",
    badge(j.state ?? "NEW"), j.exit_code ?? ""]), (i) => jobPage(jobs[i].job_id)));
}

async function jobPage(jobId) {
  stopAll();
  const endpoint = view.selected;
  const panel = clear($("#panel"));
  const head = h("div", { id: "job" });
  const output = h("pre", { id: "job-output" });
  const errors = h("pre", { id: "job-errors", class: "stderr" });
  const cancel = h("button", { id: "cancel", onclick: async () => {
    try {
      await api.post(`/endpoints/${endpoint}/jobs/${jobId}/cancel`);
    } catch (error) {
      failed(error);
    }
  } }, "Cancel");
  panel.append(h("button", { onclick: () => open("jobs") }, "← Jobs"), head, cancel,
    h("h3", {}, "Output"), output, errors);
  const offsets = { stdout: 0, stderr: 0 };
  let final = false;
  every(1000, async () => {
    if (final) return;
    const job = await api.get(
      `/endpoints/${endpoint}/jobs/${jobId}?stdout_offset=${offsets.stdout}&stderr_offset=${offsets.stderr}`);
    output.append(job.stdout ?? "");
    errors.append(job.stderr ?? "");
    offsets.stdout = job.stdout_offset ?? offsets.stdout;
    offsets.stderr = job.stderr_offset ?? offsets.stderr;
    final = ["COMPLETED", "FAILED", "CANCELED"].includes(job.state);
    cancel.disabled = final;
    clear(head, h("h3", {}, job.name ?? job.executable, " ", badge(job.state)),
      h("p", { class: "muted" }, `${job.job_id} · ${job.executor} · exit code ${job.exit_code ?? "–"}`),
      h("ol", { class: "history" }, job.history.map((e) =>
        h("li", {}, badge(e.state), ` ${e.time ?? ""} ${e.message ?? ""}`))));
  });
}

// -- tasks -----------------------------------------------------------------------------------

async function tasksTab(panel) {
  const counts = h("div", { id: "task-counts" });
  panel.append(h("h3", {}, "Tasks by state"), counts);
  every(REFRESH, async () => {
    const found = await api.method(view.selected, "tasks", "list_tasks", { limit: 1 });
    clear(counts, table(["state", "tasks"],
      Object.entries(found.counts).map(([state, n]) => [badge(state), String(n)])),
    h("p", { class: "muted" }, `${found.total} in all`));
  });
}

// -- files -----------------------------------------------------------------------------------

async function filesTab(panel) {
  const endpoint = view.selected;
  const roots = await api.method(endpoint, "staging", "roots");
  const where = h("input", { id: "files-path", value: roots[0] ?? "" });
  const listing = h("div", { id: "files" });
  const progress = h("progress", { id: "upload-progress", max: 1, value: 0 });
  const chooser = h("input", { type: "file", id: "upload-file" });
  const show = async () => {
    const found = await api.method(endpoint, "staging", "list", { path: where.value });
    clear(listing, table(["name", "type", "size", ""], found.entries.map((e) => [
      e.name, e.type, e.type === "file" ? bytes(e.size) : "",
      e.type === "file"
        ? h("button", { dataset: { download: e.name }, onclick: (event) => {
          event.stopPropagation();
          api.download(`/endpoints/${endpoint}/files?path=${encodeURIComponent(e.path)}`, e.name)
            .catch(failed);
        } }, "Download")
        : ""]), (i) => {
      const entry = found.entries[i];
      if (entry.type === "directory") { where.value = entry.path; show().catch(failed); }
    }));
  };
  chooser.addEventListener("change", async () => {
    const file = chooser.files[0];
    if (!file) return;
    const target = `${where.value.replace(/\/$/, "")}/${file.name}`;
    try {
      await api.upload(`/endpoints/${endpoint}/files?path=${encodeURIComponent(target)}`, file,
        (share) => { progress.value = share; });
      progress.value = 1;
      say(`uploaded ${target}`);
      await show();
    } catch (error) {
      failed(error);
    }
  });
  panel.append(h("h3", {}, "Files"),
    h("div", { class: "row" }, where, h("button", { onclick: () => show().catch(failed) }, "List"),
      h("select", { onchange: (e) => { where.value = e.target.value; show().catch(failed); } },
        roots.map((r) => h("option", {}, r)))),
    h("div", { class: "row" }, h("label", {}, "Upload ", chooser), progress), listing);
  await show();
}
