// bgproxy's dashboard: lives on GET /events (Server-Sent Events), acts through the admin API's POST calls.
// No dependencies and no build step. Everything the server sends is put in the page as text (never as HTML).
// The admin token, once asked for, lives in this script's memory only: a reload forgets it.
"use strict";

(() => {
  const COLORS = ["blue", "green"];
  const WINDOW_S = 300; // seconds the charts show (the server keeps as many samples)
  const $ = (id) => document.getElementById(id);

  let state = null; // the last /state seen
  let history = [];
  let series = []; // [{at, blue: {rps, error_rate, p50, p99, inflight}, green: {...}}], oldest first
  let token = null; // the admin token, in memory only
  let source = null;
  let fresh = true; // the stream just (re)opened: its first state is taken whatever its revision (a restart)
  let busy = false;

  // --- formatting -------------------------------------------------------------------------------------------------

  const clock = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });
  const num = (v, digits) => (v === null || v === undefined ? "–" : v.toFixed(digits));
  const ms = (s) => (s === null || s === undefined ? "–" : `${(s * 1000).toFixed(s < 0.01 ? 2 : 1)} ms`);
  const pct = (v) => (v === null || v === undefined ? "–" : `${(v * 100).toFixed(v > 0 && v < 0.01 ? 2 : 1)} %`);
  const cap = (c) => c.charAt(0).toUpperCase() + c.slice(1);

  function ago(t) {
    const s = Math.max(0, Math.round(Date.now() / 1000 - t));
    if (s < 60) return `${s} s ago`;
    if (s < 3600) return `${Math.floor(s / 60)} min ago`;
    return `${Math.floor(s / 3600)} h ago`;
  }

  function text(el, value) {
    if (el.textContent !== value) el.textContent = value;
  }

  // --- the stream -------------------------------------------------------------------------------------------------

  function setConn(kind, words) {
    $("conn").dataset.conn = kind;
    text($("conn-text"), words);
    $("main").classList.toggle("stale", kind !== "live");
  }

  function connect() {
    if (source !== null) source.close();
    fresh = true;
    source = new EventSource("events");
    source.addEventListener("open", () => {
      fresh = true;
      setConn("live", "live");
    });
    source.addEventListener("error", () => {
      if (source.readyState === EventSource.CLOSED) {
        // Refused (a 503 while the replica starts or stops): EventSource gives up; try again ourselves.
        setConn("offline", "offline, retrying…");
        setTimeout(connect, 2000);
      } else {
        setConn("reconnecting", "reconnecting…");
      }
    });
    source.addEventListener("state", (e) => applyState(JSON.parse(e.data), true));
    source.addEventListener("history", (e) => {
      history = JSON.parse(e.data).history;
      renderHistory();
    });
    source.addEventListener("series", (e) => {
      series = JSON.parse(e.data);
      drawCharts();
    });
    source.addEventListener("figures", (e) => {
      const f = JSON.parse(e.data);
      if (state !== null) {
        state.backends = f.backends;
        if ("store" in f) state.store = f.store;
        state.auto_promote = f.auto_promote ?? null;
        render();
      }
      series.push(sampleOf(f));
      const oldest = f.at - WINDOW_S;
      while (series.length && series[0].at < oldest) series.shift();
      drawCharts();
    });
  }

  function sampleOf(f) {
    const out = { at: f.at };
    for (const c of COLORS) {
      const b = f.backends[c];
      out[c] = { rps: b.rps, error_rate: b.error_rate, p50: b.p50, p99: b.p99, inflight: b.inflight };
    }
    return out;
  }

  function applyState(next, fromStream) {
    // An answer to our own call and the stream may cross: never go back to an older revision, except on a stream
    // that just opened (a restarted replica on the memory store counts from 0 again).
    if (state !== null && next.revision < state.revision && !(fromStream && fresh)) return;
    if (fromStream) fresh = false;
    state = next;
    render();
  }

  // --- rendering --------------------------------------------------------------------------------------------------

  function render() {
    if (state === null) return;
    const s = state;
    const hero = $("hero");
    hero.dataset.color = s.active;
    hero.dataset.standby = s.standby;
    const active = $("active");
    active.dataset.color = s.active;
    text(active, s.active);
    const w = s.weight;
    text(
      $("weight-text"),
      w === 0
        ? `All ordinary traffic to ${s.active}; ${s.standby} on standby`
        : `Weight ${w} %: ${100 - w} % to ${s.active}, ${w} % to ${s.standby}`,
    );
    const a = $("split-active");
    const b = $("split-standby");
    a.dataset.color = s.active;
    b.dataset.color = s.standby;
    a.style.width = `${100 - w}%`;
    b.style.width = `${w}%`;
    $("split").setAttribute("aria-label", `traffic split: ${100 - w} % ${s.active}, ${w} % ${s.standby}`);
    renderRollout();
    text($("revision"), String(s.revision));
    text($("previous"), s.previous ?? "none yet");
    text($("release"), s.release ? `${s.release}${s.release_pending ? " (waiting for a promotion)" : ""}` : "–");
    text($("last-change"), lastChange(s));
    text($("store"), storeText(s.store));
    renderBanners();
    for (const c of COLORS) renderCard(c);
    $("promote").textContent = `Promote ${s.standby}`;
    $("rollback").textContent = s.weight > 0 || s.rollout ? "Roll back (abort)" : `Roll back to ${s.previous ?? "previous"}`;
    $("pause").disabled = busy || !s.rollout || s.rollout.paused;
    $("resume").disabled = busy || !s.rollout || !s.rollout.paused;
  }

  function lastChange(s) {
    const forced = s.forced ? ", forced" : "";
    return `${clock(s.updated_at)} (${ago(s.updated_at)}) by ${s.source}${forced}${s.reason ? `: ${s.reason}` : ""}`;
  }

  function storeText(store) {
    if (!store) return "–";
    if (store.backend === "configmap") {
      const watch = store.connected === false ? " (watch disconnected)" : "";
      return `ConfigMap ${store.namespace}/${store.name}${watch}`;
    }
    if (store.backend === "file") return `file ${store.path}`;
    return "memory";
  }

  function renderRollout() {
    const r = state.rollout;
    const box = $("rollout");
    box.hidden = r === null;
    if (r === null) return;
    const list = $("steps");
    const items = r.steps.map((weight, i) => [`${weight} %`, i]);
    items.push([`${state.standby} live`, r.steps.length]);
    while (list.children.length > items.length) list.lastChild.remove();
    while (list.children.length < items.length) list.appendChild(document.createElement("li"));
    items.forEach(([label, i], n) => {
      const li = list.children[n];
      text(li, label);
      li.className = i < r.step ? "done" : "";
      if (i === r.step) li.setAttribute("aria-current", "step");
      else li.removeAttribute("aria-current");
    });
    renderCountdown();
  }

  function renderCountdown() {
    const r = state && state.rollout;
    if (!r) return;
    const stepText = `Step ${r.step + 1} of ${r.steps.length} (${r.steps[r.step]} %)`;
    if (r.paused) {
      text($("next-step"), `${stepText}, paused`);
      return;
    }
    const due = r.step_started_at + r.interval;
    const left = Math.max(0, Math.round(due - Date.now() / 1000));
    const next = r.step + 1 < r.steps.length ? `next ${r.steps[r.step + 1]} %` : `then ${state.standby} goes live`;
    text($("next-step"), `${stepText}; ${next} at ${clock(due)} (in ${left} s)`);
  }

  function renderBanners() {
    const hold = $("hold");
    const h = state.hold;
    hold.hidden = !h;
    if (h) {
      const release = h.release ? `, release ${h.release}` : "";
      text(
        hold,
        `Held by an automatic rollback since ${clock(h.since)}: the store asks for ${h.active} (weight ${h.weight}` +
          `${release}); traffic does not follow it. Why: ${h.reason}`,
      );
    }
    const auto = $("autopromote");
    const p = state.auto_promote;
    auto.hidden = !p;
    if (p) {
      const what = p.release ? `release ${p.release}` : "the standby release";
      const when = p.blocked_by
        ? `blocked: ${p.blocked_by}`
        : p.due_at
          ? `due at ${clock(p.due_at)} (in ${Math.max(0, Math.round(p.due_at - Date.now() / 1000))} s)`
          : "checking";
      text(auto, `Auto-promotion of ${what} on ${state.standby}, waiting since ${clock(p.waiting_since)}: ${when}`);
    }
  }

  function renderCard(c) {
    const card = document.querySelector(`.card[data-color="${c}"]`);
    const b = state.backends[c];
    const field = (name) => card.querySelector(`[data-field="${name}"]`);
    const live = c === state.active;
    const role = field("role");
    role.dataset.role = live ? "live" : "standby";
    text(role, live ? (state.weight > 0 ? `live, ${100 - state.weight} %` : "live") : state.weight > 0 ? `standby, ${state.weight} %` : "standby");
    const health = field("health");
    health.dataset.health = b.healthy ? "healthy" : "down";
    text(health, b.healthy ? "healthy" : "down");
    text(field("rps"), num(b.rps, 1));
    text(field("error_rate"), pct(b.error_rate));
    text(field("p50"), ms(b.p50));
    text(field("p99"), ms(b.p99));
    text(field("inflight"), String(b.inflight));
    text(field("requests"), b.requests === null ? "–" : String(b.requests));
    text(field("drained"), b.drained_since ? `yes, since ${clock(b.drained_since)}: safe to scale down` : "no");
    text(field("url"), b.url);
  }

  function renderHistory() {
    const body = $("history").tBodies[0];
    const rows = history.map((e) => {
      const tr = document.createElement("tr");
      const cell = (value, cls) => {
        const td = document.createElement("td");
        if (cls) td.className = cls;
        if (value instanceof Node) td.appendChild(value);
        else td.textContent = value;
        tr.appendChild(td);
      };
      cell(`${clock(e.when)}`, "num");
      cell(e.event);
      const flip = document.createElement("span");
      if (e.from === e.to) {
        flip.className = `c-${e.to}`;
        flip.textContent = e.to;
      } else {
        const from = document.createElement("span");
        from.className = `c-${e.from}`;
        from.textContent = e.from;
        const to = document.createElement("span");
        to.className = `c-${e.to}`;
        to.textContent = e.to;
        flip.append(from, " → ", to);
      }
      cell(flip);
      cell(`${e.weight} %`, "num");
      cell(e.forced ? `${e.source} (forced)` : e.source);
      cell(e.reason);
      cell(String(e.revision), "num");
      return tr;
    });
    body.replaceChildren(...rows);
  }

  // --- charts: a few lines of canvas, no library ------------------------------------------------------------------

  const CHARTS = [
    { id: "chart-rps", lines: [["rps", 1, false]], unit: "/s", floor: 1 },
    { id: "chart-err", lines: [["error_rate", 100, false]], unit: " %", floor: 5 },
    { id: "chart-lat", lines: [["p99", 1000, false], ["p50", 1000, true]], unit: " ms", floor: 1 },
  ];

  function drawCharts() {
    const css = getComputedStyle(document.documentElement);
    const ink = { blue: css.getPropertyValue("--blue-ink").trim(), green: css.getPropertyValue("--green-ink").trim() };
    const grid = css.getPropertyValue("--grid").trim();
    const muted = css.getPropertyValue("--muted").trim();
    const now = series.length ? series[series.length - 1].at : Date.now() / 1000;
    for (const chart of CHARTS) {
      const canvas = $(chart.id);
      const ratio = window.devicePixelRatio || 1;
      const width = canvas.clientWidth;
      const height = canvas.clientHeight;
      if (width === 0) continue;
      if (canvas.width !== Math.round(width * ratio)) canvas.width = Math.round(width * ratio);
      if (canvas.height !== Math.round(height * ratio)) canvas.height = Math.round(height * ratio);
      const g = canvas.getContext("2d");
      g.setTransform(ratio, 0, 0, ratio, 0, 0);
      g.clearRect(0, 0, width, height);
      let top = chart.floor;
      for (const p of series) {
        for (const c of COLORS) {
          for (const [key, scale] of chart.lines) {
            const v = p[c] && p[c][key];
            if (v !== null && v !== undefined) top = Math.max(top, v * scale);
          }
        }
      }
      top = niceCeil(top);
      const left = 40;
      const bottom = height - 18;
      const x = (t) => left + ((t - (now - WINDOW_S)) / WINDOW_S) * (width - left - 4);
      const y = (v) => 6 + (1 - v / top) * (bottom - 6);
      g.font = "11px system-ui, sans-serif";
      g.fillStyle = muted;
      g.strokeStyle = grid;
      g.lineWidth = 1;
      for (const f of [0, 0.5, 1]) {
        const yy = Math.round(y(top * f)) + 0.5;
        g.beginPath();
        g.moveTo(left, yy);
        g.lineTo(width - 4, yy);
        g.stroke();
        g.textAlign = "right";
        g.textBaseline = "middle";
        g.fillText(short(top * f), left - 6, yy);
      }
      g.textBaseline = "alphabetic";
      g.textAlign = "left";
      g.fillText("−5 min", left, height - 4);
      g.textAlign = "right";
      g.fillText("now", width - 4, height - 4);
      const latest = [];
      for (const c of COLORS) {
        for (const [key, scale, dashed] of chart.lines) {
          g.strokeStyle = ink[c];
          g.lineWidth = 2;
          g.setLineDash(dashed ? [5, 4] : []);
          g.beginPath();
          let drawing = false;
          let last = null;
          for (const p of series) {
            const v = p[c] && p[c][key];
            if (v === null || v === undefined || p.at < now - WINDOW_S) {
              drawing = false;
              continue;
            }
            const px = x(p.at);
            const py = y(v * scale);
            if (drawing) g.lineTo(px, py);
            else g.moveTo(px, py);
            drawing = true;
            last = v * scale;
          }
          g.stroke();
          if (last !== null) latest.push(`${c} ${key === "rps" || key === "error_rate" ? "" : `${key} `}${short(last)}${chart.unit}`);
        }
      }
      g.setLineDash([]);
      const caption = $(`${chart.id}-h`).textContent;
      canvas.setAttribute("aria-label", `${caption}, last five minutes; now: ${latest.length ? latest.join(", ") : "no data"}`);
      canvas.removeAttribute("aria-labelledby");
    }
  }

  function niceCeil(v) {
    const p = 10 ** Math.floor(Math.log10(v));
    for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
    return 10 * p;
  }

  function short(v) {
    if (v >= 100) return v.toFixed(0);
    if (v >= 10) return v.toFixed(1).replace(/\.0$/, "");
    return v.toFixed(2).replace(/\.?0+$/, "") || "0";
  }

  // --- actions ----------------------------------------------------------------------------------------------------

  const ACTION_BUTTONS = ["promote", "shift", "pause", "resume", "abort", "rollback"];

  function setBusy(on) {
    busy = on;
    for (const id of ACTION_BUTTONS) $(id).disabled = on;
    render();
  }

  function showResult(kind, message) {
    const el = $("result");
    el.dataset.kind = kind;
    el.setAttribute("role", kind === "error" ? "alert" : "status");
    text(el, message);
  }

  function common() {
    const body = {};
    const reason = $("reason").value.trim();
    if (reason) body.reason = reason;
    if ($("force").checked) body.force = true;
    return body;
  }

  async function act(path, body, label) {
    if (busy) return;
    setBusy(true);
    showResult("", `${label}…`);
    try {
      for (;;) {
        const headers = { "Content-Type": "application/json" };
        if (token !== null) headers.Authorization = `Bearer ${token}`;
        let response;
        try {
          response = await fetch(path, { method: "POST", headers, body: JSON.stringify(body), cache: "no-store" });
        } catch (err) {
          showResult("error", `${label}: the admin API could not be reached (${err.message})`);
          return;
        }
        const data = await response.json().catch(() => ({}));
        if (response.status === 401) {
          token = null;
          const given = await askToken(data.error || "this call needs the admin token");
          if (given === null) {
            showResult("error", `${label}: not sent (no token given)`);
            return;
          }
          token = given;
          continue;
        }
        if (!response.ok) {
          showResult("error", `${label} refused (${response.status}): ${data.error || response.statusText}`);
          return;
        }
        applyState(data, false);
        showResult("ok", `${label}: done (revision ${data.revision})`);
        return;
      }
    } finally {
      setBusy(false);
    }
  }

  function askToken(why) {
    const dialog = $("token-dialog");
    const input = $("token-input");
    text($("token-why"), why);
    input.value = "";
    return new Promise((resolve) => {
      const done = (value) => {
        $("token-form").removeEventListener("submit", onSubmit);
        $("token-cancel").removeEventListener("click", onCancel);
        dialog.removeEventListener("cancel", onCancel);
        input.value = ""; // the token stays in this script's memory, not in the page
        if (dialog.open) dialog.close();
        resolve(value);
      };
      const onSubmit = (e) => {
        e.preventDefault();
        if (input.value) done(input.value);
      };
      const onCancel = (e) => {
        e.preventDefault();
        done(null);
      };
      $("token-form").addEventListener("submit", onSubmit);
      $("token-cancel").addEventListener("click", onCancel);
      dialog.addEventListener("cancel", onCancel);
      dialog.showModal();
      input.focus();
    });
  }

  function parseSteps(value) {
    const parts = value.split(/[\s,]+/).filter(Boolean);
    const steps = parts.map(Number);
    return steps.every(Number.isInteger) && steps.length ? steps : null;
  }

  function wire() {
    $("promote-form").addEventListener("submit", (e) => {
      e.preventDefault();
      const body = common();
      const stepped = $("promote-form").elements.mode.value === "stepped";
      if (stepped) {
        const steps = parseSteps($("steps-input").value);
        if (steps === null) {
          showResult("error", "Steps: whole percents separated by commas, e.g. 10,50,100");
          $("steps-input").focus();
          return;
        }
        body.steps = steps;
        body.interval = Number($("interval-input").value);
      }
      const to = state ? state.standby : "the standby colour";
      act("promote", body, stepped ? `Stepped promotion of ${to}` : `Promote ${to}`);
    });
    $("shift-form").addEventListener("submit", (e) => {
      e.preventDefault();
      act("shift", { ...common(), weight: Number($("weight-input").value) }, `Shift to ${$("weight-input").value} %`);
    });
    $("weight-range").addEventListener("input", () => {
      $("weight-input").value = $("weight-range").value;
    });
    $("weight-input").addEventListener("input", () => {
      $("weight-range").value = $("weight-input").value;
    });
    $("pause").addEventListener("click", () => act("pause", common(), "Pause"));
    $("resume").addEventListener("click", () => act("resume", common(), "Resume"));
    $("abort").addEventListener("click", () => act("abort", common(), "Abort"));
    $("rollback").addEventListener("click", () => act("rollback", common(), "Roll back"));
    window.addEventListener("resize", drawCharts);
    setInterval(() => {
      if (state === null) return;
      renderCountdown();
      renderBanners();
      text($("last-change"), lastChange(state));
    }, 1000);
  }

  wire();
  connect();
})();
