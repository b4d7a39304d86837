// The gateway's HTTP API, as the logged-in broker user (HTTP Basic on every request; the
// credentials live in this page's memory only).

let authorization = null;

export class ApiError extends Error {
  constructor(status, body) {
    super(body?.error?.message ?? `HTTP ${status}`);
    this.status = status;
    this.code = body?.error?.code;
    this.details = body?.error?.details;
  }
}

export function login(user, password) {
  authorization = "Basic " + btoa(unescape(encodeURIComponent(`${user}:${password}`)));
}

export function logout() {
  authorization = null;
}

// X-Orbit-Page: a wrong password answers 401 without a challenge (no browser login dialog).
function headers(extra = {}) {
  return { Authorization: authorization, "X-Orbit-Page": "1", ...extra };
}

export async function call(verb, path, body) {
  const init = { method: verb, headers: headers() };
  if (body !== undefined) {
    init.body = JSON.stringify(body);
    init.headers["Content-Type"] = "application/json";
  }
  const answer = await fetch(`api/v1${path}`, init);
  const text = await answer.text();
  const parsed = text ? JSON.parse(text) : null;
  if (!answer.ok) throw new ApiError(answer.status, parsed);
  return parsed;
}

export const get = (path) => call("GET", path);
export const post = (path, body = {}) => call("POST", path, body);
export const method = (endpoint, plugin, name, params = {}) =>
  post(`/endpoints/${endpoint}/${plugin}/${name}`, params);

// Server-sent events over fetch (EventSource cannot send an Authorization header). Resumes
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
          headers: headers(extra), signal: stop.signal,
        });
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
    request.setRequestHeader("Authorization", authorization);
    request.setRequestHeader("X-Orbit-Page", "1");
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

// A download through fetch (with the Authorization header), saved by the browser.
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
