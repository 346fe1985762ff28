// Shared by the operator UI, the pilot dashboard and the operations console: the API key this
// browser keeps, requests that carry it, the status line, and the key box.
(function (root) {
  "use strict";
  const keyStore = "isacir.apiKey";
  const $ = (id) => document.getElementById(id);

  function headers(extra = {}) {
    const key = localStorage.getItem(keyStore);
    return { ...(key ? { "X-API-Key": key } : {}), ...extra };
  }

  function status(msg, error = false) {
    $("status").textContent = msg;
    $("status").classList.toggle("error", error);
  }

  // The error text of a failed answer: the API's {"detail": ...} (a message, or a list of fields).
  async function detailOf(res) {
    let detail = res.statusText;
    try {
      const d = (await res.json()).detail;
      if (typeof d === "string") detail = d;
      else if (d && typeof d.detail === "string") detail = d.detail;
      else if (Array.isArray(d)) detail = d.map((e) => e.msg).join("; ");
      else if (d) detail = JSON.stringify(d);
    } catch (_) { /* not JSON */ }
    return detail;
  }

  // fetch() with the key; 401 and 403 open the key box and throw what the page says about them
  // (``messages.unauthorized``, ``messages.forbidden(detail)``), any other failure throws its detail.
  async function request(path, opts = {}, messages = {}) {
    const res = await fetch(path, { ...opts, headers: headers(opts.headers || {}) });
    if (res.status === 401) {
      $("key-box").hidden = false;
      throw new Error(messages.unauthorized || "The service needs an API key: paste it above and save.");
    }
    if (res.status === 403) {
      $("key-box").hidden = false;
      const detail = await detailOf(res);
      throw new Error(messages.forbidden ? messages.forbidden(detail) : `Not allowed: ${detail}`);
    }
    if (!res.ok) throw new Error(`${res.status}: ${await detailOf(res)}`);
    return res;
  }

  // The key box: the toggle, the saved key, and ``onSave`` after a new key is kept.
  function keyBox(onSave) {
    $("key-toggle").addEventListener("click", () => { $("key-box").hidden = !$("key-box").hidden; });
    $("api-key").value = localStorage.getItem(keyStore) || "";
    $("key-save").addEventListener("click", () => {
      localStorage.setItem(keyStore, $("api-key").value.trim());
      $("key-box").hidden = true;
      onSave();
    });
  }

  root.isacirKeyed = { $, headers, status, request, keyBox };
})(window);
