// qoeflow live dashboard: active alerts at the top, KPI tiles coloured against configured targets (a
// tile an alert concerns is marked), a uPlot chart per KPI, a breakdown table with click-to-filter, a
// time range picker, auto-refresh. Reads only this server's /api/v1 (summary, metrics, breakdown,
// alerts) and /dashboard/config.json; fetches nothing else.
'use strict';

const FMT = {
  int: (v) => Math.round(v).toLocaleString('en-US'),
  ms: (v) => `${Math.round(v).toLocaleString('en-US')} ms`,
  fraction: (v) => `${(v * 100).toFixed(2)} %`,
  pct: (v) => `${v.toFixed(2)} %`,
  kbps: (v) => `${Math.round(v).toLocaleString('en-US')} kbps`,
};

// name: the metric (data-kpi); value(summary) and point(p): where its number comes from; status: which
// metric the target applies to (the errors tile is judged by the fatal-error rate).
const KPIS = [
  { name: 'concurrent_viewers', label: 'Concurrent viewers', fmt: 'int', value: (s) => s.concurrent_viewers, point: (p) => p.concurrent_viewers },
  { name: 'attempts', label: 'Attempts', fmt: 'int' },
  { name: 'startup_p50', label: 'Video start time p50', fmt: 'ms' },
  { name: 'startup_p95', label: 'Video start time p95', fmt: 'ms' },
  { name: 'rebuffer_ratio', label: 'Rebuffer ratio', fmt: 'fraction' },
  { name: 'connection_induced_rebuffer_ratio', label: 'Connection-induced rebuffer', fmt: 'fraction' },
  { name: 'vsf_pct', label: 'Video start failures', fmt: 'pct' },
  { name: 'ebvs_pct', label: 'Exits before video start', fmt: 'pct' },
  { name: 'playback_failure_pct', label: 'Playback failures', fmt: 'pct' },
  { name: 'cache_hit_ratio', label: 'CDN cache-hit ratio', fmt: 'fraction' },
  { name: 'avg_bitrate_kbps', label: 'Average bitrate', fmt: 'kbps' },
  { name: 'errors', label: 'Errors', fmt: 'int', status: 'error_rate_pct' },
];

const DIM_LABELS = { cdn: 'CDN', country: 'country', device_type: 'device', os: 'OS', browser: 'browser', player_name: 'player', stream_type: 'stream type', video_id: 'video' };

const state = {
  range: new URLSearchParams(location.search).get('range') || '1h',
  dimension: 'cdn',
  filters: [], // [dimension, value]
  refreshMs: 5000,
  thresholds: {},
  charts: {},
  busy: false,
  refreshes: 0,
};

const $ = (sel) => document.querySelector(sel);

function format(kpi, v) {
  return v === null || v === undefined || Number.isNaN(v) ? '—' : FMT[kpi.fmt](v);
}

// good / warn / bad against the target, or neutral without one (or without a value).
function status(metric, v) {
  const t = state.thresholds[metric];
  if (!t || v === null || v === undefined) return 'neutral';
  const better = (a, b) => (t.higher_is_better ? a >= b : a <= b);
  if (better(v, t.good)) return 'good';
  if (better(v, t.bad)) return 'warn';
  return 'bad';
}

function targetText(kpi) {
  const metric = kpi.status || kpi.name;
  const t = state.thresholds[metric];
  if (!t) return 'no target';
  const f = kpi.status ? FMT.pct : (v) => format(kpi, v);
  const what = kpi.status ? 'fatal-error rate ' : '';
  return `target ${what}${t.higher_is_better ? '≥' : '≤'} ${f(t.good)}, bad ${t.higher_is_better ? '<' : '>'} ${f(t.bad)}`;
}

function buildTiles() {
  const tiles = $('#tiles');
  for (const kpi of KPIS) {
    const el = document.createElement('div');
    el.className = 'tile';
    el.dataset.kpi = kpi.name;
    el.dataset.status = 'neutral';
    el.innerHTML = '<div class="label"><span class="badge"></span></div><div class="value">…</div><div class="target"></div><div class="chart"></div>';
    el.querySelector('.label').prepend(document.createTextNode(kpi.label));
    el.querySelector('.target').textContent = targetText(kpi);
    tiles.appendChild(el);
    const chartEl = el.querySelector('.chart');
    const opts = {
      width: Math.max(chartEl.clientWidth, 200),
      height: 90,
      legend: { show: false },
      cursor: { show: true, drag: { x: false, y: false } },
      scales: { x: { time: true } },
      axes: [
        { stroke: '#8a96a3', grid: { show: false }, ticks: { show: false }, size: 32, font: '10px system-ui' },
        { stroke: '#8a96a3', grid: { stroke: '#26313c' }, ticks: { show: false }, size: 44, font: '10px system-ui', values: (u, vals) => vals.map((v) => compact(kpi, v)) },
      ],
      // Dots as well as lines: a ratio with data in one bucket only is still visible.
      series: [{}, { stroke: '#5aa9e6', width: 1.5, fill: 'rgba(90,169,230,0.15)', spanGaps: false, points: { show: true, size: 6, fill: '#5aa9e6' } }],
    };
    state.charts[kpi.name] = new uPlot(opts, [[], []], chartEl);
  }
  window.addEventListener('resize', () => {
    for (const kpi of KPIS) {
      const chartEl = document.querySelector(`[data-kpi="${kpi.name}"] .chart`);
      state.charts[kpi.name].setSize({ width: Math.max(chartEl.clientWidth, 200), height: 90 });
    }
  });
}

