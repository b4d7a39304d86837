// The gateway's HTTP API, as the logged-in broker user: the login form exchanges the broker
// user and password for a session cookie (HttpOnly: this page never sees it, the browser
// sends it) and a CSRF token, which state-changing calls send as X-CSRF-Token. The password
// is not kept here after the login.

let csrfToken = null;
let onEnded = () => {};

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
    this.details = body?.error?.details;
  }
}

// `callback()` when a request finds the session ended (expired, or the gateway restarted).
export function whenEnded(callback) {
  onEnded = callback;
}

function sessionEnded() {
  csrfToken = null;
  onEnded();
}

// X-Orbit-Page: a 401 comes without a challenge (no browser login dialog); the CSRF token
// goes with every state-changing call.
function headers(verb = "GET", extra = {}) {
  const found = { "X-Orbit-Page": "1", ...extra };
  if (verb !== "GET" && csrfToken) found["X-CSRF-Token"] = csrfToken;
  return found;
}

async function answered(answer) {
  const text = await answer.text();
  const parsed = text ? JSON.parse(text) : null;
  if (!answer.ok) throw new ApiError(answer.status, parsed);
  return parsed;
}

export async function call(verb, path, body) {
  const init = { method: verb, headers: headers(verb) };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const answer = await fetch(`api/v1${path}`, init);
  if (answer.status === 401 && csrfToken) sessionEnded();
  return answered(answer);
}

// The login form's: the session's user (a wrong password: ApiError with status 401).
export async function login(user, password) {
  const answer = await fetch("api/v1/login", {
    method: "POST",
    headers: headers("POST", { "Content-Type": "application/json" }),
    body: JSON.stringify({ user, password }),
  });
  const session = await answered(answer);
  csrfToken = session.csrf_token;
  return session.user;
}

// After a reload: the session the cookie still holds (its user), or null.
export async function resume() {
  const answer = await fetch("api/v1/session", { headers: headers() });
  if (answer.status === 401) return null;
  const session = await answered(answer);
  csrfToken = session.csrf_token;
  return session.user;
}

export async function logout() {
  try {
    await call("POST", "/logout", {});
  } finally {
    csrfToken = null;
  }
}

export const get = (path) => call("GET", path);
export const post = (path, body = {}) => call("POST", path, body);
export const method = (endpoint, plugin, name, params = {}) =>
  post(`/endpoints/${endpoint}/${plugin}/${name}`, params);

// Server-sent events over fetch (the session cookie goes with it as with any request; fetch
// rather than EventSource so that a 401 comes without the browser's login dialog). Resumes
// with Last-Event-ID after a dropped connection, so no event is missed; `onEvent(data)` for
// each. Returns a function that stops it.
export function events(patterns, onEvent) {
  const query = patterns.map((p) => `pattern=${encodeURIComponent(p)}`).join("&");
  const stop = new AbortController();
  let last = null;
  (async () => {
    for (let tries = 0; !stop.signal.aborted && tries < 1000; tries++) {
      try {
        const extra = last ? { "Last-Event-ID": last } : {};
        const answer = await fetch(`api/v1/events?${query}`, {
          headers: headers("GET", extra), signal: stop.signal,
        });
        if (answer.status === 401) {
          sessionEnded();
          return;
        }
        if (!answer.ok) throw new ApiError(answer.status, await answer.json());
        const reader = answer.body.pipeThrough(new TextDecoderStream()).getReader();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += value;
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const frame = buffer.slice(0, end);
            buffer = buffer.slice(end + 2);
            let data = null;
            for (const line of frame.split("\n")) {
              if (line.startsWith("id: ")) last = line.slice(4);
              else if (line.startsWith("data: ")) data = line.slice(6);
            }
            if (data) onEvent(JSON.parse(data));
          }
        }
      } catch (error) {
        if (stop.signal.aborted) return;
        console.warn(`event stream ${patterns}: ${error.message}; resuming`);
      }
      await new Promise((resolve) => setTimeout(resolve, Math.min(500 * 2 ** tries, 5000)));
    }
  })();
  return () => stop.abort();
}

// An upload with a progress callback (fetch has none for request bodies).
export function upload(path, file, onProgress) {
  return new Promise((resolve, reject) => {
    const request = new XMLHttpRequest();
    request.open("PUT", `api/v1${path}`);
    for (const [name, value] of Object.entries(headers("PUT"))) request.setRequestHeader(name, value);
    request.setRequestHeader("X-Orbit-Upload", "1");
    request.setRequestHeader("Content-Type", "application/octet-stream");
    request.upload.onprogress = (e) => e.lengthComputable && onProgress(e.loaded / e.total);
    request.onload = () => {
      const body = request.responseText ? JSON.parse(request.responseText) : null;
      if (request.status < 300) resolve(body);
      else reject(new ApiError(request.status, body));
    };
    request.onerror = () => reject(new ApiError(0, null));
    request.send(file);
  });
}

// A download through fetch (the session cookie goes with it), saved by the browser.
export async function download(path, name) {
  const answer = await fetch(`api/v1${path}`, { headers: headers() });
  if (!answer.ok) throw new ApiError(answer.status, await answer.json());
  const link = document.createElement("a");
  link.href = URL.createObjectURL(await answer.blob());
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
}
