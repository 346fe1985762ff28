// isacir pilot dashboard: numbers from /v1/pilot/summary, charts as server-drawn SVG.
(() => {
  const { $, status, request, keyBox } = window.isacirKeyed;
  const urls = [];
  const api = (path) => request(path, {}, {
    unauthorized: "The dashboard needs an API key: paste it above and save.",
    forbidden: () => "This key may not read the pilot (it lacks the 'pilot' scope): use an operator or admin key.",
  });
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
  const ci = (c) => (c ? `95 %: ${(100 * c[0]).toFixed(1)}–${(100 * c[1]).toFixed(1)}` : "");
  // 8 characters of each fingerprint: "QE+ADAPTER" versions keep both parts apart
  const short = (v) => v.split("+").map((p) => (p.length > 12 ? p.slice(0, 8) : p)).join("+");

  function range() {
    const params = new URLSearchParams();
    if ($("from").value) params.set("from", $("from").value);
    if ($("to").value) params.set("to", $("to").value);
    return params;
  }

  async function chart(img, name, extra = {}) {
    const params = range();
    Object.entries(extra).forEach(([k, v]) => params.set(k, v));
    const blob = await (await api(`/v1/pilot/charts/${name}.svg?${params}`)).blob();
    const src = URL.createObjectURL(blob);
    urls.push(src);
    img.src = src;
  }

  async function load() {
    urls.splice(0).forEach((u) => URL.revokeObjectURL(u));
    status("Loading…");
    try {
      const params = range();
      params.set("group_by", "version");
      const data = await (await api(`/v1/pilot/summary?${params}`)).json();
      const o = data.overall;
      $("o-false").textContent = pct(o.false_hit_rate);
      $("o-false-ci").textContent = ci(o.false_hit_rate_ci);
      $("o-p1").textContent = pct(o.precision_at_1);
      $("o-p1-ci").textContent = ci(o.precision_at_1_ci);
      $("o-hit").textContent = pct(o.hit_at_k);
      $("o-hit-ci").textContent = ci(o.hit_at_k_ci);
      $("o-judged").textContent = `${o.judged} / ${o.queries}`;
      $("o-latency").textContent = o.latency_p50_ms === null ? "" : `p50 ${o.latency_p50_ms.toFixed(0)} ms, p95 ${o.latency_p95_ms.toFixed(0)} ms`;
      $("o-operator").textContent = o.operator_s_median === null ? "–" : `${o.operator_s_median.toFixed(1)} s`;
      $("o-operator-n").textContent = o.operator_timed ? `median of ${o.operator_timed}; mean ${o.operator_s_mean.toFixed(1)} s` : "not timed";
      // with the review queue on, the reviewed queries' rates weighted back to all traffic
      const r = data.review;
      $("review-line").hidden = !r;
      if (r) {
        const f = r.false_hit_rate;
        $("review-line").textContent = `Review queue: ${r.judged} of ${r.drawn} drawn queries judged. False-hit rate weighted to all ` +
          `traffic ${pct(f.weighted.rate)} (${ci(f.weighted.ci)}); over the reviewed queries ${pct(f.unweighted.rate)}; ` +
          `uniform slice ${pct(f.uniform_slice.rate)} (${f.uniform_slice.n}).`;
      }
      const body = $("versions").querySelector("tbody");
      body.replaceChildren();
      data.groups.forEach((g) => {
        const tr = document.createElement("tr");
        const cells = [g.label || short(g.key), g.queries, g.judged, pct(g.false_hit_rate), pct(g.precision_at_1), pct(g.hit_at_k),
          g.mrr === null ? "–" : g.mrr.toFixed(3), pct(g.correction_rate),
          g.latency_p50_ms === null ? "–" : g.latency_p50_ms.toFixed(0),
          g.operator_s_median === null ? "–" : g.operator_s_median.toFixed(1)];
        cells.forEach((c, i) => {
          const td = document.createElement(i === 0 ? "th" : "td");
          td.textContent = c;
          if (i === 0) td.title = g.key;
          tr.appendChild(td);
        });
        body.appendChild(tr);
      });
      const dl = $("definitions");
      dl.replaceChildren();
      Object.entries(data.definitions).forEach(([k, v]) => {
        const dt = document.createElement("dt");
        dt.textContent = k;
        const dd = document.createElement("dd");
        dd.textContent = v;
        dl.append(dt, dd);
      });
      await traffic();
      const period = $("period").value;
      await Promise.all([
        chart($("chart-versions"), "versions"),
        chart($("chart-false"), "over-time", { metric: "false_hit_rate", period }),
        chart($("chart-p1"), "over-time", { metric: "precision_at_1", period }),
        chart($("chart-hitk"), "hit-at-k"),
        chart($("chart-cat"), "category"),
      ]);
      status(`${o.queries} queries, ${o.judged} judged, ${data.groups.length} version(s).`);
    } catch (err) {
      status(err.message, true);
    }
  }

  // how the served versions share traffic now, and every interleaved comparison in the range
  async function traffic() {
    const [versions, inter] = await Promise.all([
      api("/v1/versions").then((r) => r.json()).catch(() => null),
      api(`/v1/interleaving?${range()}`).then((r) => r.json()),
    ]);
    if (versions) {
      const by = (state) => versions.versions.filter((v) => v.state === state).map((v) => v.version || short(v.fingerprint));
      const canary = by("canary");
      const pair = versions.interleave;
      $("split").textContent = `Served now: ${by("active").join(", ") || "no active version"} active` +
        (canary.length ? `; ${canary.join(", ")} canary at ${pct(versions.canary_share)} of searches` : "") +
        (pair ? `; ${pair[0]} and ${pair[1]} interleaved in ${pct(versions.interleave_share)} of searches` : "") + ".";
    }
    const body = $("interleaving").querySelector("tbody");
    body.replaceChildren();
    inter.comparisons.forEach((c) => {
      const tr = document.createElement("tr");
      const a = c.versions.A, b = c.versions.B;
      const rate = c.win_rate === null ? "–" : c.win_rate.toFixed(3) + (c.win_rate_ci95 ? ` (${c.win_rate_ci95[0].toFixed(3)}–${c.win_rate_ci95[1].toFixed(3)})` : "");
      [`${a} vs ${b}`, c.queries, c.wins[a], c.wins[b], c.ties, rate, c.preferred || "not yet"].forEach((t, i) => {
        const td = document.createElement(i === 0 ? "th" : "td");
        td.textContent = String(t);
        tr.appendChild(td);
      });
      body.appendChild(tr);
    });
    if (!inter.comparisons.length) {
      const tr = document.createElement("tr");
      const td = document.createElement("td");
      td.colSpan = 7;
      td.textContent = "No interleaved search in this range.";
      tr.appendChild(td);
      body.appendChild(tr);
    }
  }

  keyBox(load);
  $("range").addEventListener("submit", (e) => { e.preventDefault(); load(); });
  load();
})();