function compact(kpi, v) {
  if (v === null) return '';
  if (kpi.fmt === 'fraction') return `${(v * 100).toFixed(1)}%`;
  if (kpi.fmt === 'pct') return `${v.toFixed(1)}%`;
  return Math.abs(v) >= 1000 ? `${(v / 1000).toFixed(1)}k` : `${Math.round(v)}`;
}

function query(extra) {
  const p = new URLSearchParams({ from: `now-${state.range}`, to: 'now', ...extra });
  if (state.filters.length) p.set('filter', state.filters.map(([d, v]) => `${d}:${v}`).join(','));
  return p.toString();
}

// With an API token (`qoeflow serve --api-token`), open the dashboard as `/#token=<token>`: a fragment
// never leaves the browser, and the token goes with every API call.
const TOKEN = new URLSearchParams(location.hash.slice(1)).get('token');

async function getJSON(path) {
  const headers = TOKEN && path.includes('api/v1/') ? { authorization: `Bearer ${TOKEN}` } : {};
  const r = await fetch(path, { cache: 'no-store', headers });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(`${path.split('?')[0]}: ${body.message || r.status}`);
  return body;
}

function renderTiles(summary) {
  for (const kpi of KPIS) {
    const el = document.querySelector(`[data-kpi="${kpi.name}"]`);
    const v = kpi.value ? kpi.value(summary) : summary.metrics[kpi.name];
    const judged = kpi.status ? summary.metrics[kpi.status] : v;
    el.dataset.value = v === null || v === undefined ? '' : String(v);
    el.dataset.status = status(kpi.status || kpi.name, judged);
    el.querySelector('.value').textContent = format(kpi, v);
  }
}

function renderCharts(metrics) {
  const points = metrics.series.length ? metrics.series[0].points : [];
  // A point per bucket of the range, empty buckets as gaps, so the x axis is the whole range.
  const byT = new Map(points.map((p) => [p.t, p]));
  const first = Math.floor(metrics.from / metrics.step) * metrics.step;
  const xs = [];
  for (let t = first; t < metrics.to; t += metrics.step) xs.push(t);
  for (const kpi of KPIS) {
    // Counts are 0 in a bucket without data; ratios and percentiles are undefined there (a gap).
    const empty = kpi.fmt === 'int' ? 0 : null;
    const ys = xs.map((t) => {
      const p = byT.get(t);
      if (!p) return empty;
      const v = kpi.point ? kpi.point(p) : p[kpi.name];
      return v === undefined ? null : v;
    });
    state.charts[kpi.name].setData([xs.map((t) => t / 1000), ys]);
  }
}

function renderBreakdown(breakdown) {
  const body = $('#breakdown tbody');
  body.replaceChildren();
  const pct = (v) => (v === null ? '—' : `${v.toFixed(2)} %`);
  const frac = (v) => (v === null ? '—' : `${(v * 100).toFixed(2)} %`);
  for (const r of breakdown.rows) {
    const tr = document.createElement('tr');
    tr.dataset.dimension = breakdown.dimension;
    tr.dataset.value = r.value;
    const cells = [r.value === '' ? '(none)' : r.value, FMT.int(r.attempts), r.startup_p50 === null ? '—' : FMT.ms(r.startup_p50),
      frac(r.rebuffer_ratio), pct(r.vsf_pct), pct(r.ebvs_pct), pct(r.playback_failure_pct), frac(r.cache_hit_ratio),
      r.avg_bitrate_kbps === null ? '—' : FMT.kbps(r.avg_bitrate_kbps), FMT.int(r.errors)];
    for (const c of cells) {
      const td = document.createElement('td');
      td.textContent = c;
      tr.appendChild(td);
    }
    tr.addEventListener('click', () => addFilter(breakdown.dimension, r.value));
    body.appendChild(tr);
  }
}

