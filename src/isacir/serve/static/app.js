// isacir operator UI: pick a reference photo, type the change, confirm or reject candidates.
(() => {
  const $ = (id) => document.getElementById(id);
  const keyStore = "isacir.apiKey";
  let file = null;
  let thumbs = [];

  const headers = () => {
    const key = localStorage.getItem(keyStore);
    return key ? { "X-API-Key": key } : {};
  };
  const status = (msg, error = false) => {
    $("status").textContent = msg;
    $("status").classList.toggle("error", error);
  };
  async function api(path, opts = {}) {
    const res = await fetch(path, { ...opts, headers: { ...headers(), ...(opts.headers || {}) } });
    if (res.status === 401) {
      $("key-box").hidden = false;
      throw new Error("The service needs an API key: paste it above and save.");
    }
    if (!res.ok) {
      let detail = res.statusText;
      try { detail = (await res.json()).detail || detail; } catch (_) { /* not JSON */ }
      throw new Error(`${res.status}: ${typeof detail === "string" ? detail : JSON.stringify(detail)}`);
    }
    return res;
  }

  function choose(f) {
    if (!f) return;
    if (!f.type.startsWith("image/")) { status(`${f.name} is not an image`, true); return; }
    file = f;
    const prev = $("preview");
    if (prev.src) URL.revokeObjectURL(prev.src);
    prev.src = URL.createObjectURL(f);
    prev.hidden = false;
    $("drop-hint").textContent = f.name;
    status("");
  }

  $("file").addEventListener("change", (e) => choose(e.target.files[0]));
  const drop = $("drop");
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => choose(e.dataTransfer.files[0]));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });

  $("key-toggle").addEventListener("click", () => { $("key-box").hidden = !$("key-box").hidden; });
  $("api-key").value = localStorage.getItem(keyStore) || "";
  $("key-save").addEventListener("click", () => {
    localStorage.setItem(keyStore, $("api-key").value.trim());
    $("key-box").hidden = true;
    status("API key saved in this browser.");
  });

  async function feedback(card, queryId, id, verdict) {
    card.querySelectorAll(".actions button").forEach((b) => (b.disabled = true));
    try {
      await api("/v1/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ query_id: queryId, candidate_id: id, verdict }),
      });
      card.classList.remove("confirmed", "rejected");
      card.classList.add(verdict);
      card.dataset.verdict = verdict;
      status(`Recorded: candidate ${id} ${verdict}.`);
    } catch (err) {
      status(err.message, true);
    } finally {
      card.querySelectorAll(".actions button").forEach((b) => (b.disabled = false));
    }
  }

  async function loadThumb(img, url) {
    try {
      const blob = await (await api(url)).blob();
      const src = URL.createObjectURL(blob);
      thumbs.push(src);
      img.src = src;
    } catch (_) { img.alt = "unavailable"; }
  }

  function render(data) {
    thumbs.forEach((u) => URL.revokeObjectURL(u));
    thumbs = [];
    const list = $("results");
    list.replaceChildren();
    data.results.forEach((r, i) => {
      const card = $("card").content.firstElementChild.cloneNode(true);
      card.dataset.id = r.id;
      card.querySelector(".rank").textContent = `#${i + 1}`;
      card.querySelector(".score").textContent = r.score.toFixed(3);
      card.querySelector(".name").textContent = r.name;
      card.querySelector(".name").title = r.name;
      const img = card.querySelector(".thumb");
      img.alt = `candidate ${i + 1}: ${r.name}`;
      loadThumb(img, r.thumbnail_url);
      card.querySelector(".confirm").addEventListener("click", () => feedback(card, data.query_id, r.id, "confirmed"));
      card.querySelector(".reject").addEventListener("click", () => feedback(card, data.query_id, r.id, "rejected"));
      list.appendChild(card);
    });
    list.dataset.queryId = data.query_id;
    status(`${data.results.length} candidates in ${data.took_ms} ms. Confirm the right one, reject wrong ones.`);
  }

  $("query").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!file) { status("Choose a reference photo first.", true); return; }
    const body = new FormData();
    body.append("image", file);
    body.append("text", $("text").value);
    body.append("k", $("k").value);
    body.append("rerank", $("rerank").checked ? $("k").value : "0");
    $("search").disabled = true;
    status("Searching…");
    try {
      render(await (await api("/v1/search", { method: "POST", body })).json());
    } catch (err) {
      status(err.message, true);
    } finally {
      $("search").disabled = false;
    }
  });
})();
