"use strict";

(() => {
  const TOKEN_KEY = "coalmine.adminToken";
  const SVG_NS = "http://www.w3.org/2000/svg";
  const DEFAULT_REFRESH_SECONDS = 5;
  const ACTIONS = [
    {
      name: "approve",
      label: "Approve",
      phases: ["approval"],
      confirm: "Approves the candidate that passed every step: it is promoted and every user gets it.",
    },
    { name: "pause", label: "Pause", phases: ["dataset", "shadow", "canary", "approval"] },
    { name: "resume", label: "Resume", phases: ["paused"] },
    {
      name: "promote",
      label: "Promote",
      phases: ["dataset", "shadow", "canary", "approval", "paused"],
      confirm: "Moves the stable label to the candidate version: every user gets it.",
    },
    {
      name: "rollback",
      label: "Roll back",
      phases: ["dataset", "shadow", "canary", "approval", "paused", "promoted"],
      confirm: "Sends all traffic back to the stable version and parks the canary label on it.",
    },
    {
      name: "abort",
      label: "Abort",
      phases: ["dataset", "shadow", "canary", "approval", "paused"],
      confirm: "Stops the rollout: the canary gets no more traffic and labels stay as they are.",
    },
    {
      name: "start",
      label: "Start next rollout",
      phases: ["pending", "promoted", "rolled_back", "aborted"],
      confirm: "Starts a rollout of the candidate the release's target names now, even one a rollout already judged.",
    },
  ];

  const $ = (id) => document.getElementById(id);
  const rendered = new Map();
  let timer = null;
  let generation = 0;
  let pending = null;
  let busy = false;

  // -- token ----------------------------------------------------------------------------

  function token() {
    return sessionStorage.getItem(TOKEN_KEY) || "";
  }

  function setAuth(text, state) {
    const status = $("auth-status");
    if (status.textContent !== text) status.textContent = text;
    status.dataset.state = state;
  }

  function setAction(text, state) {
    const status = $("action-status");
    status.hidden = !text;
    status.textContent = text;
    status.dataset.state = state || "";
  }

  function clearReleases() {
    rendered.clear();
    $("releases").replaceChildren();
    $("updated").textContent = "";
  }

  // -- the admin API ----------------------------------------------------------------------

  async function call(path, options) {
    const headers = new Headers({ Accept: "application/json" });
    headers.set("Authorization", `Bearer ${token()}`);
    if (options && options.body) headers.set("Content-Type", "application/json");
    const response = await fetch(path, {
      method: (options && options.method) || "GET",
      body: options && options.body,
      headers,
      cache: "no-store",
      credentials: "omit",
    });
    let body = null;
    try {
      body = await response.json();
    } catch (error) {
      body = null;
    }
    return { status: response.status, ok: response.ok, body };
  }

  function errorText(result) {
    const error = result.body && result.body.error;
    return error && error.message ? error.message : `HTTP ${result.status}`;
  }

  async function refresh() {
    clearTimeout(timer);
    timer = null;
    generation += 1;
    const mine = generation;
    if (!token()) {
      clearReleases();
      setAuth("Enter the admin token to see the releases.", "none");
      return;
    }
    let delay = DEFAULT_REFRESH_SECONDS;
    try {
      const result = await call("dashboard/data");
      if (mine !== generation) return;
      if (result.status === 401) {
        setAuth("Token refused (401): enter the admin token again.", "refused");
        $("releases").classList.add("stale");
        return;
      }
      if (!result.ok) {
        setAuth(`Could not load the releases: ${errorText(result)}`, "error");
      } else {
        setAuth("Token accepted.", "accepted");
        render(result.body);
        delay = result.body.refreshSeconds || DEFAULT_REFRESH_SECONDS;
      }
    } catch (error) {
      if (mine !== generation) return;
      setAuth("The admin API cannot be reached; retrying.", "error");
    }
    if (!document.hidden) timer = setTimeout(refresh, delay * 1000);
  }

  async function act(name, action, reason) {
    if (busy) return;
    busy = true;
    setButtonsDisabled(true);
    const label = `${name}: ${action}`;
    setAction(`${label}…`, "working");
    try {
      const body = JSON.stringify(reason ? { reason } : {});
      const path = `releases/${encodeURIComponent(name)}/${encodeURIComponent(action)}`;
      const result = await call(path, { method: "POST", body });
      if (result.status === 401) {
        setAction(`${label} refused: token refused (401).`, "refused");
        setAuth("Token refused (401): enter the admin token again.", "refused");
      } else if (!result.ok) {
        setAction(`${label} failed: ${errorText(result)} (${result.status}).`, "error");
      } else {
        setAction(`${label} done: the release is ${result.body.phase}.`, "done");
      }
    } catch (error) {
      setAction(`${label} failed: the admin API cannot be reached.`, "error");
    } finally {
      busy = false;
      setButtonsDisabled(false);
    }
    await refresh();
  }

  function setButtonsDisabled(disabled) {
    for (const button of document.querySelectorAll("button[data-action]")) {
      button.disabled = disabled || button.dataset.applies !== "yes";
    }
  }

  // -- confirmation ---------------------------------------------------------------------

  function confirmAction(name, action) {
    pending = { name, action: action.name };
    $("confirm-title").textContent = `${action.label} ${name}?`;
    $("confirm-text").textContent = action.confirm;
    $("confirm-reason").value = "";
    $("confirm-ok").textContent = `${action.label} ${name}`;
    $("confirm").showModal();
    $("confirm-reason").focus();
  }

  function closeConfirm() {
    pending = null;
    if ($("confirm").open) $("confirm").close();
  }

  // -- formatting -----------------------------------------------------------------------

  function iso(seconds) {
    return new Date(seconds * 1000).toISOString();
  }

  function clockTime(seconds) {
    return iso(seconds).slice(11, 16);
  }

  function dateTime(seconds) {
    return iso(seconds).slice(0, 19).replace("T", " ");
  }

  function number(value) {
    if (value === null || value === undefined) return "–";
    const magnitude = Math.abs(value);
    let text;
    if (magnitude >= 100) text = value.toFixed(0);
    else if (magnitude >= 1) text = String(Number(value.toPrecision(3)));
    else text = String(Number(value.toFixed(4)));
    return text === "-0" ? "0" : text;
  }

  function signed(value, scale) {
    if (value === null || value === undefined) return "–";
    if (scale === "ratio") return `×${number(value)}`;
    return value > 0 ? `+${number(value)}` : number(value);
  }

  function el(tag, attributes, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (key === "text") node.textContent = value;
      else if (key === "className") node.className = value;
      else node.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function svg(tag, attributes, ...children) {
    const node = document.createElementNS(SVG_NS, tag);
    for (const [key, value] of Object.entries(attributes || {})) {
      if (value !== null && value !== undefined) node.setAttribute(key, String(value));
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function svgTitle(text) {
    const title = svg("title");
    title.textContent = text;
    return title;
  }

  // -- charts ---------------------------------------------------------------------------

  const METRIC_WIDTH = 640;
  const WEIGHT_WIDTH = 1240;
  const MARGIN = { left: 64, right: 16, top: 12, bottom: 30 };

  function frame(width, height, range, yMin, yMax) {
    const plotWidth = width - MARGIN.left - MARGIN.right;
    const plotHeight = height - MARGIN.top - MARGIN.bottom;
    const span = Math.max(range.end - range.start, 1);
    return {
      height,
      x: (t) => MARGIN.left + ((t - range.start) / span) * plotWidth,
      y: (v) => MARGIN.top + (1 - (v - yMin) / (yMax - yMin)) * plotHeight,
      left: MARGIN.left,
      right: width - MARGIN.right,
      top: MARGIN.top,
      bottom: height - MARGIN.bottom,
      yMin,
      yMax,
    };
  }

  function niceTicks(min, max, count) {
    const raw = (max - min) / count;
    const power = Math.pow(10, Math.floor(Math.log10(raw)));
    const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw) || raw;
    const ticks = [];
    for (let v = Math.ceil(min / step) * step; v <= max + step * 1e-9; v += step) {
      ticks.push(Math.abs(v) < step * 1e-9 ? 0 : v);
    }
    return ticks;
  }

  function axes(f, range, yTicks, yLabel) {
    const group = svg("g", { class: "axes", "aria-hidden": "true" });
    group.append(svg("line", { x1: f.left, x2: f.left, y1: f.top, y2: f.bottom }));
    group.append(svg("line", { x1: f.left, x2: f.right, y1: f.bottom, y2: f.bottom }));
    for (const value of yTicks) {
      const y = f.y(value);
      group.append(svg("line", { class: "grid", x1: f.left, x2: f.right, y1: y, y2: y }));
      const label = svg("text", { x: f.left - 6, y: y + 4, "text-anchor": "end" });
      label.textContent = yLabel(value);
      group.append(label);
    }
    const span = range.end - range.start;
    const count = span > 0 ? 5 : 1;
    for (let i = 0; i < count; i += 1) {
      const t = range.start + (span * i) / Math.max(count - 1, 1);
      const x = f.x(t);
      group.append(svg("line", { class: "tick", x1: x, x2: x, y1: f.bottom, y2: f.bottom + 4 }));
      const anchor = i === 0 ? "start" : i === count - 1 ? "end" : "middle";
      const label = svg("text", { x, y: f.bottom + 18, "text-anchor": anchor });
      label.textContent = clockTime(t);
      group.append(label);
    }
    return group;
  }

  function chartSvg(className, f, title, description) {
    const id = `chart-${Math.random().toString(36).slice(2)}`;
    const root = svg("svg", {
      class: className,
      viewBox: `0 0 ${f.right + MARGIN.right} ${f.height}`,
      role: "img",
      "aria-labelledby": `${id}-title ${id}-desc`,
    });
    const titleNode = svg("title", { id: `${id}-title` });
    titleNode.textContent = title;
    const descNode = svg("desc", { id: `${id}-desc` });
    descNode.textContent = description;
    root.append(titleNode, descNode);
    return root;
  }

  function weightChart(release, range) {
    const steps = release.weights;
    const f = frame(WEIGHT_WIDTH, 150, range, 0, 100);
    const last = steps[steps.length - 1];
    const description = steps
      .map((s) => `${clockTime(s.at)} ${s.decision}: ${number(s.weight)} %`)
      .join("; ");
    const root = chartSvg("weight-chart", f, `Canary weight of ${release.name}`, description);
    root.append(axes(f, range, [0, 25, 50, 75, 100], (v) => `${v} %`));
    if (!steps.length) return root;
    let d = `M${f.x(steps[0].at)},${f.y(steps[0].weight)}`;
    for (const s of steps.slice(1)) d += ` H${f.x(s.at)} V${f.y(s.weight)}`;
    d += ` H${f.x(Math.max(range.end, last.at))}`;
    root.append(svg("path", { class: "weight", d }));
    for (const s of steps) {
      const marker = svg("circle", {
        class: `event event-${s.decision}`,
        cx: f.x(s.at),
        cy: f.y(s.weight),
        r: 4,
      });
      marker.append(svgTitle(`${dateTime(s.at)} UTC: ${s.decision}, weight ${number(s.weight)} %`));
      root.append(marker);
    }
    return root;
  }

  // The vertical range holds the estimates, the reference lines and the latest band;
  // earlier, wider bands may widen it by half as much again, and are clipped beyond.
  function bounds(metric) {
    const known = (values) => values.filter((v) => v !== null && v !== undefined);
    const points = metric.points.filter((p) => p.estimate !== null);
    const latest = points[points.length - 1] || {};
    const core = known([metric.neutral, metric.tolerance, latest.lower, latest.upper]);
    core.push(...points.map((p) => p.estimate));
    let min = Math.min(...core);
    let max = Math.max(...core);
    if (max - min < 1e-9) {
      const pad = Math.abs(max) * 0.1 || 0.01;
      min -= pad;
      max += pad;
    }
    const reach = (max - min) * 0.5;
    const lowers = known(points.map((p) => p.lower));
    const uppers = known(points.map((p) => p.upper));
    min = Math.max(Math.min(min, ...lowers), min - reach);
    max = Math.min(Math.max(max, ...uppers), max + reach);
    const pad = (max - min) * 0.05;
    return [min - pad, max + pad];
  }

  function segments(points) {
    const runs = [];
    let run = [];
    for (const p of points) {
      if (p.estimate === null) {
        if (run.length) runs.push(run);
        run = [];
      } else {
        run.push(p);
      }
    }
    if (run.length) runs.push(run);
    return runs;
  }

  function metricChart(metric, range) {
    const [yMin, yMax] = bounds(metric);
    const f = frame(METRIC_WIDTH, 210, range, yMin, yMax);
    const latest = metric.points.filter((p) => p.estimate !== null).pop();
    const what = metric.scale === "ratio" ? "canary over baseline" : "canary minus baseline";
    const description = latest
      ? `Latest ${clockTime(latest.at)}: ${signed(latest.estimate, metric.scale)}, ` +
        `bounds ${signed(latest.lower, metric.scale)} to ${signed(latest.upper, metric.scale)}, ` +
        `verdict ${latest.verdict}.`
      : "No estimate yet.";
    const root = chartSvg(
      "metric-chart",
      f,
      `${metric.name}: ${what} over time, with its confidence band`,
      description,
    );
    const ticks = niceTicks(yMin, yMax, 4);
    root.append(axes(f, range, ticks, (v) => signed(v, metric.scale)));
    const neutral = f.y(metric.neutral);
    root.append(svg("line", { class: "neutral", x1: f.left, x2: f.right, y1: neutral, y2: neutral }));
    if (metric.tolerance !== null) {
      const y = f.y(metric.tolerance);
      root.append(svg("line", { class: "tolerance", x1: f.left, x2: f.right, y1: y, y2: y }));
      const above = metric.tolerance < metric.neutral ? 14 : -4;
      const label = svg("text", { class: "tolerance-label", x: f.left + 6, y: y + above });
      label.textContent = `tolerance ${signed(metric.tolerance, metric.scale)}`;
      root.append(label);
    }
    const clampY = (v, fallback) => f.y(v === null ? fallback : Math.min(Math.max(v, yMin), yMax));
    for (const run of segments(metric.points)) {
      const half = run.length === 1 ? 3 : 0;
      const upper = run.map((p, i) => {
        const x = f.x(p.at) + (half && i === 0 ? -half : 0);
        return `${i ? "L" : "M"}${x},${clampY(p.upper, yMax)}`;
      });
      if (half) upper.push(`L${f.x(run[0].at) + half},${clampY(run[0].upper, yMax)}`);
      const lower = run
        .slice()
        .reverse()
        .map((p) => `L${f.x(p.at) + half},${clampY(p.lower, yMin)}`);
      if (half) lower.push(`L${f.x(run[0].at) - half},${clampY(run[0].lower, yMin)}`);
      root.append(svg("path", { class: "band", d: `${upper.join(" ")} ${lower.join(" ")} Z` }));
      const line = run.map((p, i) => `${i ? "L" : "M"}${f.x(p.at)},${f.y(p.estimate)}`).join(" ");
      root.append(svg("path", { class: "estimate", d: line }));
    }
    for (const p of metric.points) {
      if (p.estimate === null) continue;
      const dot = svg("circle", {
        class: `point verdict-${p.verdict}`,
        cx: f.x(p.at),
        cy: f.y(p.estimate),
        r: 2.5,
      });
      dot.append(
        svgTitle(
          `${dateTime(p.at)} UTC: ${signed(p.estimate, metric.scale)} ` +
            `[${signed(p.lower, metric.scale)}, ${signed(p.upper, metric.scale)}], ${p.verdict}`,
        ),
      );
      root.append(dot);
    }
    return root;
  }

  // -- one release ----------------------------------------------------------------------

  function traceLink(trace) {
    const id = trace.traceId;
    const shown = id.length > 14 ? `${id.slice(0, 12)}…` : id;
    if (trace.url && /^https?:\/\//.test(trace.url)) {
      return el("a", {
        href: trace.url,
        target: "_blank",
        rel: "noopener noreferrer",
        text: shown,
        title: `Trace ${id} in Langfuse`,
        "aria-label": `trace ${id} in Langfuse`,
        className: "trace",
      });
    }
    return el("code", { text: shown, title: id, className: "trace" });
  }

  function traceList(traces) {
    if (!traces.length) return null;
    const list = el("ul", { className: "traces" });
    for (const trace of traces) list.append(el("li", {}, traceLink(trace)));
    return list;
  }

  function tracesByMetric(traces) {
    if (!traces.length) return null;
    const groups = new Map();
    for (const trace of traces) {
      if (!groups.has(trace.metric)) groups.set(trace.metric, []);
      groups.get(trace.metric).push(trace);
    }
    const block = el("div", { className: "trace-groups" });
    for (const [metric, group] of groups) {
      block.append(el("span", { className: "metric-name", text: metric }), traceList(group));
    }
    return block;
  }

  function facts(release) {
    const list = el("dl", { className: "facts" });
    const add = (term, value) => {
      if (value === null || value === undefined || value === "") return;
      list.append(el("div", {}, el("dt", { text: term }), el("dd", { text: String(value) })));
    };
    if (release.rollout) add("Rollout", `#${release.rollout}`);
    if (release.ladder && release.ladder.length > 1) add("Ladder", release.ladder.join(" → "));
    if (release.rung) {
      const outcome = release.rung.outcome || "running";
      add(`${release.rung.rung} rung`, `${outcome}: ${release.rung.reason || ""}`);
    }
    if (release.step !== null) {
      add("Step", release.steps ? `${release.step} of ${release.steps}` : release.step);
    }
    add("Canary weight", `${number(release.canaryWeight)} %`);
    if (release.stableVersion !== null || release.candidateVersion !== null) {
      add("Versions", `stable ${release.stableVersion ?? "–"}, candidate ${release.candidateVersion ?? "–"}`);
    }
    if (release.startedAt !== null) add("Started", `${dateTime(release.startedAt)} UTC`);
    add("Updated", `${dateTime(release.updatedAt)} UTC`);
    add("Reason", release.reason);
    add("Waiting", release.waiting);
    if (!release.hasPolicy) add("Policy", "none in force: manual actions are refused");
    return list;
  }

  function actionButtons(release) {
    const group = el("div", {
      className: "actions",
      role: "group",
      "aria-label": `Manual actions on ${release.name}`,
    });
    for (const action of ACTIONS) {
      const applies = release.hasPolicy && action.phases.includes(release.phase);
      const button = el("button", {
        type: "button",
        className: action.confirm ? "danger" : "",
        "data-action": action.name,
        "data-release": release.name,
        "data-applies": applies ? "yes" : "no",
        text: action.label,
        title: applies ? null : `Not while the release is ${release.phase}`,
      });
      button.disabled = !applies || busy;
      button.addEventListener("click", () => {
        if (action.confirm) confirmAction(release.name, action);
        else act(release.name, action.name, "");
      });
      group.append(button);
    }
    return group;
  }

  function metricFigure(metric, range) {
    const caption = el(
      "figcaption",
      {},
      el("strong", { text: metric.name }),
      el("span", {
        className: "muted",
        text: metric.scale === "ratio" ? "canary ÷ baseline" : "canary − baseline",
      }),
      metric.critical ? el("span", { className: "tag", text: "critical" }) : null,
      metric.verdict
        ? el("span", { className: `verdict verdict-${metric.verdict}`, text: metric.verdict })
        : null,
    );
    const figure = el("figure", { className: "metric", "data-metric": metric.name }, caption);
    const latest = metric.points.filter((p) => p.estimate !== null).pop();
    if (latest) {
      figure.append(metricChart(metric, range));
      figure.append(
        el("p", {
          className: "reading",
          text:
            `Estimate ${signed(latest.estimate, metric.scale)}, confidence band ` +
            `${signed(latest.lower, metric.scale)} to ${signed(latest.upper, metric.scale)} ` +
            `(${metric.nCanary ?? 0} canary, ${metric.nBaseline ?? 0} baseline observations).`,
        }),
      );
    } else {
      figure.append(el("p", { className: "muted", text: "No estimate yet." }));
    }
    if (metric.reason) figure.append(el("p", { className: "muted", text: metric.reason }));
    if (metric.worstTraces.length) {
      const details = el(
        "details",
        { className: "worst", open: metric.verdict === "fail" },
        el("summary", { text: `Canary traces that regressed most (${metric.worstTraces.length})` }),
        traceList(metric.worstTraces),
      );
      figure.append(details);
    }
    return figure;
  }

  function decisionTable(release) {
    const table = el("table", { className: "log" });
    table.append(el("caption", { text: `Decision log of ${release.name}, newest first` }));
    const head = el("tr");
    for (const name of ["Time (UTC)", "Decision", "Actor", "Step", "Weight", "Reason", "Traces"]) {
      head.append(el("th", { scope: "col", text: name }));
    }
    table.append(el("thead", {}, head));
    const body = el("tbody");
    for (const record of release.decisions) {
      const row = el("tr", { "data-decision": record.decision });
      row.append(el("td", {}, el("time", { datetime: iso(record.at), text: dateTime(record.at) })));
      row.append(el("th", { scope: "row", className: `decision decision-${record.decision}`, text: record.decision }));
      row.append(el("td", { text: record.actor }));
      row.append(el("td", { text: String(record.step) }));
      row.append(el("td", { text: record.weight === null ? "" : `${number(record.weight)} %` }));
      row.append(el("td", { className: "reason", text: record.reason }));
      row.append(el("td", {}, tracesByMetric(record.traces)));
      body.append(row);
    }
    table.append(body);
    return el("div", { className: "table-wrap" }, table);
  }

  function releaseSection(release) {
    const titleId = `release-${release.name}-title`;
    const section = el("section", {
      className: "release",
      id: `release-${release.name}`,
      "aria-labelledby": titleId,
      "data-release": release.name,
      "data-phase": release.phase,
    });
    section.append(
      el(
        "header",
        { className: "release-head" },
        el("h2", { id: titleId, text: release.name }),
        el("span", { className: `phase phase-${release.phase}`, text: release.phase.replace("_", " ") }),
      ),
    );
    section.append(facts(release));
    section.append(actionButtons(release));
    if (release.startedAt === null) {
      section.append(
        el("p", { className: "muted", text: release.waiting || "Not started: waiting for a candidate." }),
      );
    } else {
      const start = release.weights.length ? release.weights[0].at : release.startedAt;
      const range = { start, end: Math.max(release.end, start + 60) };
      section.append(el("h3", { text: "Canary weight" }), weightChart(release, range));
      const metrics = el("div", { className: "metrics" });
      for (const metric of release.metrics) metrics.append(metricFigure(metric, range));
      section.append(
        el("h3", { text: "Metrics" }),
        el("p", {
          className: "muted legend",
          text:
            "Line and points: the estimate at each look. Shaded: its confidence band. " +
            "Red dashed line: the tolerance. Dotted line: no difference.",
        }),
        metrics,
      );
    }
    section.append(el("h3", { text: "Decision log" }), decisionTable(release));
    return section;
  }

  const READ_VERDICTS = {
    catching_up: "catching up",
    starved: "starved",
    failing: "failing",
  };

  // Langfuse reads, shown only when they are not ok, and score type mismatches.
  function renderReads(data) {
    const block = $("langfuse-reads");
    const reads = data.langfuseReads;
    const mismatches = data.scoreTypeMismatches || [];
    const troubled = reads && reads.verdict !== "ok";
    block.hidden = !troubled && !mismatches.length;
    block.dataset.verdict = troubled ? reads.verdict : "ok";
    $("langfuse-reads-message").textContent = troubled ? reads.message : "";
    const figures = $("langfuse-reads-figures");
    figures.replaceChildren();
    if (troubled) {
      const add = (term, value) => {
        if (value === null || value === undefined) return;
        figures.append(el("div", {}, el("dt", { text: term }), el("dd", { text: String(value) })));
      };
      add("Verdict", READ_VERDICTS[reads.verdict] || reads.verdict);
      if (reads.requestsNeededPerMinute !== null) {
        add("Requests needed", `${Math.ceil(reads.requestsNeededPerMinute)} a minute`);
      }
      if (reads.budgetPerMinute !== null) {
        const used = reads.requestsLastMinute === null ? "" : `, ${reads.requestsLastMinute} used in the last minute`;
        add("Budget", `${reads.budgetPerMinute} a minute${used}`);
      }
      if (reads.lagSeconds !== null) add("Read up to", `${Math.round(reads.lagSeconds)} s before now`);
      if (reads.lastCompletePollAt !== null) add("Last complete poll", `${dateTime(reads.lastCompletePollAt)} UTC`);
      if (reads.rateLimitedRecent) add("429 answers", `${reads.rateLimitedRecent} in the last ${reads.rateLimitedWindowSeconds / 60} minutes`);
      add("Last error", reads.lastError);
    }
    $("score-type-mismatches").replaceChildren(
      ...mismatches.map((m) => el("li", { text: `${m.release}: ${m.message}` })),
    );
  }

  function render(data) {
    const container = $("releases");
    container.classList.remove("stale");
    $("updated").textContent = `Updated ${dateTime(data.now)} UTC.`;
    renderReads(data);
    const names = new Set(data.releases.map((r) => r.name));
    for (const [name, entry] of rendered) {
      if (!names.has(name)) {
        entry.node.remove();
        rendered.delete(name);
      }
    }
    if (!data.releases.length) {
      container.replaceChildren(el("p", { className: "muted", text: "No releases yet." }));
      return;
    }
    let previous = null;
    for (const release of data.releases) {
      const json = JSON.stringify(release);
      let entry = rendered.get(release.name);
      if (!entry || entry.json !== json) {
        const node = releaseSection(release);
        if (entry) entry.node.replaceWith(node);
        entry = { json, node };
        rendered.set(release.name, entry);
      }
      if (previous) previous.after(entry.node);
      else container.prepend(entry.node);
      previous = entry.node;
    }
    const current = new Set([...rendered.values()].map((entry) => entry.node));
    for (const child of [...container.children]) {
      if (!current.has(child)) child.remove();
    }
  }

  // -- wiring ---------------------------------------------------------------------------

  function start() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const value = $("token-input").value.trim();
      if (!value) return;
      sessionStorage.setItem(TOKEN_KEY, value);
      $("token-input").value = "";
      setAction("", "");
      refresh();
    });
    $("forget-token").addEventListener("click", () => {
      sessionStorage.removeItem(TOKEN_KEY);
      setAction("", "");
      refresh();
    });
    $("refresh-now").addEventListener("click", () => refresh());
    $("confirm-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const chosen = pending;
      const reason = $("confirm-reason").value.trim();
      closeConfirm();
      if (chosen) act(chosen.name, chosen.action, reason);
    });
    $("confirm-cancel").addEventListener("click", closeConfirm);
    $("confirm").addEventListener("close", () => {
      pending = null;
    });
    document.addEventListener("visibilitychange", () => {
      if (!document.hidden && timer === null && token()) refresh();
    });
    refresh();
  }

  start();
})();
