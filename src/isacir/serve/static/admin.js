// isacir operations console: /v1/admin/* (scope models:admin). Every action goes through the same
// registry and learning-loop code as the command line, with a reason for the audit trail.
(() => {
  const { $, status, request, keyBox } = window.isacirKeyed;
  async function api(path, method = "GET", body = undefined) {
    const opts = body === undefined ? { method } : { method, headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) };
    const res = await request(path, opts, {
      unauthorized: "The console needs an API key: paste one with the models:admin scope above and save.",
      forbidden: () => "This key may not run operations (it lacks the 'models:admin' scope): use an admin key.",
    });
    return res.json();
  }
  const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)} %`);
  const ci = (c) => (c ? ` [${(100 * c[0]).toFixed(1)}–${(100 * c[1]).toFixed(1)}]` : "");
  const num = (x, d = 1) => (x === null || x === undefined ? "–" : x.toFixed(d));
  const when = (t) => new Date(t * 1000).toLocaleString();
  // each cell carries its column's name, which a phone shows beside it (rows become cards there)
  const cell = (tr, text, head = false) => {
    const td = document.createElement(head ? "th" : "td");
    td.textContent = text;
    tr.appendChild(td);
    const table = tr.closest("table") || tr.dataset.table && document.getElementById(tr.dataset.table);
    const th = table && table.tHead.rows[0].cells[tr.cells.length - 1];
    if (th) td.dataset.label = th.textContent;
    return td;
  };

  let rollout = { canary_share: null, interleave: null, interleave_share: null };

  function reason() {
    const r = $("reason").value.trim();
    if (!r) {
      $("reason").focus();
      throw new Error("Write a reason first: every action is recorded with one.");
    }
    return r;
  }

  async function act(what, fn) {
    try {
      const r = reason();
      status(`${what}…`);
      await fn(r);
      $("reason").value = "";
      status(`${what}: done.`);
      await load(false);
    } catch (err) {
      status(err.message, true);
    }
  }

  // the moves a version in each state can make from here, as [label, target state]
  const MOVES = {
    staged: [["To canary", "canary"], ["Promote", "active"], ["Retire", "retired"]],
    canary: [["Promote", "active"], ["Roll back", "retired"]],
    active: [],
    deprecated: [["Reactivate", "active"], ["Retire", "retired"]],
    retired: [],
  };

  function gateText(g) {
    if (!g) return "–";
    if (g.forced) return "forced";
    const score = g.active_score === null ? `${g.metric} ${num(g.score, 3)}` : `${g.metric} ${num(g.score, 3)} vs ${num(g.active_score, 3)}`;
    return `${score}, flips ${pct(g.flip_rate)}`;
  }

  function renderVersions(data) {
    const body = $("versions").querySelector("tbody");
    const cost = $("cost").querySelector("tbody");
    body.replaceChildren();
    cost.replaceChildren();
    data.versions.slice().reverse().forEach((v) => {
      const tr = document.createElement("tr");
      tr.dataset.table = "versions";
      tr.dataset.version = v.version;
      cell(tr, v.version, true).title = v.fingerprint + (v.adapter ? `+${v.adapter.fingerprint}` : "");
      const st = cell(tr, v.state);
      st.className = `state ${v.state}`;
      cell(tr, v.parent || "–");
      cell(tr, gateText(v.gate));
      cell(tr, `${v.pilot.judged} / ${v.pilot.queries}`);
      cell(tr, pct(v.pilot.false_hit_rate) + ci(v.pilot.false_hit_rate_ci));
      cell(tr, pct(v.pilot.precision_at_1) + ci(v.pilot.precision_at_1_ci));
      const td = cell(tr, "");
      const group = document.createElement("div");
      group.className = "buttons";
      td.appendChild(group);
      (MOVES[v.state] || []).forEach(([label, to]) => {
        const b = document.createElement("button");
        b.type = "button";
        b.textContent = label;
        b.dataset.to = to;
        b.addEventListener("click", () => act(`${label} ${v.version}`, (r) => api(`/v1/admin/versions/${encodeURIComponent(v.version)}`, "POST", { to, reason: r })));
        group.appendChild(b);
      });
      body.appendChild(tr);
      const c = v.cost;
      const row = document.createElement("tr");
      row.dataset.table = "cost";
      row.dataset.version = v.version;
      cell(row, v.version, true);
      [num(c.operator_s_per_judged) + (c.timed ? ` (${c.timed} timed)` : ""), pct(c.solved_top1), pct(c.solved_top5),
        num(c.corrections_per_100), num(c.hours_per_1000_queries, 2)].forEach((t) => cell(row, t));
      cost.appendChild(row);
    });
    const active = data.versions.find((v) => v.state === "active");
    const canary = data.versions.find((v) => v.state === "canary");
    $("c-active").textContent = active ? active.version : "none";
    $("c-active-note").textContent = active ? `false-hit ${pct(active.pilot.false_hit_rate)}${ci(active.pilot.false_hit_rate_ci)}` : "";
    $("c-canary").textContent = canary ? canary.version : "none";
    // with an interleaved pair, the candidate's share is the share of searches merged
    const merged = data.served.interleave !== null;
    const share = merged ? data.served.interleave_share : data.served.canary_share;
    const from = (merged ? data.rollout.interleave_share : data.rollout.canary_share) === null ? " (the service's setting)" : " (registry)";
    $("c-canary-note").textContent = `share ${pct(share)}${merged ? " interleaved" : ""}${from}`;
    if (document.activeElement !== $("share")) $("share").value = Math.round(100 * share);
    rollout = data.rollout;
    const pair = data.served.interleave;
    $("c-inter").textContent = pair ? `${pair[0]} vs ${pair[1]}` : "off";
    const now = pair && data.interleaving.find((c) => c.versions.A === pair[0] && c.versions.B === pair[1]);
    $("c-inter-note").textContent = now ? `win rate ${num(now.win_rate, 3)}${now.win_rate_ci95 ? ` [${num(now.win_rate_ci95[0], 3)}–${num(now.win_rate_ci95[1], 3)}]` : ""} over ${now.queries} judged` : "";
    const ib = $("interleaving").querySelector("tbody");
    ib.replaceChildren();
    data.interleaving.forEach((c) => {
      const tr = document.createElement("tr");
      cell(tr, `${c.versions.A} vs ${c.versions.B}`, true);
      [c.queries, c.wins[c.versions.A], c.wins[c.versions.B], c.ties,
        c.win_rate === null ? "–" : `${num(c.win_rate, 3)}${c.win_rate_ci95 ? ` [${num(c.win_rate_ci95[0], 3)}–${num(c.win_rate_ci95[1], 3)}]` : ""}`,
        c.preferred || "not yet"].forEach((t) => cell(tr, String(t)));
      ib.appendChild(tr);
    });
    if (!data.interleaving.length) {
      const tr = document.createElement("tr");
      const td = cell(tr, "No interleaved search has been judged yet.");
      td.colSpan = 7;
      td.className = "detail";
      ib.appendChild(tr);
    }
    $("days").textContent = data.days;
  }

  function renderCycle(data) {
    const box = $("cycle");
    box.replaceChildren();
    const p = (text) => { const e = document.createElement("p"); e.textContent = text; box.appendChild(e); return e; };
    if (!data.enabled) {
      $("c-cycle").textContent = "off";
      $("c-cycle-note").textContent = "serve --learn-policy FILE";
      $("cycle-start").disabled = true;
      p("The service runs no learning policy (start it with --learn-policy FILE, or run `isacir cycle run` from cron).").className = "note";
      return;
    }
    $("cycle-start").disabled = data.running;
    const last = data.status.last;
    $("c-cycle").textContent = data.running ? "running" : last ? last.state : "none yet";
    $("c-cycle-note").textContent = data.status.trigger === null ? "a cycle would start now" : data.status.trigger || "";
    p(`Active: ${data.status.active || "none"}; ${data.status.new_verdicts ?? "–"} judged searches since it became active. A step runs every ${data.every_s} s.`);
    if (data.last) p(`Last step ${when(data.last.time)} by ${data.last.by}: ${data.last.error ? `failed: ${data.last.error}` : data.last.action}.`);
    if (last) {
      p(`Cycle ${last.id} (${last.candidate}): ${last.state}${last.outcome ? ` — ${last.outcome}` : ""}.`);
      if (last.evidence) p(`Evidence: ${last.evidence.reason}.`).className = "note";
      const ol = document.createElement("ol");
      ol.className = "steps";
      last.steps.forEach((s) => {
        const li = document.createElement("li");
        li.textContent = `${when(s.time)} ${s.step}` + (s.reason ? `: ${s.reason}` : "");
        ol.appendChild(li);
      });
      box.appendChild(ol);
    }
  }

  function renderAudit(data) {
    const body = $("audit").querySelector("tbody");
    body.replaceChildren();
    data.entries.forEach((e) => {
      const tr = document.createElement("tr");
      cell(tr, when(e.time));
      cell(tr, e.actor);
      cell(tr, e.action);
      const { time, actor, action, ...rest } = e;
      const detail = rest.reason || Object.entries(rest).filter(([, v]) => typeof v !== "object").map(([k, v]) => `${k}: ${v}`).join(", ");
      cell(tr, detail).className = "detail";
      body.appendChild(tr);
    });
  }

  async function load(announce = true) {
    if (announce) status("Loading…");
    try {
      const [versions, cycle, audit] = await Promise.all([
        api("/v1/admin/versions"), api("/v1/admin/cycle"), api("/v1/admin/audit?limit=50"),
      ]);
      renderVersions(versions);
      renderCycle(cycle);
      renderAudit(audit);
      if (announce) status(`${versions.versions.length} version(s); ${audit.total} audit entries.`);
    } catch (err) {
      status(err.message, true);
    }
  }

  $("cycle-start").addEventListener("click", () => act("Start a learning cycle", (r) => api("/v1/admin/cycle", "POST", { start: true, reason: r })));
  $("share-set").addEventListener("click", () => act("Set the canary share", (r) => {
    const share = Number($("share").value) / 100;
    if (!Number.isFinite(share) || share < 0 || share > 1) throw new Error("The canary share is a percentage from 0 to 100.");
    // an interleaved comparison keeps its pair: the share is then of the searches merged
    const body = rollout.interleave
      ? { canary_share: rollout.canary_share, interleave: rollout.interleave, interleave_share: share, reason: r }
      : { canary_share: share, interleave: null, reason: r };
    return api("/v1/admin/rollout", "PUT", body);
  }));
  keyBox(load);
  load();
  setInterval(() => { if (!document.hidden) load(false); }, 5000);
})();
