// tickwork dashboard charts: the System and Stack pages' figures drawn with uPlot
// (/static/vendor) from the JSON series of their `#charts` section (`data-series`: GET
// /api/system/series or /api/stacks/{id}/series, see dashboard/routes_charts.py). Each chart
// fills the width of its `.chart-plot`; times are shown in the browser's zone (the usage
// chart's days are UTC days, and say so). The charts follow the page's event stream through
// the `tickwork:event` DOM event app.js dispatches: when ticks or steps finish they fetch their
// series again, at most once every REFRESH_MS, and once a minute anyway as the window moves on.
// For tests, `window.tickworkCharts` holds the charts (uPlot instances), the latest series and
// how many were drawn.
"use strict";

(() => {
  const section = document.getElementById("charts");
  if (!section || typeof uPlot === "undefined") return;
  const page = document.body.dataset.page;
  const stackId = Number(document.body.dataset.stackId);
  const url = section.dataset.series;
  const REFRESH_MS = 3000;
  const IDLE_MS = 60000;
  const HEIGHT = 220;

  const COLORS = {p50: "#1f5fbf", p99: "#c2410c", ticks: "#1a7f37", duration: "#1f5fbf",
                  failed: "#c62828", tokens: "#8ba7d6", cost: "#7b3fb3"};
  // each outcome its hue; each provider after the first a lighter shade of it
  const OUTCOMES = ["ok", "fallback", "rate_limited", "error"];
  const OUTCOME_LABEL = {ok: "ok", fallback: "fallback", rate_limited: "rate limited (429)",
                         error: "error"};
  const SHADES = {ok: ["#1a7f37", "#6cc287"], fallback: ["#b26a00", "#f0b454"],
                  rate_limited: ["#7b3fb3", "#b98ae0"], error: ["#c62828", "#ef8a8a"]};

  const zone = (new Intl.DateTimeFormat(undefined, {timeZoneName: "short"}).formatToParts(
    new Date()).find((p) => p.type === "timeZoneName") || {value: "local"}).value;
  const int = new Intl.NumberFormat(undefined, {maximumFractionDigits: 0});
  const compact = new Intl.NumberFormat(undefined, {notation: "compact"});
  const dec = (digits) => new Intl.NumberFormat(undefined, {minimumFractionDigits: digits,
                                                            maximumFractionDigits: digits});
  const ms1 = dec(1), two = dec(2), usd4 = dec(4);
  const clock = new Intl.DateTimeFormat(undefined, {hour: "2-digit", minute: "2-digit",
                                                    hourCycle: "h23"});
  const clockSeconds = new Intl.DateTimeFormat(undefined, {hour: "2-digit", minute: "2-digit",
    second: "2-digit", hourCycle: "h23"});
  const dayAndClock = new Intl.DateTimeFormat(undefined, {month: "short", day: "numeric",
    hour: "2-digit", minute: "2-digit", hourCycle: "h23"});
  const utcDay = new Intl.DateTimeFormat(undefined, {month: "short", day: "numeric",
                                                     timeZone: "UTC"});
  const utcDate = new Intl.DateTimeFormat(undefined, {year: "numeric", month: "short",
                                                      day: "numeric", timeZone: "UTC"});
  const fullTime = new Intl.DateTimeFormat(undefined, {year: "numeric", month: "short",
    day: "numeric", hour: "2-digit", minute: "2-digit", second: "2-digit", hourCycle: "h23",
    timeZoneName: "short"});
  const at = (format) => (ts) => ts == null ? "–" : format.format(new Date(ts * 1000));
  const fmt = {
    ms: (v) => v == null ? "–" : `${ms1.format(v)} ms`,
    rate: (v) => v == null ? "–" : `${two.format(v)} /s`,
    s: (v) => v == null ? "–" : `${two.format(v)} s`,
    n: (v) => v == null ? "–" : int.format(v),
    usd: (v) => v == null ? "–" : `$${usd4.format(v)}`,
  };

  // -- building blocks ----------------------------------------------------------------------

  const axis = {stroke: "#5f6b7a", font: "11px system-ui, sans-serif",
                labelFont: "11px system-ui, sans-serif", grid: {stroke: "#e6e9ee", width: 1},
                ticks: {stroke: "#dde2e8", width: 1}};
  const fromZero = (u, min, max) => uPlot.rangeNum(0, max > 0 ? max : 1, 0.1, true);
  const bars = uPlot.paths.bars({size: [0.7, 40]});
  const padded = (half) => (u, min, max) => [min - half, max + half];

  // Times in the browser's zone, on a 24-hour clock: seconds when the marks are less than a
  // minute apart, the date too when they span more than a day.
  function timeAxis(label) {
    return {...axis, label, labelSize: 18, values: (u, splits) => {
      const span = splits.length > 1 ? splits[splits.length - 1] - splits[0] : 0;
      const step = splits.length > 1 ? splits[1] - splits[0] : 60;
      return splits.map(at(span > 86400 ? dayAndClock : step < 60 ? clockSeconds : clock));
    }};
  }
  const timeSeries = (label) => ({label, value: (u, ts) => at(fullTime)(ts)});
  // Wide enough for its longest number (11 px digits are about 6.5 px wide).
  const fit = (u, values) => 16 + 6.5 * Math.max(3, ...(values || []).map((v) => v.length));
  function valueAxis(label, extra) {
    return {...axis, label, labelSize: 18, size: fit, ...extra};
  }
  const counts = (u, splits) => splits.map((v) => compact.format(v));
  function line(label, stroke, format, extra) {
    return {label, stroke, width: 2, value: (u, v) => format(v), spanGaps: false,
            points: {show: true, size: 5, fill: stroke}, ...extra};
  }

  // -- what each chart shows ----------------------------------------------------------------

  function sum(values) {
    return values.reduce((a, b) => a + (b || 0), 0);
  }
  function lastOf(xs, ok) {
    for (let i = xs.length - 1; i >= 0; i--) if (ok(i)) return i;
    return -1;
  }

  // LLM calls: one stacked series per provider and outcome seen, bottom of the stack first.
  function callLayers(body) {
    const providers = [...new Set(body.llm_calls.map((c) => c.provider))].sort();
    const layers = [];
    providers.forEach((provider, n) => {
      for (const outcome of OUTCOMES) {
        const found = body.llm_calls.find((c) => c.provider === provider && c.outcome === outcome);
        if (found) layers.push({provider, outcome, calls: found.calls,
                                color: SHADES[outcome][Math.min(n, 1)]});
      }
    });
    return layers;
  }

  // Cumulative sums of the shown layers, top of the stack first (drawn first, so each lower
  // layer's bar paints over the part of the taller one beneath it).
  function stacked(layers, shown) {
    const tops = [];
    let running = layers.length ? layers[0].calls.map(() => 0) : [];
    for (let i = 0; i < layers.length; i++) {
      if (shown[i]) running = running.map((v, j) => v + layers[i].calls[j]);
      tops.push(shown[i] ? running : layers[i].calls.map(() => null));
    }
    return tops.reverse();
  }

  const CHARTS = {
    lateness: {
      series: () => [timeSeries("minute"), line("p50", COLORS.p50, fmt.ms),
                     line("p99", COLORS.p99, fmt.ms)],
      axes: () => [timeAxis(`time (${zone})`), valueAxis("lateness (ms)")],
      data: (b) => [b.t, b.lateness_p50_ms, b.lateness_p99_ms],
      summary(b) {
        const i = lastOf(b.t, (j) => b.lateness_samples[j] > 0);
        if (i < 0) return "No beat tick in this window.";
        return `Latest minute with beat ticks: p50 ${fmt.ms(b.lateness_p50_ms[i])}, p99 ` +
          `${fmt.ms(b.lateness_p99_ms[i])} (${fmt.n(b.lateness_samples[i])} ticks).`;
      },
    },
    ticks: {
      series: () => [timeSeries("minute"), line("ticks / s", COLORS.ticks, fmt.rate,
                              {fill: "rgba(26, 127, 55, 0.12)", points: {show: false}})],
      axes: () => [timeAxis(`time (${zone})`), valueAxis("ticks per second")],
      data: (b) => [b.t, b.ticks_per_s],
      summary: (b) => `This minute so far: ${fmt.rate(b.ticks_per_s[b.t.length - 1])}; ` +
        `${fmt.n(sum(b.ticks_finished))} ticks finished in the window.`,
    },
    calls: {
      key: (b) => callLayers(b).map((l) => `${l.provider} ${l.outcome}`).join(","),
      series(b, chart) {
        chart.layers = callLayers(b);
        // the legend shows each layer's own calls, not the stack's height
        const own = (si, idx) => chart.layers[chart.layers.length - si].calls[idx];
        return [timeSeries("minute"), ...chart.layers.slice().reverse().map((l) => ({
          label: `${l.provider} ${OUTCOME_LABEL[l.outcome]}`, fill: l.color, stroke: l.color,
          width: 0, paths: bars, points: {show: false},
          value: (u, v, si, idx) => idx == null ? "–" : fmt.n(own(si, idx)),
        }))];
      },
      axes: () => [timeAxis(`time (${zone})`), valueAxis("calls per minute", {values: counts})],
      x: {range: padded(30)},
      data(b, chart) {
        chart.layers = callLayers(b);
        const shown = chart.layers.map((l, i) => chart.u ? chart.shown(i) : true);
        return [b.t, ...stacked(chart.layers, shown)];
      },
      summary(b) {
        const total = sum(b.llm_calls.map((c) => sum(c.calls)));
        if (!total) return "No LLM call in this window.";
        const parts = callLayers(b).map((l) =>
          `${l.provider} ${OUTCOME_LABEL[l.outcome]} ${fmt.n(sum(l.calls))}`);
        return `${fmt.n(total)} calls in the window: ${parts.join(", ")}.`;
      },
    },
    durations: {
      series: () => [timeSeries("claimed"), line("duration", COLORS.duration, fmt.s),
                     line("failed or timed out", COLORS.failed, fmt.s,
                          {width: 0, points: {show: true, size: 8, fill: COLORS.failed}})],
      axes: () => [timeAxis(`claimed (${zone})`), valueAxis("duration (s)")],
      data: (b) => [b.ticks.t, b.ticks.duration_ms.map((v) => v / 1000),
                    b.ticks.duration_ms.map((v, i) =>
                      b.ticks.status[i] === "succeeded" ? null : v / 1000)],
      summary(b) {
        const d = b.ticks.duration_ms;
        if (!d.length) return "No tick has run yet.";
        const sorted = d.slice().sort((a, c) => a - c);
        const bad = b.ticks.status.filter((s) => s !== "succeeded").length;
        return `Last ${d.length} ticks: median ${fmt.s(sorted[Math.ceil(d.length / 2) - 1] /
          1000)}, longest ${fmt.s(sorted[d.length - 1] / 1000)}; ${fmt.n(bad)} failed or ` +
          "timed out.";
      },
    },
    usage: {
      utc: true,
      series: () => [{label: "day", value: (u, ts) => at(utcDate)(ts)},
                     {label: "tokens (in + out)", fill: COLORS.tokens, stroke: COLORS.tokens,
                          width: 0, paths: bars, points: {show: false}, scale: "tokens",
                          value: (u, v) => fmt.n(v)},
                     line("cost", COLORS.cost, fmt.usd, {scale: "usd"})],
      axes: () => [{...axis, label: "day (UTC)", labelSize: 18,
                    values: (u, splits) => splits.map(at(utcDay))},
                   valueAxis("tokens", {scale: "tokens", values: counts}),
                   valueAxis("US dollars", {scale: "usd", side: 1, grid: {show: false},
                                            values: (u, splits) => splits.map((v) => `$${v}`)})],
      x: {range: padded(43200)},
      scales: {tokens: {range: fromZero}, usd: {range: fromZero}},
      data: (b) => [b.usage.t,
                    b.usage.input_tokens.map((v, i) => v + b.usage.output_tokens[i]),
                    b.usage.cost_usd],
      summary(b) {
        const u = b.usage, last = u.t.length - 1;
        return `Today (UTC): ${fmt.n(u.input_tokens[last] + u.output_tokens[last])} tokens, ` +
          `${fmt.usd(u.cost_usd[last])}; the ${u.t.length} days: ` +
          `${fmt.n(sum(u.input_tokens) + sum(u.output_tokens))} tokens, ` +
          `${fmt.usd(sum(u.cost_usd))}.`;
      },
    },
  };

  // -- drawing ------------------------------------------------------------------------------

  const charts = {};  // name -> {figure, plot, def, u, key, layers}
  const hook = {charts: {}, latest: null, draws: 0};
  window.tickworkCharts = hook;

  function widthOf(plot) {
    return Math.max(200, Math.floor(plot.clientWidth));
  }

  function create(chart, body) {
    const def = chart.def;
    const opts = {
      width: widthOf(chart.plot), height: HEIGHT,
      series: def.series(body, chart), axes: def.axes(body),
      scales: {x: {time: true, ...(def.x || {})}, y: {range: fromZero}, ...(def.scales || {})},
      legend: {live: true},
      cursor: {points: {size: 6}},
      hooks: {setSeries: [(u, i, o) => { if (o && "show" in o) redraw(chart); }],
              // away from the chart, the legend shows the newest point that has values
              setCursor: [(u) => { if (u.cursor.idx == null) newest(u); }]},
    };
    if (def.utc) opts.tzDate = (ts) => uPlot.tzDate(new Date(ts * 1000), "Etc/UTC");
    if (chart.u) chart.u.destroy();
    chart.shown = (i) => {  // layer i (bottom first) is shown in the legend
      const n = chart.layers ? chart.layers.length : 0;
      return chart.u.series[n - i].show !== false;
    };
    chart.u = null;
    chart.u = new uPlot(opts, def.data(body, chart), chart.plot);
    hook.charts[chart.name] = chart.u;
  }

  function newest(u) {
    const i = lastOf(u.data[0], (j) => u.data.slice(1).some((ys) => ys[j] != null));
    if (i >= 0) u.setLegend({idx: i});
  }

  function redraw(chart) {
    if (chart.u && hook.latest) chart.u.setData(chart.def.data(hook.latest, chart));
  }

  function draw(body) {
    hook.latest = body;
    for (const chart of Object.values(charts)) {
      const key = chart.def.key ? chart.def.key(body) : "";
      if (!chart.u || key !== chart.key) {
        chart.key = key;
        create(chart, body);
      } else {
        chart.u.setData(chart.def.data(body, chart));
      }
      if (chart.u.cursor.idx == null) newest(chart.u);
      chart.summary.textContent = chart.def.summary(body);
      chart.figure.dataset.points = String(chart.u.data[0].length);
    }
    hook.draws += 1;
    section.dataset.draws = String(hook.draws);
  }

  for (const figure of section.querySelectorAll("figure[data-chart]")) {
    const name = figure.dataset.chart;
    if (!CHARTS[name]) continue;
    charts[name] = {name, figure, def: CHARTS[name], u: null, key: null,
                    plot: figure.querySelector(".chart-plot"),
                    summary: figure.querySelector(".chart-summary")};
  }

  // Fill the width of each chart's box as the window (or the grid) changes.
  const resized = new ResizeObserver(() => {
    for (const chart of Object.values(charts)) {
      if (chart.u && widthOf(chart.plot) !== chart.u.width) {
        chart.u.setSize({width: widthOf(chart.plot), height: HEIGHT});
      }
    }
  });
  for (const chart of Object.values(charts)) resized.observe(chart.plot);

  // -- fetching: at most once every REFRESH_MS ----------------------------------------------

  let lastFetch = 0;
  let timer = null;
  let busy = false;
  let again = false;
  let gone = false;

  async function refresh() {
    if (busy) {
      again = true;
      return;
    }
    busy = true;
    lastFetch = Date.now();
    try {
      const r = await fetch(url, {headers: {"Accept": "application/json"}, cache: "no-store",
                                  credentials: "same-origin"});
      if (r.status === 404) {
        gone = true;  // the stack was deleted: nothing more to draw
      } else if (r.ok) {
        draw(await r.json());
      } else {
        throw new Error(`${url}: ${r.status}`);
      }
    } catch (err) {
      console.warn("tickwork: charts not refreshed", err);
    } finally {
      busy = false;
      if (again) {
        again = false;
        soon();
      }
    }
  }

  function soon() {
    if (timer !== null || gone) return;
    timer = setTimeout(() => {
      timer = null;
      refresh();
    }, Math.max(0, lastFetch + REFRESH_MS - Date.now()));
  }

  document.addEventListener("tickwork:event", (ev) => {
    const {kind, data} = ev.detail;
    if (kind !== "tick.finished" && kind !== "step.finished") return;
    if (page === "stack" && data.stack_id !== stackId) return;
    soon();
  });
  setInterval(soon, IDLE_MS);
  refresh();
})();