// The alerts pending and firing now, above the tiles; each tile whose metric an alert watches is
// marked (firing wins over pending), with the number of alerts on its badge.
function renderAlerts(alerts) {
  const box = $('#alerts');
  box.replaceChildren();
  const active = (alerts && alerts.active) || [];
  const byMetric = new Map();
  for (const a of active) {
    const row = document.createElement('div');
    row.className = 'alert';
    row.dataset.rule = a.rule;
    row.dataset.group = a.group;
    row.dataset.state = a.state;
    row.dataset.metric = a.metric || '';
    const since = new Date(a.fired_at || a.active_since).toLocaleTimeString();
    const parts = [
      ['state', a.state],
      ['rule', a.rule],
      ['summary', (a.annotations && a.annotations.summary) || `${a.metric} ${a.op} ${a.threshold}`],
      ['muted', `${a.severity || ''} · since ${since}`],
    ];
    for (const [cls, text] of parts) {
      const span = document.createElement('span');
      span.className = cls;
      span.textContent = text;
      row.appendChild(span);
    }
    box.appendChild(row);
    const seen = byMetric.get(a.metric) || { state: 'pending', n: 0 };
    byMetric.set(a.metric, { state: a.state === 'firing' ? 'firing' : seen.state, n: seen.n + 1 });
  }
  box.hidden = active.length === 0;
  box.dataset.firing = String(active.filter((a) => a.state === 'firing').length);
  box.dataset.pending = String(active.filter((a) => a.state === 'pending').length);
  for (const kpi of KPIS) {
    const el = document.querySelector(`[data-kpi="${kpi.name}"]`);
    const mark = byMetric.get(kpi.name) || byMetric.get(kpi.status);
    if (mark) {
      el.dataset.alert = mark.state;
      el.querySelector('.badge').textContent = `${mark.n} ${mark.state}`;
    } else {
      delete el.dataset.alert;
    }
  }
}

function renderFilters() {
  const box = $('#filters');
  box.replaceChildren();
  for (const [d, v] of state.filters) {
    const chip = document.createElement('span');
    chip.className = 'chip';
    chip.dataset.filter = `${d}:${v}`;
    chip.title = 'remove this filter';
    chip.textContent = `${DIM_LABELS[d] || d} = ${v === '' ? '(none)' : v}`;
    chip.addEventListener('click', () => {
      state.filters = state.filters.filter(([fd]) => fd !== d);
      renderFilters();
      refresh();
    });
    box.appendChild(chip);
  }
}

function addFilter(dimension, value) {
  state.filters = state.filters.filter(([d]) => d !== dimension).concat([[dimension, value]]);
  renderFilters();
  refresh();
}

async function refresh() {
  if (state.busy) {
    state.again = true;
    return;
  }
  state.busy = true;
  const filter = state.filters.map(([d, v]) => `${d}:${v}`).join(',');
  try {
    const [summary, metrics, breakdown] = await Promise.all([
      getJSON(`api/v1/summary?${query({})}`),
      getJSON(`api/v1/metrics?${query({})}`),
      getJSON(`api/v1/breakdown?${query({ dimension: state.dimension, limit: 20 })}`),
    ]);
    renderTiles(summary);
    renderCharts(metrics);
    renderBreakdown(breakdown);
    // Alerts are global (not filtered); a failure to read them does not hide the metrics.
    renderAlerts(await getJSON('api/v1/alerts?from=now-1h&limit=1').catch(() => null));
    $('#error').hidden = true;
    $('#updated').textContent = `updated ${new Date().toLocaleTimeString()}`;
    state.refreshes += 1;
    document.body.dataset.filter = filter;
    document.body.dataset.refreshes = String(state.refreshes);
  } catch (e) {
    $('#error').textContent = `Could not refresh: ${e.message}`;
    $('#error').hidden = false;
  } finally {
    state.busy = false;
    if (state.again) {
      state.again = false;
      refresh();
    }
  }
}

async function main() {
  try {
    const config = await getJSON('dashboard/config.json');
    state.thresholds = config.thresholds || {};
    state.refreshMs = config.refresh_ms || state.refreshMs;
  } catch (e) {
    $('#error').textContent = `No dashboard configuration: ${e.message}`;
    $('#error').hidden = false;
  }
  $('#range').value = state.range;
  $('#range').addEventListener('change', (e) => {
    state.range = e.target.value;
    refresh();
  });
  $('#dimension').addEventListener('change', (e) => {
    state.dimension = e.target.value;
    refresh();
  });
  buildTiles();
  await refresh();
  setInterval(refresh, state.refreshMs);
}

main();
