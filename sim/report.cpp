#include "sim/report.hpp"

#include <string>

#include <nlohmann/json.hpp>

namespace alephd::sim {

namespace {

// The page draws its plots as SVG from the embedded report; when it has drawn them it sets
// <body data-rendered="ok"> (or "error: …"), which the test reads back from headless Chromium.
const char* page_head = R"(<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>alephd sim report</title>
<style>
body{font:14px system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:28px}
.pass{color:#176b2c}.fail{color:#b00020}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}
svg{background:#fafafa;border:1px solid #ddd}
.legend span{display:inline-block;margin-right:14px}
.sw{display:inline-block;width:12px;height:12px;margin-right:4px;vertical-align:-1px}
</style></head>
<body data-rendered="no">
<h1>alephd sim — <span id="result"></span></h1>
<p id="summary"></p>
<h2>Nodes and faults</h2>
<div class="legend"><span><i class="sw" style="background:#4caf50"></i>up</span><span><i class="sw" style="background:#e53935"></i>killed</span><span><i class="sw" style="background:#fb8c00"></i>paused</span><span><i class="sw" style="background:#8e24aa"></i>partitioned</span><span><i class="sw" style="background:#1e88e5"></i>slow link</span></div>
<svg id="timeline"></svg>
<h2>Placements of persistent programs</h2>
<svg id="placements"></svg>
<h2>Reschedule latency after a CRN died (CDF)</h2>
<svg id="cdf"></svg>
<h2>Invariants</h2>
<table id="invariants"><tr><th>invariant</th><th>checks</th><th>failed</th><th>last</th></tr></table>
<h2>Violations</h2>
<ul id="violations"></ul>
<div id="shortest"></div>
<h2>Events</h2>
<table id="events"><tr><th>t (s)</th><th>kind</th><th>what</th><th>node</th><th>detail</th></tr></table>
<script id="report" type="application/json">)";

const char* page_tail = R"(</script>
<script>
(function () {
  const NS = 'http://www.w3.org/2000/svg';
  function el(parent, tag, attrs, text) {
    const e = document.createElementNS(NS, tag);
    for (const k in attrs) e.setAttribute(k, attrs[k]);
    if (text !== undefined) e.textContent = text;
    parent.appendChild(e);
    return e;
  }
  function cell(row, text) { const td = document.createElement('td'); td.textContent = text; row.appendChild(td); }
  try {
    const r = JSON.parse(document.getElementById('report').textContent);
    const res = document.getElementById('result');
    res.textContent = r.result.toUpperCase() + ' (seed ' + r.seed + ')';
    res.className = r.result;
    document.getElementById('summary').textContent =
      r.nodes.length + ' nodes, ' + r.faults + ' faults, ' + r.workload.messages_acked + ' messages and ' +
      r.workload.files_acked + ' files acknowledged, ' + r.duration_s.toFixed(1) + ' s';
    const T = Math.max(r.duration_s, 1), left = 110, width = 760, row = 22;
    const x = t => left + (t / T) * width;
    // Timeline: one row per node; faults as coloured spans from the fault to its heal.
    const tl = document.getElementById('timeline');
    tl.setAttribute('width', left + width + 20);
    tl.setAttribute('height', r.nodes.length * row + 30);
    const rowOf = {};
    r.nodes.forEach((n, i) => {
      rowOf[n.name] = i;
      el(tl, 'text', {x: 4, y: i * row + 16, 'font-size': 12}, n.name);
      el(tl, 'rect', {x: left, y: i * row + 4, width: width, height: row - 8, fill: '#4caf50', 'class': 'up'});
    });
    const colour = {'crn-kill': '#e53935', 'ccn-kill': '#e53935', 'crn-pause': '#fb8c00', 'ccn-pause': '#fb8c00',
                    'partition': '#8e24aa', 'slow-link': '#1e88e5'};
    const open = {};
    r.events.forEach(e => {
      if (e.kind === 'fault') open[e.node] = e;
      if (e.kind === 'heal' && open[e.node]) {
        const f = open[e.node], i = rowOf[e.node];
        el(tl, 'rect', {x: x(f.t), y: i * row + 4, width: Math.max(2, x(e.t) - x(f.t)), height: row - 8,
                        fill: colour[f.what] || '#999', 'class': 'fault'}).appendChild(
          document.createElementNS(NS, 'title')).textContent = f.what + ' ' + f.node + ' ' + f.t + '-' + e.t + ' s';
        delete open[e.node];
      }
      if (e.kind === 'violation')
        el(tl, 'line', {x1: x(e.t), x2: x(e.t), y1: 0, y2: r.nodes.length * row, stroke: '#b00020',
                        'stroke-width': 2, 'class': 'violation'});
    });
    el(tl, 'text', {x: left, y: r.nodes.length * row + 20, 'font-size': 11}, '0 s');
    el(tl, 'text', {x: left + width - 30, y: r.nodes.length * row + 20, 'font-size': 11}, T.toFixed(0) + ' s');
    // Placements: one row per program, a segment per span on a CRN, labelled with the CRN.
    const pl = document.getElementById('placements');
    const progs = r.workload.persistent_programs;
    pl.setAttribute('width', left + width + 20);
    pl.setAttribute('height', Math.max(1, progs.length) * row + 30);
    const palette = ['#3949ab', '#00897b', '#c0ca33', '#f4511e', '#6d4c41', '#546e7a', '#d81b60', '#5e35b1', '#039be5', '#7cb342'];
    const crnColour = {};
    progs.forEach((p, i) => {
      el(pl, 'text', {x: 4, y: i * row + 16, 'font-size': 12}, p.slice(0, 12));
      const changes = r.placements.filter(c => c.program === p);
      changes.forEach((c, k) => {
        const end = k + 1 < changes.length ? changes[k + 1].t : T;
        c.crns.forEach((crn, j) => {
          if (!(crn in crnColour)) crnColour[crn] = palette[Object.keys(crnColour).length % palette.length];
          const h = (row - 8) / c.crns.length;
          const seg = el(pl, 'rect', {x: x(c.t), y: i * row + 4 + j * h, width: Math.max(1, x(end) - x(c.t)), height: h,
                                      fill: crnColour[crn], 'class': 'placement'});
          el(seg, 'title', {}, p.slice(0, 12) + ' on ' + crn + ' from ' + c.t + ' s');
          if (x(end) - x(c.t) > 60)
            el(pl, 'text', {x: x(c.t) + 4, y: i * row + 4 + j * h + h - 3, 'font-size': 10, fill: '#fff'}, crn);
        });
      });
    });
    // CDF of reschedule latencies, with the failure timeout marked.
    const cdf = document.getElementById('cdf');
    const W = 500, H = 220, pad = 40;
    cdf.setAttribute('width', W + pad * 2);
    cdf.setAttribute('height', H + pad * 2);
    const lat = r.reschedules.map(s => s.latency_s).sort((a, b) => a - b);
    const maxX = Math.max(r.config.failure_timeout_s * 2, lat.length ? lat[lat.length - 1] : 1);
    const cx = v => pad + (v / maxX) * W, cy = q => pad + H - q * H;
    el(cdf, 'line', {x1: pad, y1: pad + H, x2: pad + W, y2: pad + H, stroke: '#333'});
    el(cdf, 'line', {x1: pad, y1: pad, x2: pad, y2: pad + H, stroke: '#333'});
    el(cdf, 'text', {x: pad + W - 60, y: pad + H + 28, 'font-size': 11}, maxX.toFixed(1) + ' s');
    el(cdf, 'text', {x: 4, y: pad + 4, 'font-size': 11}, '100%');
    el(cdf, 'line', {x1: cx(r.config.failure_timeout_s), x2: cx(r.config.failure_timeout_s), y1: pad, y2: pad + H,
                     stroke: '#e53935', 'stroke-dasharray': '4 3', 'class': 'failure-timeout'});
    el(cdf, 'text', {x: cx(r.config.failure_timeout_s) + 4, y: pad + 12, 'font-size': 11, fill: '#e53935'}, 'failure-timeout');
    if (lat.length) {
      let d = 'M ' + cx(0) + ' ' + cy(0);
      lat.forEach((v, i) => { d += ' L ' + cx(v) + ' ' + cy(i / lat.length) + ' L ' + cx(v) + ' ' + cy((i + 1) / lat.length); });
      el(cdf, 'path', {d: d, fill: 'none', stroke: '#1e88e5', 'stroke-width': 2, 'class': 'cdf'});
    } else {
      el(cdf, 'text', {x: pad + 20, y: pad + H / 2, 'font-size': 12}, 'no CRN that ran a persistent program died');
    }
    // Tables.
    const inv = document.getElementById('invariants');
    Object.keys(r.invariants).forEach(k => {
      const tr = document.createElement('tr'), c = r.invariants[k];
      cell(tr, k); cell(tr, c.checked || 0); cell(tr, c.failed || 0); cell(tr, c.last || '');
      inv.appendChild(tr);
    });
    const vl = document.getElementById('violations');
    if (!r.violations.length) { const li = document.createElement('li'); li.textContent = 'none'; vl.appendChild(li); }
    r.violations.forEach(v => {
      const li = document.createElement('li');
      li.textContent = v.t.toFixed(2) + ' s ' + v.invariant + ': ' + v.detail;
      vl.appendChild(li);
    });
    const sh = r.shortest_history;
    if (sh) {
      const box = document.getElementById('shortest');
      const h = document.createElement('h3');
      h.textContent = 'Shortest history: ' + sh.faults.length + ' of ' + sh.faults_in_run.length + ' faults' +
        (sh.minimised ? ' after ' + sh.runs + ' re-runs' +
         (!sh.minimal ? ' (the search stopped first)' : sh.exact_replay ? ', none of which can go'
                                                         : ', without any one of them a re-run held')
                      : ' (not shortened)');
      box.appendChild(h);
      const p = document.createElement('p');
      p.textContent = 'repeat with ' + sh.repeat;
      box.appendChild(p);
      const ul = document.createElement('ul');
      sh.events.forEach(e => {
        const li = document.createElement('li');
        li.textContent = e.t.toFixed(2) + ' s ' + e.kind + ' ' + e.what + ' ' + e.node + (e.detail ? ' (' + e.detail + ')' : '');
        ul.appendChild(li);
      });
      box.appendChild(ul);
    }
    const ev = document.getElementById('events');
    r.events.filter(e => e.kind !== 'observe').forEach(e => {
      const tr = document.createElement('tr');
      cell(tr, e.t.toFixed(2)); cell(tr, e.kind); cell(tr, e.what); cell(tr, e.node); cell(tr, e.detail);
      ev.appendChild(tr);
    });
    document.body.dataset.rendered = 'ok';
  } catch (err) {
    document.body.dataset.rendered = 'error: ' + err;
  }
})();
</script>
</body></html>
)";

} // namespace

std::string html_report(const nlohmann::json& report) {
  // Inside <script>, "</" must not appear: JSON allows "<\/".
  auto data = report.dump();
  std::string safe;
  safe.reserve(data.size());
  for (std::size_t i = 0; i < data.size(); ++i) {
    if (data[i] == '<' && i + 1 < data.size() && data[i + 1] == '/')
      safe += "<\\";
    else
      safe += data[i];
  }
  return std::string(page_head) + safe + page_tail;
}

} // namespace alephd::sim
