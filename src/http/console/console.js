// resetguard incident console. Plain JS, no dependencies. Everything shown comes from the admin
// API; every action is an admin API call (the same code path as the CLI). The admin token lives
// in the `token` variable only: never in a URL, a cookie or storage.
"use strict";
(function () {
  let token = null;
  let actorName = "";
  let showAccounts = false;
  let timers = [];
  let cells = [];
  let cellsKey = "";
  let releasesKey = "";
  const actions = [];

  const $ = (id) => document.getElementById(id);

  // Builds an element; children are nodes or text (always inserted as text, never as HTML).
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k === "text") e.textContent = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children) {
      if (c === null || c === undefined) continue;
      e.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return e;
  }

  function fill(tbody, rows, emptyText, columns) {
    tbody.replaceChildren(...(rows.length ? rows : [el("tr", {}, el("td", { colspan: columns, class: "muted", text: emptyText }))]));
  }

  // ---- time -----------------------------------------------------------------------------------
  const pad = (n) => String(n).padStart(2, "0");
  function utc(ms) {
    const d = new Date(ms);
    return `${pad(d.getUTCHours())}:${pad(d.getUTCMinutes())}:${pad(d.getUTCSeconds())}`;
  }
  function ago(ms) {
    let s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 60) return `${s}s ago`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m}m ${s % 60}s ago`;
    return `${Math.floor(m / 60)}h ${m % 60}m ago`;
  }
  function parseTtl(text) {
    const m = /^\s*(\d+)\s*(s|m|h|d)\s*$/.exec(text || "");
    if (!m) return null;
    return Number(m[1]) * { s: 1e3, m: 6e4, h: 36e5, d: 864e5 }[m[2]];
  }
  const iso = (ms) => new Date(ms).toISOString();
  const shortTime = (text) => (text || "").replace("T", " ").replace(/\.\d+Z$/, "Z");

  // ---- API ------------------------------------------------------------------------------------
  async function api(method, path, body) {
    if (!token) throw new Error("not signed in");
    const headers = { Authorization: "Bearer " + token };
    if (body !== undefined) headers["Content-Type"] = "application/json";
    const r = await fetch(path, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: "no-store",
      credentials: "omit",
      referrerPolicy: "no-referrer",
    });
    if (r.status === 401) {
      signOut("The token was refused (or the service has none configured).");
      throw new Error("unauthorized");
    }
    const text = await r.text();
    let data = null;
    try {
      data = text ? JSON.parse(text) : null;
    } catch (_) {
      data = null;
    }
    if (!r.ok) throw new Error((data && data.error) || `HTTP ${r.status}`);
    return data;
  }

  // ---- sign in / out --------------------------------------------------------------------------
  async function signIn(ev) {
    ev.preventDefault();
    const input = $("token");
    token = input.value;
    input.value = "";
    $("login-error").textContent = "";
    try {
      cells = await api("GET", "/admin/breaker");
    } catch (e) {
      token = null;
      $("login-error").textContent = e.message === "unauthorized" ? "The token was refused." : `Cannot sign in: ${e.message}`;
      return;
    }
    $("login-panel").classList.add("hidden");
    $("console").classList.remove("hidden");
    $("logout").classList.remove("hidden");
    renderCells();
    poll(refreshFast, 2000);
    poll(refreshSlow, 5000);
  }

  function signOut(message) {
    token = null;
    timers.forEach(clearTimeout);
    timers = [];
    for (const id of ["cells", "held-groups", "audit", "notices"]) $(id).replaceChildren();
    cellsKey = releasesKey = heldKey = "";
    $("console").classList.add("hidden");
    $("logout").classList.add("hidden");
    $("login-panel").classList.remove("hidden");
    $("login-error").textContent = message || "";
    $("status-line").textContent = "not signed in";
    closeDialog();
  }

  // Runs `f` now and then every `ms` after it finishes (never two at once).
  function poll(f, ms) {
    const run = async () => {
      if (!token) return;
      try {
        await f();
      } catch (e) {
        if (token) $("status-line").textContent = `update failed: ${e.message}`;
      }
      if (token) timers.push(setTimeout(run, ms));
    };
    run();
  }

  async function refreshFast() {
    const [c, t, r] = await Promise.all([
      api("GET", "/admin/breaker"),
      api("GET", "/admin/timeline"),
      api("GET", "/admin/held/releases"),
    ]);
    cells = c || [];
    renderCells();
    renderChart(t);
    renderReleases(r || []);
    const open = cells.filter((x) => x.state !== "closed").length;
    $("status-line").textContent = `${cells.length} cells, ${open} not closed · updated ${utc(Date.now())} UTC`;
  }

  async function refreshSlow() {
    const q = showAccounts ? "&accounts=true" : "";
    const [h, a, n] = await Promise.all([
      api("GET", "/admin/held/groups"),
      api("GET", "/admin/audit?limit=100" + q),
      api("GET", "/admin/notices/recent?limit=25" + q),
    ]);
    renderHeld(h);
    renderAudit(a || []);
    renderNotices(n);
  }

  // ---- breaker cells --------------------------------------------------------------------------
  const STATE_LABEL = { closed: "closed", open: "open", half_open: "half-open", forced_open: "forced open", forced_closed: "forced closed" };

  // Rows are rebuilt only when a cell changed (a button is not replaced under the pointer);
  // otherwise only the "since" column is brought up to date.
  function renderCells() {
    const key = JSON.stringify(cells);
    if (key === cellsKey) {
      for (const td of $("cells").querySelectorAll("td[data-since]")) td.textContent = ago(Number(td.dataset.since));
      return;
    }
    cellsKey = key;
    const rows = cells.map((c) => {
      const thr = c.spike_threshold || 0;
      const ratio = thr > 0 ? Math.min(1, c.decisions_this_minute / thr) : 0;
      const meter = el("span", { class: "meter" + (c.decisions_this_minute > thr ? " over" : "") }, el("span"));
      meter.firstChild.style.width = `${Math.round(ratio * 100)}%`;
      const forced = c.state === "forced_open" || c.state === "forced_closed";
      const cap = c.cap_per_minute === undefined ? "" : `${Math.round(c.cap_per_minute * 10) / 10}/min · burst ${c.cap_burst}`;
      return el(
        "tr",
        { "data-cell": c.cell, "data-state": c.state, class: c.state === "closed" ? "" : "tripped" },
        el("td", { class: "mono", text: c.cell }),
        el("td", {}, el("span", { class: `state state-${c.state}`, text: STATE_LABEL[c.state] || c.state })),
        el("td", { text: c.cause ? c.cause.replace(/_/g, " ") : "—" }),
        c.since_ms ? el("td", { title: iso(c.since_ms), "data-since": c.since_ms, text: ago(c.since_ms) }) : el("td", { text: "—" }),
        el("td", { class: "num" }, `${c.decisions_this_minute} / ${Math.round(thr * 10) / 10}${c.warming_up ? " (warming up)" : ""}`, meter),
        el("td", { class: "num", text: cap }),
        el("td", { text: c.forced_until_ms ? `${utc(c.forced_until_ms)} UTC` : "—" }),
        el(
          "td",
          {},
          el("button", { type: "button", "data-action": "open", onclick: () => breakerAction(c.cell, "open") }, "Force open…"),
          el("button", { type: "button", "data-action": "close", onclick: () => breakerAction(c.cell, "close") }, "Force close…"),
          forced ? el("button", { type: "button", "data-action": "clear", onclick: () => breakerAction(c.cell, "clear") }, "Clear…") : null
        )
      );
    });
    fill($("cells"), rows, "no cells yet", 8);
  }

  function breakerAction(cell, verb) {
    const c = cells.find((x) => x.cell === cell);
    const now = c ? `Now: ${STATE_LABEL[c.state] || c.state}, ${c.decisions_this_minute} decisions this minute (spike threshold ${Math.round(c.spike_threshold * 10) / 10}).` : "The cell does not exist yet: it is created by this override.";
    const what = {
      open: (ttl) => `Force cell "${cell}" OPEN for ${ttl.text} (until ${utc(Date.now() + ttl.ms)} UTC): every decision of this cell is held, whatever the traffic. Held notices wait in the held queue until someone releases or discards them.`,
      close: (ttl) => `Force cell "${cell}" CLOSED for ${ttl.text} (until ${utc(Date.now() + ttl.ms)} UTC): spikes are ignored, the rate caps still apply.`,
      clear: () => `End the override on cell "${cell}": a forced-open cell goes half-open (probes), a forced-closed cell goes back to spike detection.`,
    }[verb];
    openDialog({
      title: { open: "Force open", close: "Force close", clear: "Clear override" }[verb] + ` · ${cell}`,
      ttl: verb !== "clear",
      preview: async (ttl) => {
        if (verb !== "clear" && ttl.ms === null) return { text: "The TTL must be a number and a unit (s, m, h, d), e.g. 30m.", ok: false };
        return { text: `${what(ttl)}\n${now}\nApplied on every instance within a second; recorded in the audit trail.`, ok: true };
      },
      run: async (actor, reason, ttl) => {
        const body = verb === "clear" ? { actor, reason } : { ttl: ttl.text, actor, reason };
        const t = await api("POST", `/admin/breaker/${encodeURIComponent(cell)}/${verb}`, body);
        const to = t && t.to ? `now ${STATE_LABEL[t.to] || t.to}` : "no override was in force";
        return `breaker ${verb} on ${cell}: ${to}`;
      },
    });
  }

  // ---- chart ----------------------------------------------------------------------------------
  const SVG = "http://www.w3.org/2000/svg";
  function svg(tag, attrs, text) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
    if (text !== undefined) e.textContent = text;
    return e;
  }
  const BAND = { open: "#c62828", forced_open: "#6a1b9a", half_open: "#ef6c00", forced_closed: "#1565c0" };

  function renderChart(t) {
    const box = $("chart");
    const W = 1100, LEFT = 80, TOP = 16, H = 200, BAND_H = 14;
    const nowMinute = Math.floor((t ? t.now_ms : Date.now()) / 60000) * 60000;
    const span = 60;
    const first = nowMinute - (span - 1) * 60000;
    const byMinute = new Map(((t && t.minutes) || []).map((m) => [m.minute_ms, m]));
    const minutes = [];
    for (let i = 0; i < span; i++) minutes.push(byMinute.get(first + i * 60000) || { minute_ms: first + i * 60000, notices: 0, held: 0, cells: {} });
    const bandCells = [...new Set(minutes.flatMap((m) => Object.keys(m.cells || {})))].sort();
    for (const c of cells) if (c.state !== "closed" && !bandCells.includes(c.cell)) bandCells.push(c.cell);
    const height = TOP + H + 40 + bandCells.length * (BAND_H + 4) + 10;
    const s = svg("svg", { viewBox: `0 0 ${W} ${height}`, "font-family": "sans-serif", "font-size": 11, role: "img" });
    const plotW = W - LEFT - 10, barW = plotW / span;
    const max = Math.max(1, ...minutes.map((m) => m.notices + m.held));
    // Square-root scale (as the replay timeline): a few notices stay visible next to thousands held.
    const y = (v) => TOP + H - Math.sqrt(Math.max(0, v) / max) * H;
    s.append(svg("rect", { x: LEFT, y: TOP, width: plotW, height: H, fill: "#fafafa", stroke: "#cfd8dc" }));
    s.append(svg("text", { x: 4, y: TOP + 10 }, `${max}/min`), svg("text", { x: 4, y: y(max / 4) + 4 }, `${Math.round(max / 4)}`), svg("text", { x: 4, y: TOP + H }, "0"), svg("text", { x: 4, y: TOP + 26, "font-size": 9, fill: "#78909c" }, "(sqrt scale)"));
    minutes.forEach((m, i) => {
      const x = LEFT + i * barW;
      const yn = y(m.notices), yt = y(m.notices + m.held);
      if (m.notices > 0) s.append(svg("rect", { class: "bar-notices", x: x + 1, y: yn, width: Math.max(1, barW - 2), height: TOP + H - yn, fill: "#2e7d32" }));
      if (m.held > 0) s.append(svg("rect", { class: "bar-held", x: x + 1, y: yt, width: Math.max(1, barW - 2), height: yn - yt, fill: "#c62828" }));
      if (i % 10 === 0) s.append(svg("text", { x, y: TOP + H + 14, fill: "#546e7a" }, utc(m.minute_ms).slice(0, 5)));
      if (i === span - 1) s.append(svg("text", { x: x + barW, y: TOP + H + 14, fill: "#546e7a", "text-anchor": "end" }, utc(m.minute_ms).slice(0, 5)));
    });
    const ly = TOP + H + 30;
    s.append(svg("rect", { x: LEFT, y: ly - 9, width: 10, height: 10, fill: "#2e7d32" }), svg("text", { x: LEFT + 14, y: ly }, "notices sent by the pipeline per minute"));
    s.append(svg("rect", { x: LEFT + 250, y: ly - 9, width: 10, height: 10, fill: "#c62828" }), svg("text", { x: LEFT + 264, y: ly }, "held per minute (this instance)"));
    s.append(svg("text", { x: LEFT + 480, y: ly, fill: "#546e7a" }, "bands: red open · purple forced open · orange half-open · blue forced closed"));
    bandCells.forEach((cell, j) => {
      const by = ly + 10 + j * (BAND_H + 4);
      s.append(svg("text", { x: 4, y: by + 11 }, cell.length > 12 ? cell.slice(0, 11) + "…" : cell));
      s.append(svg("rect", { x: LEFT, y: by, width: plotW, height: BAND_H, fill: "#e8f5e9" }));
      minutes.forEach((m, i) => {
        const st = (m.cells || {})[cell];
        if (st && BAND[st]) s.append(svg("rect", { class: "band", "data-cell": cell, "data-state": st, x: LEFT + i * barW, y: by, width: barW + 0.5, height: BAND_H, fill: BAND[st] }));
      });
    });
    box.replaceChildren(s);
  }

  // ---- held queue -----------------------------------------------------------------------------
  let heldKey = "";
  function renderHeld(h) {
    if (!h) return;
    const key = JSON.stringify(h);
    if (key === heldKey) return;
    heldKey = key;
    $("held-summary").textContent = `${h.pending} pending · ${h.released} released · ${h.discarded} discarded` + (h.unreadable ? ` · ${h.unreadable} unreadable` : "");
    $("held-summary").setAttribute("data-pending", h.pending);
    const rows = h.groups.slice(0, 200).map((g) =>
      el(
        "tr",
        {},
        el("td", { text: shortTime(g.minute).slice(0, 16) }),
        el("td", { class: "mono", text: g.cell }),
        el("td", { class: "mono", text: g.held_cell }),
        el("td", { class: "mono", text: g.source }),
        el("td", { text: g.reason.replace(/_/g, " ") }),
        el("td", { class: "num", text: g.count }),
        el("td", {}, el("button", { type: "button", onclick: () => selectGroup(g) }, "Select"))
      )
    );
    fill($("held-groups"), rows, "nothing held", 7);
  }

  function selectGroup(g) {
    const from = Date.parse(g.minute);
    $("sel-cell").value = g.cell;
    $("sel-source").value = g.source;
    $("sel-from").value = iso(from);
    $("sel-to").value = iso(from + 60000);
    $("sel-all").checked = false;
  }

  function selection() {
    const v = (id) => $(id).value.trim();
    const sel = {};
    if (v("sel-cell")) sel.cell = v("sel-cell");
    if (v("sel-source")) sel.source = v("sel-source");
    if (v("sel-from")) sel.from = v("sel-from");
    if (v("sel-to")) sel.to = v("sel-to");
    if ($("sel-all").checked) sel.all = true;
    return sel;
  }

  function describe(sel) {
    if (sel.all) return "every held notice";
    const parts = [];
    if (sel.cell) parts.push(`cell ${sel.cell}`);
    if (sel.source) parts.push(`source ${sel.source}`);
    if (sel.from) parts.push(`held from ${sel.from}`);
    if (sel.to) parts.push(`before ${sel.to}`);
    return parts.join(", ") || "nothing selected";
  }

  function heldAction(verb) {
    const sel = selection();
    const rate = Math.max(1, Math.floor(Number($("sel-rate").value) || 0));
    openDialog({
      title: verb === "release" ? "Release held notices" : "Discard held notices",
      ttl: false,
      preview: async () => {
        if (!sel.all && !sel.cell && !sel.source && !sel.from && !sel.to) return { text: "Select held notices first (a group's Select button, or cell / source / from / to), or tick “every held notice”.", ok: false };
        if (sel.all && (sel.cell || sel.source || sel.from || sel.to)) return { text: "“every held notice” cannot be combined with other criteria.", ok: false };
        const q = new URLSearchParams();
        for (const k of ["cell", "source", "from", "to"]) if (sel[k]) q.set(k, sel[k]);
        const l = await api("GET", "/admin/held?" + q.toString());
        const already = `Already released: ${l.released}, already discarded: ${l.discarded} (left as they are).`;
        if (l.pending === 0) return { text: `No pending held notice matches ${describe(sel)}.\n${already}`, ok: false };
        if (verb === "release") {
          const minutes = l.pending / rate;
          const dur = minutes < 1 ? `${Math.ceil(minutes * 60)} s` : `${Math.ceil(minutes)} min`;
          return { text: `${l.pending} pending held notices match ${describe(sel)}.\nThey will be sent to the notices topic at ${rate}/min: about ${dur}. Each is sent exactly once; a release that is stopped can be run again.\n${already}`, ok: true };
        }
        return { text: `${l.pending} pending held notices match ${describe(sel)}.\nThey will be DISCARDED: never sent to the mailer. This cannot be undone.\n${already}`, ok: true };
      },
      run: async (actor, reason) => {
        const body = Object.assign({}, sel, { actor, reason });
        if (verb === "release") {
          body.rate_per_minute = rate;
          // A release runs (paced) until done; the page stays usable meanwhile.
          const entry = logAction(`release of ${describe(sel)} at ${rate}/min: running…`);
          api("POST", "/admin/held/release", body).then(
            (r) => (entry.textContent = `release #${r.release_id} of ${describe(sel)}: sent ${r.sent}, already released ${r.already_released}, already on the topic ${r.already_sent}, remaining ${r.remaining}${r.interrupted ? " (stopped)" : " (done)"}`),
            (e) => (entry.textContent = `release of ${describe(sel)} failed: ${e.message}`)
          );
          return null;
        }
        const r = await api("POST", "/admin/held/discard", body);
        return `discard of ${describe(sel)}: discarded ${r.discarded}, already released ${r.already_released}, already discarded ${r.already_discarded}`;
      },
    });
  }

  function renderReleases(list) {
    const key = JSON.stringify(list);
    if (key === releasesKey) return;
    releasesKey = key;
    const items = list.map((r) =>
      el(
        "li",
        { "data-release": r.id },
        `#${r.id} by ${r.actor}: ${r.selector} at ${r.rate_per_minute}/min, since ${shortTime(r.started_at)}${r.stopping ? " · stopping…" : ""} `,
        r.stopping ? null : el("button", { type: "button", class: "danger", onclick: () => stopRelease(r) }, "Stop…")
      )
    );
    $("releases").replaceChildren(...(items.length ? items : [el("li", { class: "muted", text: "none" })]));
  }

  function stopRelease(r) {
    openDialog({
      title: `Stop release #${r.id}`,
      ttl: false,
      preview: async () => ({ text: `Stop the release of ${r.selector} started by ${r.actor} at ${shortTime(r.started_at)}.\nIt commits what it has sent and stops; the rest stays pending. Running it again sends each remaining notice once.`, ok: true }),
      run: async (actor, reason) => {
        const x = await api("POST", "/admin/held/stop", { id: r.id, actor, reason });
        return x.stopped.length ? `stop requested for release #${r.id}` : `release #${r.id} had already ended`;
      },
    });
  }

  function logAction(text) {
    const li = el("li", { text });
    actions.unshift(li);
    $("action-log").replaceChildren(...actions);
    return li;
  }

  // ---- audit and notices ----------------------------------------------------------------------
  function scopeText(scope) {
    if (!scope || typeof scope !== "object") return "";
    return Object.entries(scope)
      .filter(([, v]) => v !== null && v !== false)
      .map(([k, v]) => (k === "until_ms" ? `until ${utc(v)}` : `${k} ${v}`))
      .join(", ");
  }

  function renderAudit(list) {
    const rows = list.map((a) =>
      el(
        "tr",
        { "data-action": a.action },
        el("td", { text: shortTime(a.at) }),
        el("td", { text: a.actor }),
        el("td", { class: "mono", text: a.action }),
        el("td", { text: scopeText(a.scope) }),
        el("td", { class: "num", text: a.notices || "" }),
        el("td", { text: a.reason })
      )
    );
    fill($("audit"), rows, "no manual action recorded", 6);
  }

  function renderNotices(n) {
    if (!n) return;
    $("notices-summary").textContent = `last ${n.notices.length} notices: ${n.released} released from the held queue, ${n.notices.length - n.released} sent by the pipeline`;
    const head = [el("th", { text: "written (UTC)" }), el("th", { text: "notice id" }), el("th", { text: "cell" }), el("th", { text: "source" }), el("th", { text: "released by" })];
    if (showAccounts) head.push(el("th", { text: "account id" }));
    $("notices-head").replaceChildren(...head);
    const rows = n.notices.map((x) =>
      el(
        "tr",
        {},
        el("td", { text: shortTime(x.written_at) }),
        el("td", { class: "mono", text: x.notice_id }),
        el("td", { class: "mono", text: x.cell }),
        el("td", { class: "mono", text: x.source }),
        el("td", { text: x.released_by || "—" }),
        showAccounts ? el("td", { class: "mono", text: x.account_id || "" }) : null
      )
    );
    fill($("notices"), rows, "no notice yet", head.length);
  }

  // ---- the action dialog: preview, actor and reason, explicit confirm ---------------------------
  let current = null;

  function openDialog(spec) {
    current = spec;
    $("dialog-title").textContent = spec.title;
    $("dialog-preview").textContent = "Working out what will happen…";
    $("dialog-error").textContent = "";
    $("ttl-label").classList.toggle("hidden", !spec.ttl);
    $("actor").value = actorName;
    $("reason").value = "";
    $("dialog-confirm").disabled = true;
    $("dialog").classList.remove("hidden");
    (actorName ? $("reason") : $("actor")).focus();
    updatePreview();
  }

  function ttlValue() {
    const text = $("ttl").value.trim();
    return { text, ms: parseTtl(text) };
  }

  async function updatePreview() {
    const spec = current;
    if (!spec) return;
    spec.ready = false;
    try {
      const p = await spec.preview(ttlValue());
      if (spec !== current) return;
      $("dialog-preview").textContent = p.text;
      spec.ready = p.ok;
    } catch (e) {
      if (spec !== current) return;
      $("dialog-preview").textContent = `Cannot preview: ${e.message}`;
    }
    updateConfirm();
  }

  function updateConfirm() {
    const ok = current && current.ready && $("actor").value.trim() && $("reason").value.trim();
    $("dialog-confirm").disabled = !ok;
  }

  function closeDialog() {
    current = null;
    $("dialog").classList.add("hidden");
  }

  async function confirm(ev) {
    ev.preventDefault();
    const spec = current;
    if (!spec || !spec.ready) return;
    const actor = $("actor").value.trim();
    const reason = $("reason").value.trim();
    if (!actor || !reason) return;
    actorName = actor;
    $("dialog-confirm").disabled = true;
    try {
      const done = await spec.run(actor, reason, ttlValue());
      if (done) logAction(done);
      closeDialog();
      refreshFast().catch(() => {});
      refreshSlow().catch(() => {});
    } catch (e) {
      $("dialog-error").textContent = `Refused: ${e.message}`;
      updateConfirm();
    }
  }

  // ---- wiring ---------------------------------------------------------------------------------
  document.addEventListener("DOMContentLoaded", () => {
    $("login-form").addEventListener("submit", signIn);
    $("logout").addEventListener("click", () => signOut("Signed out."));
    $("dialog-form").addEventListener("submit", confirm);
    $("dialog-cancel").addEventListener("click", closeDialog);
    $("actor").addEventListener("input", updateConfirm);
    $("reason").addEventListener("input", updateConfirm);
    $("ttl").addEventListener("input", updatePreview);
    $("preview-release").addEventListener("click", () => heldAction("release"));
    $("preview-discard").addEventListener("click", () => heldAction("discard"));
    $("sel-clear").addEventListener("click", () => {
      for (const id of ["sel-cell", "sel-source", "sel-from", "sel-to"]) $(id).value = "";
      $("sel-all").checked = false;
    });
    const other = (verb) => () => {
      const cell = $("other-cell").value.trim();
      if (cell) breakerAction(cell, verb);
    };
    $("other-open").addEventListener("click", other("open"));
    $("other-close").addEventListener("click", other("close"));
    $("show-accounts").addEventListener("change", (e) => {
      showAccounts = e.target.checked;
      refreshSlow().catch(() => {});
    });
    document.addEventListener("keydown", (e) => {
      if (e.key === "Escape") closeDialog();
    });
  });
})();
