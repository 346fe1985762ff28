// isacir operator UI: pick a reference photo, type the change, confirm or reject candidates.
(() => {
  const { $, headers, status, request, keyBox } = window.isacirKeyed;
  let file = null;
  let thumbs = [];
  // The search an operator is correcting: {queryId, text}. While set, cards offer "The right one".
  let correcting = null;
  let last = null;

  const api = (path, opts = {}) => request(path, opts, {
    forbidden: (detail) => `Not allowed: ${detail}. Ask for an operator key.`,
  });

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

  keyBox(() => {
    status("API key saved in this browser.");
    probeDevice();
    showLanguages();
  });

  // Which languages the served model reads: an English-only model answers a Japanese change
  // without any error, only badly, so the operator is told before typing.
  async function showLanguages() {
    try {
      const res = await fetch("/v1/info", { headers: headers() });
      if (!res.ok) return;
      const info = await res.json();
      const langs = info.languages || [];
      const many = langs.includes("multilingual");
      const names = { en: "English", ja: "Japanese (日本語)" };
      const named = langs.map((l) => names[l] || l);
      $("languages").textContent = many
        ? "The model reads many languages: write the change in yours (日本語も可)."
        : langs.length > 1
          ? `The model reads ${named.join(" and ")}: write the change in one of them.`
          : "The model reads English only: write the change in English.";
      $("languages").dataset.languages = langs.join(",");
      $("text").lang = many || langs.length > 1 ? "" : "en";
    } catch (_) { /* the service is unreachable: the search itself will say so */ }
  }

  // when the current results were shown: each verdict says how long the operator took over them
  let shownAt = performance.now();
  const postFeedback = (body) => api("/v1/feedback", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ ...body, verdict_s: Math.round(performance.now() - shownAt) / 1000 }),
  });

  async function feedback(card, queryId, id, verdict) {
    card.querySelectorAll(".actions button").forEach((b) => (b.disabled = true));
    try {
      await postFeedback({ query_id: queryId, candidate_id: id, verdict });
      card.classList.remove("confirmed", "rejected");
      card.classList.add(verdict);
      card.dataset.verdict = verdict;
      status(`Recorded: candidate ${id} ${verdict}.`);
      if (verdict === "rejected") offerRefine();
    } catch (err) {
      status(err.message, true);
    } finally {
      card.querySelectorAll(".actions button").forEach((b) => (b.disabled = false));
    }
  }

  // "None of these": every shown candidate without a verdict is rejected, then the operator looks
  // for the right item (another search, or an id) and names it for the original query.
  async function noneOfThese() {
    if (!last) return;
    $("none").disabled = true;
    try {
      const open = [...document.querySelectorAll("#results li.result")].filter((c) => !c.dataset.verdict);
      for (const card of open) {
        await postFeedback({ query_id: last.queryId, candidate_id: Number(card.dataset.id), verdict: "rejected" });
        card.classList.add("rejected");
        card.dataset.verdict = "rejected";
      }
      offerRefine();
      correcting = last;
      $("correcting-text").textContent = correcting.text || "(no text)";
      $("correcting").hidden = false;
      $("none-bar").hidden = true;
      status(`Rejected ${open.length} candidates. Now find the right item.`);
      $("item-id").focus();
    } catch (err) {
      status(err.message, true);
    } finally {
      $("none").disabled = false;
    }
  }

  // "More like this": after a rejection, search again from the same query, moved toward the
  // chosen card and away from the rejected ones (POST /v1/search/{id}/refine); the refined list is
  // a query of its own, judged like any other.
  function offerRefine() {
    document.querySelectorAll("#results li.result").forEach((c) => {
      c.querySelector(".like").hidden = c.dataset.verdict === "rejected" || !$("results").dataset.queryId;
    });
  }

  async function refine(card) {
    const queryId = $("results").dataset.queryId;
    if (!queryId) return;
    const cards = [...document.querySelectorAll("#results li.result")];
    const marks = [{ id: Number(card.dataset.id), mark: "close" }].concat(
      cards.filter((c) => c.dataset.verdict === "rejected").map((c) => ({ id: Number(c.dataset.id), mark: "wrong" })),
    );
    status("Searching again from your marks…");
    try {
      const res = await api(`/v1/search/${queryId}/refine`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ marks, k: Number($("k").value) }),
      });
      const data = await res.json();
      const away = marks.length - 1;
      render(data);
      status(`${data.results.length} candidates, more like #${card.querySelector(".rank").textContent.replace("#", "")}` +
        (away ? ` and unlike the ${away} rejected` : "") + ". Confirm the right one, reject wrong ones.");
    } catch (err) {
      status(err.message, true);
    }
  }

  function stopCorrecting() {
    correcting = null;
    $("correcting").hidden = true;
  }

  async function correct(card, id) {
    const target = correcting;
    if (!target) return;
    card.querySelectorAll(".actions button").forEach((b) => (b.disabled = true));
    try {
      await postFeedback({ query_id: target.queryId, verdict: "corrected", correct_id: id });
      card.classList.add("corrected");
      card.dataset.verdict = "corrected";
      stopCorrecting();
      document.querySelectorAll("#results .correct").forEach((b) => (b.hidden = true));
      status(`Recorded: item ${id} is the right one for “${target.text}”.`);
    } catch (err) {
      status(err.message, true);
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

  function renderCards(items, queryId) {
    if (queryId) shownAt = performance.now();
    thumbs.forEach((u) => URL.revokeObjectURL(u));
    thumbs = [];
    const list = $("results");
    list.replaceChildren();
    items.forEach((r, i) => {
      const card = $("card").content.firstElementChild.cloneNode(true);
      card.dataset.id = r.id;
      // a result list (a search, a review) ranks; an item opened by id does not
      card.querySelector(".rank").textContent = queryId ? `#${i + 1}` : `id ${r.id}`;
      card.querySelector(".score").textContent = r.score === undefined ? "" : r.score.toFixed(3);
      // a catalogue title (index --metadata) reads better than a file name; the name stays in the tooltip
      const title = (r.metadata && r.metadata.title) || r.name;
      card.querySelector(".name").textContent = title;
      card.querySelector(".name").title = title === r.name ? r.name : `${title} (${r.name})`;
      const img = card.querySelector(".thumb");
      img.alt = `candidate ${i + 1}: ${r.name}`;
      loadThumb(img, r.thumbnail_url);
      const judging = !correcting && queryId;
      card.querySelector(".confirm").hidden = !judging;
      card.querySelector(".reject").hidden = !judging;
      card.querySelector(".correct").hidden = !correcting;
      card.querySelector(".confirm").addEventListener("click", () => feedback(card, queryId, r.id, "confirmed"));
      card.querySelector(".reject").addEventListener("click", () => feedback(card, queryId, r.id, "rejected"));
      card.querySelector(".correct").addEventListener("click", () => correct(card, r.id));
      card.querySelector(".like").addEventListener("click", () => refine(card));
      list.appendChild(card);
    });
    list.dataset.queryId = queryId || "";
  }

  function render(data) {
    renderCards(data.results, data.query_id);
    if (correcting) {
      status(`${data.results.length} candidates. Press “The right one” on the item the earlier search should have found.`);
      return;
    }
    last = { queryId: data.query_id, text: data.text };
    $("none-bar").hidden = data.results.length === 0;
    status(`${data.results.length} candidates in ${data.took_ms} ms. Confirm the right one, reject wrong ones.`);
  }

  // ----- the review queue: the service hands this operator one logged query at a time
  let reviewing = null;
  function why(reasons) {
    const parts = [];
    if (reasons.ambiguity > 0) parts.push(`the first two results were close (margin ${Number(reasons.margin).toFixed(3)})`);
    if (reasons.unseen_words && reasons.unseen_words.length) parts.push(`new words: ${reasons.unseen_words.join(", ")}`);
    return parts.length ? `Asked because ${parts.join("; ")}.` : "Asked at random, so the pilot's numbers cover all traffic.";
  }
  async function nextReview(skip = null) {
    stopCorrecting();
    $("review").hidden = false;
    $("query").hidden = true;
    status("Fetching a query to review…");
    try {
      const url = skip ? `/v1/review/next?skip=${encodeURIComponent(skip)}` : "/v1/review/next";
      const { review } = await (await api(url)).json();
      reviewing = review;
      if (!review) {
        $("review-query").textContent = "Nothing to review right now.";
        $("review-why").textContent = "";
        renderCards([], null);
        $("none-bar").hidden = true;
        status("The review queue is empty.");
        return;
      }
      $("review-query").textContent = `The search “${review.text || "(no text)"}” (${review.mode}). ` +
        "The reference photo stayed on its device: judge by the change and the candidates.";
      $("review-why").textContent = why(review.reasons);
      render({ results: review.results, query_id: review.query_id, text: review.text, took_ms: 0 });
      status(`${review.results.length} candidates to judge. Confirm the right one, reject wrong ones.`);
    } catch (err) {
      status(err.message, true);
    }
  }
  function closeReview() {
    reviewing = null;
    $("review").hidden = true;
    $("query").hidden = false;
    renderCards([], null);
    $("none-bar").hidden = true;
    status("");
  }
  $("review-toggle").addEventListener("click", () => ($("review").hidden ? nextReview() : closeReview()));
  $("review-next").addEventListener("click", () => nextReview());
  $("review-close").addEventListener("click", closeReview);
  $("review-skip").addEventListener("click", () => nextReview(reviewing ? reviewing.query_id : null));

  $("none").addEventListener("click", noneOfThese);
  $("correcting-cancel").addEventListener("click", () => { stopCorrecting(); status("Correction cancelled."); });
  $("open-item").addEventListener("submit", async (e) => {
    e.preventDefault();
    const id = $("item-id").value.trim();
    if (!/^[0-9]+$/.test(id)) { status("An item id is a number.", true); return; }
    try {
      const item = await (await api(`/v1/gallery/${id}`)).json();
      renderCards([item], null);
      status(`Item ${id}. Press “The right one” if it is what the earlier search should have found.`);
    } catch (err) {
      status(err.message, true);
    }
  });

  // ----- where the light query side runs: in this browser (the photo never leaves it), or on
  // the server (the photo is uploaded; for browsers without WebAssembly or services without an
  // edge package)
  let edge = null; // {model, manifest} once loaded
  const fetchBytes = async (path) => (await api(path)).arrayBuffer();

  function setDeviceAvailable(ok, why) {
    const opt = $("mode").querySelector("option[value=device]");
    opt.disabled = !ok;
    if (!ok && $("mode").value === "device") $("mode").value = "upload";
    $("mode-note").textContent = ok ? "" : `On-device encoding is unavailable (${why}); the photo is uploaded.`;
  }

  async function deviceModel() {
    if (edge) return edge;
    const probe = await fetch("/v1/edge/manifest", { headers: headers() });
    if (probe.status === 404) {
      setDeviceAvailable(false, "the service has no edge package");
      return null;
    }
    const manifest = await (await api("/v1/edge/manifest")).json();
    status(`Loading the on-device model ${manifest.version} (${Math.round(manifest.size / 1024)} KiB)…`);
    edge = { manifest, model: await window.IsacirEdge.EdgeModel.load(manifest, fetchBytes) };
    return edge;
  }

  async function probeDevice() {
    if (typeof WebAssembly !== "object") {
      setDeviceAvailable(false, "this browser cannot run WebAssembly");
      return;
    }
    if (!window.ort) {
      // the page loaded, but /ui/vendor/ort.wasm.min.js did not: an install without `make web`
      setDeviceAvailable(false, "the server has no ONNX Runtime Web; its operator runs `make web`");
      return;
    }
    if (!window.IsacirEdge) {
      setDeviceAvailable(false, "the page's edge.js did not load");
      return;
    }
    try {
      const res = await fetch("/v1/edge/manifest", { headers: headers() });
      if (res.status === 404) setDeviceAvailable(false, "the service has no edge package");
      else setDeviceAvailable(true);
    } catch (_) {
      setDeviceAvailable(false, "the service cannot be reached");
    }
  }

  async function searchOnDevice() {
    const loaded = await deviceModel();
    if (!loaded) return searchUploaded();
    const { model } = loaded;
    const t = await model.payload(file, "fp16");
    window.__isacir = { mode: "device", tokens: Array.from(t.tokens), payloadBytes: t.bytes.length, encodeMs: t.encodeMs };
    const res = await api("/v1/search/tokens", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({
        payload: window.IsacirEdge.toBase64(t.bytes),
        text: $("text").value,
        k: Number($("k").value),
        rerank: $("rerank").checked ? Number($("k").value) : 0,
      }),
    });
    return { data: await res.json(), how: `on this device: a ${t.bytes.length}-byte payload sent, no photo (encoded in ${Math.round(t.encodeMs)} ms)` };
  }

  async function searchUploaded() {
    const body = new FormData();
    body.append("image", file);
    body.append("text", $("text").value);
    body.append("k", $("k").value);
    body.append("rerank", $("rerank").checked ? $("k").value : "0");
    window.__isacir = { mode: "upload", photoBytes: file.size };
    const res = await api("/v1/search", { method: "POST", body });
    return { data: await res.json(), how: `uploaded: the ${file.size}-byte photo was sent` };
  }

  $("query").addEventListener("submit", async (e) => {
    e.preventDefault();
    if (!file) { status("Choose a reference photo first.", true); return; }
    $("search").disabled = true;
    status("Searching…");
    try {
      const { data, how } = $("mode").value === "device" ? await searchOnDevice() : await searchUploaded();
      render(data);
      $("mode-note").textContent = `Searched ${how}.`;
      $("results").dataset.mode = window.__isacir.mode;
    } catch (err) {
      status(err.message, true);
    } finally {
      $("search").disabled = false;
    }
  });
  probeDevice();
  showLanguages();
})();
