// tracer's report: draws a trace's flows from the JSON in #data (see output/html/model.rs).
// No framework and no request: DOM and SVG built here, names set as text, never as markup.
"use strict";
(function () {
  const SVG = "http://www.w3.org/2000/svg";
  const PAGE = 100;
  const D = JSON.parse(document.getElementById("data").textContent);
  // Columns of a flow row (model::FlowRow).
  const ID = 0, TUPLE = 1, WORKLOAD = 2, VERDICT = 3, SENT = 4, BACK = 5, RETRANS = 6,
    FIRST = 7, DURATION = 8, SLOWEST = 9, PATH = 10, DETAILED = 11;
  const detail = new Map(D.detail.map((f) => [f.flow, f]));
  const rows = new Map(D.flows.map((r) => [r[ID], r]));
  const state = { view: [], page: 0, selected: null };

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k.startsWith("data-")) node.setAttribute(k, v);
      else node[k] = v;
    }
    for (const child of children) {
      if (child !== null && child !== undefined) node.append(child);
    }
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function duration(ns) {
    if (ns < 1e3) return ns + "ns";
    if (ns < 1e6) return (ns / 1e3).toFixed(1) + "us";
    if (ns < 1e9) return (ns / 1e6).toFixed(2) + "ms";
    return (ns / 1e9).toFixed(2) + "s";
  }

  const place = (label) => D.places[D.labels[label].place];
  const where = (label) => {
    const l = D.labels[label];
    return place(label).name + " " + l.ifname + " " + l.hook;
  };
  const verdictOf = (row) => D.verdicts[row[VERDICT]];

  function totals() {
    const t = D.totals;
    document.getElementById("title").textContent = D.title;
    const box = document.getElementById("totals");
    box.append(
      el("span", {}, `${t.flows} flows, ${t.packets} packets, ${t.events} events; `),
      el("span", { class: t.lost > 0 ? "warn" : "" }, `${t.lost} lost`),
      el("span", {}, `, ${t.malformed} malformed; ${t.detailed} flows in detail (at most ${t.detail_limit})`),
    );
    if (t.lost > 0) {
      box.append(el("div", { class: "warn" }, "Events were lost: some packets miss hops."));
    }
  }

  function filterAndSort() {
    const text = document.getElementById("filter").value.trim().toLowerCase();
    const kind = document.getElementById("verdict-filter").value;
    const by = document.getElementById("sort").value;
    let view = D.flows.filter((r) => {
      const v = verdictOf(r);
      if (kind && v.kind !== kind) return false;
      if (!text) return true;
      return (
        r[TUPLE].toLowerCase().includes(text) ||
        D.strings[r[WORKLOAD]].toLowerCase().includes(text) ||
        v.text.toLowerCase().includes(text) ||
        String(r[ID]) === text
      );
    });
    const keys = {
      first: (r) => r[FIRST],
      slowest: (r) => -r[SLOWEST],
      duration: (r) => -r[DURATION],
      verdict: (r) => verdictOf(r).kind,
      workload: (r) => D.strings[r[WORKLOAD]] || "\uffff",
      packets: (r) => -(r[SENT] + r[BACK]),
    };
    const key = keys[by];
    view.sort((a, b) => {
      const x = key(a), y = key(b);
      return x < y ? -1 : x > y ? 1 : a[ID] - b[ID];
    });
    state.view = view;
    state.page = 0;
    list();
  }

  function list() {
    const body = document.querySelector("#flows tbody");
    body.replaceChildren();
    const start = state.page * PAGE;
    for (const r of state.view.slice(start, start + PAGE)) {
      const v = verdictOf(r);
      const tr = el(
        "tr",
        { class: "flow" + (r[ID] === state.selected ? " selected" : ""), "data-flow": r[ID] },
        el("td", {}, String(r[ID])),
        el("td", { class: "tuple" }, r[TUPLE]),
        el("td", {}, D.strings[r[WORKLOAD]]),
        el("td", { class: "verdict " + v.kind }, v.kind),
        el("td", {}, `${r[SENT]}/${r[BACK]}` + (r[RETRANS] ? ` (${r[RETRANS]} re)` : "")),
        el("td", {}, duration(r[SLOWEST])),
      );
      tr.addEventListener("click", () => select(r[ID]));
      body.append(tr);
    }
    const pages = Math.max(1, Math.ceil(state.view.length / PAGE));
    document.getElementById("page").textContent =
      `page ${state.page + 1} of ${pages} (${state.view.length} flows)`;
    document.getElementById("prev").disabled = state.page === 0;
    document.getElementById("next").disabled = state.page + 1 >= pages;
  }

  // A device: a namespace and an interface. Hops are drawn as arrows between devices; the hooks
  // a packet went through inside a device are listed in its box.
  const deviceOf = (l) => D.labels[l].place + "/" + D.labels[l].ifname;

  // The devices of a path, left to right: the original direction's in its order, and the
  // reply's where the original did not go, next to their neighbours on the reply's way back.
  function devices(path) {
    const order = [];
    const steps = [[], []];
    for (const [dir, p] of path.pairs) {
      for (const l of [D.pairs[p].from, D.pairs[p].to]) {
        const lane = steps[dir];
        if (!lane.includes(l)) lane.push(l);
      }
    }
    for (const l of steps[0]) if (!order.includes(deviceOf(l))) order.push(deviceOf(l));
    let after = order.length;
    for (const l of steps[1]) {
      const d = deviceOf(l);
      const at = order.indexOf(d);
      if (at >= 0) { after = at; continue; }
      order.splice(after, 0, d);
    }
    return { order, steps };
  }

  // What a translation changed: `src 172.17.0.2:40000 → 198.18.0.2:40000`.
  function rewrite(nat, short) {
    const [bs, bd] = nat.before.split(" > "), [as, ad] = nat.after.split(" > ");
    const parts = [];
    if (bs !== as) parts.push(short ? `src → ${as}` : `src ${bs} → ${as}`);
    if (bd !== ad) parts.push(short ? `dst → ${ad}` : `dst ${bd} → ${ad}`);
    return parts.join(", ");
  }

  function drawPath(row, flow) {
    const path = D.paths[row[PATH]];
    const verdict = verdictOf(row);
    const { order, steps } = devices(path);
    if (order.length === 0) {
      document.getElementById("drawing").replaceChildren(
        el("p", { class: "note" }, "Every packet of this flow was seen at one place only: there is no hop to draw."));
      return;
    }
    const col = new Map(order.map((d, i) => [d, i]));
    const own = new Map((flow ? flow.pairs : []).map((p) => [p[0] + ":" + p[1], p]));
    const latency = (dir, p) => {
      const mine = own.get(dir + ":" + p), pair = D.pairs[p];
      return mine ? { n: mine[2], p50: mine[3], p99: mine[4], own: true } : { n: pair.count, p50: pair.p50, p99: pair.p99, own: false };
    };
    // Drops of this flow, by label, and translations.
    const drops = new Map();
    for (const pk of flow ? flow.packets : []) {
      if (pk.drop) drops.set(pk.hops[pk.hops.length - 1][0], pk.drop);
    }
    if (verdict.at !== null && verdict.reason && !["delivered", "unanswered"].includes(verdict.kind) && !drops.has(verdict.at)) {
      drops.set(verdict.at, { reason: verdict.reason, function: verdict.function, rule: verdict.rule });
    }
    const nats = new Map();
    for (const n of flow ? flow.nat : []) {
      if (n.at === null) continue;
      const d = deviceOf(n.at);
      nats.set(d, [...(nats.get(d) || []), n]);
    }
    // What each device's box lists: its hooks per direction, with the time from the hook before.
    const lines = new Map(order.map((d) => [d, []]));
    for (const dir of [0, 1]) {
      for (const l of steps[dir]) {
        const inside = path.pairs.find(([d, p]) => d === dir && D.pairs[p].to === l && deviceOf(D.pairs[p].from) === deviceOf(l));
        lines.get(deviceOf(l)).push({ dir, l, since: inside ? latency(dir, inside[1]) : null });
      }
    }
    const most = Math.max(1, ...order.map((d) => lines.get(d).length + (nats.get(d) || []).length));
    const W = 290, NW = 212, TOP = 40, NY = TOP + 34, NH = 40 + 15 * most;
    const width = Math.max(order.length, 1) * W + 30, height = NY + NH + 110;
    const box = svg("svg", { id: "path", width, height, viewBox: `0 0 ${width} ${height}`, role: "img" });
    box.append(svg("title", {}, `path of flow ${row[ID]}`));
    const defs = svg("defs");
    for (const [id, cls] of [["arrow-o", "orig"], ["arrow-r", "reply"]]) {
      const m = svg("marker", { id, viewBox: "0 0 10 10", refX: 10, refY: 5, markerWidth: 7, markerHeight: 7, orient: "auto-start-reverse" });
      m.append(svg("path", { d: "M0,0 L10,5 L0,10 z", class: "head " + cls }));
      defs.append(m);
    }
    box.append(defs);
    const left = (c) => 20 + c * W + (W - NW) / 2;
    // Namespaces: runs of devices in one place.
    const placeOf = (d) => +d.split("/")[0];
    for (let start = 0, c = 1; c <= order.length; c++) {
      if (c < order.length && placeOf(order[c]) === placeOf(order[start])) continue;
      const p = D.places[placeOf(order[start])];
      const g = svg("g", { class: "netns " + p.kind, "data-place": p.name });
      g.append(svg("rect", { x: 20 + start * W + 4, y: TOP - 26, width: (c - start) * W - 8, height: height - TOP + 10, rx: 10 }));
      const owner = p.container && p.pod ? `${p.pod} (${p.container})` : p.name;
      g.append(svg("text", { x: 20 + start * W + 14, y: TOP - 8, class: "netns-name" }, owner + (p.runtime ? " · " + p.runtime : "") + (p.kind === "container" ? "" : " namespace")));
      box.append(g);
      start = c;
    }
    // Arrows between devices: the original direction along the top of the boxes, the reply
    // along the bottom; one that skips devices bends around them.
    for (const [dir, p] of path.pairs) {
      const pair = D.pairs[p];
      const a = col.get(deviceOf(pair.from)), b = col.get(deviceOf(pair.to));
      if (a === b) continue;
      const y = dir === 0 ? NY + 16 : NY + NH - 16;
      const x1 = b > a ? left(a) + NW : left(a), x2 = b > a ? left(b) : left(b) + NW;
      const skip = Math.abs(b - a) > 1;
      const bend = dir === 0 ? -(NH / 2 + 40) : NH / 2 + 40;
      const cls = dir === 0 ? "orig" : "reply";
      const d = skip ? `M${x1},${y} C${x1},${y + bend} ${x2},${y + bend} ${x2},${y}` : `M${x1},${y} L${x2},${y}`;
      const g = svg("g", { class: "edge " + cls, "data-pair": p });
      g.append(svg("path", { d, class: "line " + cls, "marker-end": `url(#${dir === 0 ? "arrow-o" : "arrow-r"})` }));
      const t = latency(dir, p);
      const lx = (x1 + x2) / 2, ly = skip ? y + bend * 0.75 + (dir === 0 ? -4 : 12) : y + (dir === 0 ? -20 : 16);
      const label = svg("text", { x: lx, y: ly, class: "latency" });
      label.append(svg("tspan", { x: lx, dy: 0, class: "p50" }, duration(t.p50)));
      label.append(svg("tspan", { x: lx, dy: 12, class: "p99" }, `p99 ${duration(t.p99)}`));
      label.append(svg("title", {}, `${where(pair.from)} → ${where(pair.to)}: p50 ${duration(t.p50)}, p99 ${duration(t.p99)}, max ${duration(pair.max)}, ${t.n} packets` + (t.own ? "" : " (every flow on this path)")));
      g.append(label);
      g.addEventListener("click", () => histogram(p));
      box.append(g);
    }
    for (const d of order) {
      const c = col.get(d), x = left(c), list = lines.get(d);
      const first = D.labels[list[0].l];
      const dropped = list.filter((h) => drops.has(h.l));
      const g = svg("g", { class: "node" + (dropped.length ? " drop" : "") + (list.some((h) => D.labels[h.l].hook === "delivered") ? " delivered" : ""), "data-device": D.places[first.place].name + "/" + first.ifname });
      g.append(svg("rect", { x, y: NY, width: NW, height: NH, rx: 7 }));
      g.append(svg("text", { x: x + 10, y: NY + 20, class: "ifname" }, first.ifname));
      if (first.role !== "other") g.append(svg("text", { x: x + NW - 8, y: NY + 20, class: "role", "text-anchor": "end" }, first.role));
      list.forEach((h, i) => {
        const label = D.labels[h.l];
        const text = svg("text", { x: x + 10, y: NY + 38 + 15 * i, class: "hop " + (h.dir === 0 ? "orig" : "reply") + (drops.has(h.l) ? " dropped" : ""), "data-label": h.l },
          (h.dir === 0 ? "→ " : "← ") + label.hook + (h.since ? " +" + duration(h.since.p50) : ""));
        text.append(svg("title", {}, where(h.l) + (h.since ? `: p50 ${duration(h.since.p50)}, p99 ${duration(h.since.p99)} after the hook before` : "")));
        g.append(text);
      });
      (nats.get(d) || []).forEach((nat, i) => {
        const t = svg("text", { x: x + 10, y: NY + 38 + 15 * (list.length + i), class: "nat-badge" }, (nat.direction === "original" ? "→ " : "← ") + nat.kind.toUpperCase() + " " + rewrite(nat, true));
        t.append(svg("title", {}, `${nat.before} → ${nat.after}`));
        g.append(t);
      });
      dropped.forEach((h, i) => {
        const drop = drops.get(h.l);
        const t = svg("text", { x, y: NY + NH + 50 + 28 * i, class: "drop-reason" }, "✕ dropped: " + drop.reason);
        t.append(svg("title", {}, [drop.reason, drop.function, drop.rule].filter(Boolean).join(" · ")));
        g.append(t);
        const detailText = [drop.function, drop.rule].filter(Boolean).join(" · ");
        if (detailText) g.append(svg("text", { x, y: NY + NH + 64 + 28 * i, class: "drop-rule" }, detailText.length > 48 ? detailText.slice(0, 47) + "…" : detailText));
      });
      box.append(g);
    }
    document.getElementById("drawing").replaceChildren(box);
  }

  function select(id) {
    state.selected = id;
    const row = rows.get(id);
    const flow = row[DETAILED] ? detail.get(id) : null;
    const v = verdictOf(row);
    document.getElementById("flow-title").textContent = `Flow ${id}: ${row[TUPLE]}`;
    const verdict = document.getElementById("verdict");
    verdict.className = "verdict-line " + v.kind;
    verdict.replaceChildren(el("strong", {}, "verdict: "), v.text, v.advice ? el("div", { class: "advice" }, v.advice) : null);
    const nat = document.getElementById("nat");
    nat.replaceChildren(...(flow ? flow.nat : []).map((n) =>
      el("div", { class: "nat" }, `${n.kind.toUpperCase()} (${n.direction}) ${n.before} → ${n.after}` + (n.at !== null ? ` at ${where(n.at)}` : "") + (n.rule ? ` by ${n.rule}` : ""))));
    if (flow && flow.process) nat.append(el("div", {}, `from ${flow.process}`));
    drawPath(row, flow);
    pairs(row, flow);
    timeline(row, flow);
    for (const tr of document.querySelectorAll("tr.flow")) {
      tr.classList.toggle("selected", +tr.dataset.flow === id);
    }
  }

  function pairs(row, flow) {
    const path = D.paths[row[PATH]];
    const own = new Map((flow ? flow.pairs : []).map((p) => [p[0] + ":" + p[1], p]));
    const body = document.querySelector("#pairs tbody");
    body.replaceChildren();
    let slowest = null;
    for (const [dir, p] of path.pairs) {
      const pair = D.pairs[p], mine = own.get(dir + ":" + p);
      const [n, p50, p99] = mine ? [mine[2], mine[3], mine[4]] : [pair.count, pair.p50, pair.p99];
      const tr = el("tr", { class: "pair", "data-pair": p },
        el("td", {}, dir === 0 ? "original" : "reply"), el("td", {}, where(pair.from)), el("td", {}, where(pair.to)),
        el("td", {}, String(n)), el("td", {}, duration(p50)), el("td", {}, duration(p99)), el("td", {}, duration(pair.max)));
      tr.addEventListener("click", () => histogram(p));
      body.append(tr);
      if (slowest === null || pair.p50 > D.pairs[slowest].p50) slowest = p;
    }
    if (slowest !== null) histogram(slowest);
    else document.getElementById("histogram").replaceChildren();
  }

  // The distribution of one hop pair over the whole trace: four buckets per doubling.
  function histogram(p) {
    const pair = D.pairs[p];
    const W = 520, H = 160, L = 40, B = 30;
    const box = svg("svg", { id: "hist", width: W, height: H + B, "data-pair": p });
    box.append(svg("text", { x: L, y: 14, class: "hist-title" }, `${where(pair.from)} → ${where(pair.to)}: ${pair.count} packets in the trace`));
    if (pair.hist.length) {
      const lo = pair.hist[0][0], hi = pair.hist[pair.hist.length - 1][0];
      const span = hi - lo + 1, bw = (W - L - 10) / span;
      const top = Math.max(...pair.hist.map((h) => h[1]));
      for (const [b, n] of pair.hist) {
        const h = ((H - 30) * n) / top;
        const r = svg("rect", { x: L + (b - lo) * bw, y: H - h, width: Math.max(bw - 1, 1), height: h, class: "bar" });
        r.append(svg("title", {}, `${duration(Math.round(2 ** (b / 4)))}–${duration(Math.round(2 ** ((b + 1) / 4)))}: ${n}`));
        box.append(r);
      }
      box.append(svg("text", { x: L, y: H + 16, class: "axis" }, duration(Math.round(2 ** (lo / 4)))));
      box.append(svg("text", { x: W - 10, y: H + 16, class: "axis", "text-anchor": "end" }, duration(Math.round(2 ** ((hi + 1) / 4)))));
      box.append(svg("text", { x: L - 4, y: H - (H - 30) + 4, class: "axis", "text-anchor": "end" }, String(top)));
    }
    document.getElementById("histogram").replaceChildren(box);
  }

  function timeline(row, flow) {
    const strip = document.getElementById("timeline"), list = document.getElementById("packets");
    strip.replaceChildren();
    list.replaceChildren();
    if (!flow) {
      list.append(el("p", { class: "note" }, `This flow's packets are not in the report: it keeps ${D.totals.detail_limit} flows in detail, the failed and the slowest first. The path shows the latencies of every flow that took it.`));
      return;
    }
    const seen = new Set();
    const end = Math.max(1, ...flow.packets.map((pk) => pk.t));
    const W = 900, box = svg("svg", { id: "time", width: W, height: 70 });
    box.append(svg("line", { x1: 10, y1: 35, x2: W - 10, y2: 35, class: "axis-line" }));
    for (const pk of flow.packets) {
      // The same sequence number, flags and length again: a retransmission (pure ACKs repeat
      // legitimately and are left out).
      const key = `${pk.dir}:${pk.seq}:${pk.what}:${pk.ip_len}`;
      const retrans = /[SFP]/.test(pk.what) && seen.has(key);
      seen.add(key);
      const tx = 10 + ((W - 20) * pk.t) / end;
      const cls = "tick " + (pk.dir === 0 ? "orig" : "reply") + (retrans ? " retrans" : "") + (pk.drop ? " drop" : "");
      const g = svg("g", { class: cls, "data-packet": pk.id });
      g.append(svg("line", { x1: tx, y1: pk.dir === 0 ? 12 : 35, x2: tx, y2: pk.dir === 0 ? 35 : 58 }));
      g.append(svg("title", {}, `+${duration(pk.t)} ${pk.what}` + (retrans ? " (retransmission)" : "")));
      box.append(g);
      const hops = el("table", { class: "hops" });
      for (const [l, dt, t] of pk.hops) {
        hops.append(el("tr", {}, el("td", {}, "+" + duration(dt)), el("td", {}, place(l).name), el("td", {}, D.labels[l].ifname), el("td", {}, D.labels[l].hook), el("td", { class: "tuple" }, t >= 0 ? flow.tuples[t] : "")));
      }
      if (pk.drop) hops.append(el("tr", { class: "dropped" }, el("td", { colSpan: 5 }, `DROPPED: ${pk.drop.reason} in ${pk.drop.function}` + (pk.drop.rule ? ` by ${pk.drop.rule}` : ""))));
      const summary = el("summary", { class: cls.replace("tick", "packet") },
        `+${duration(pk.t)} ${pk.dir === 0 ? "→" : "←"} ${pk.what}` + ` ${pk.ip_len} bytes` + (retrans ? " (retransmission)" : "") + (pk.drop ? ` ✕ ${pk.drop.reason}` : "") + ` · ${pk.hops.length} hops`);
      list.append(el("details", { class: "packet", "data-packet": pk.id }, summary, hops));
    }
    if (flow.omitted) list.append(el("p", { class: "note" }, `${flow.omitted} more packets are not in the report.`));
    strip.append(box);
  }

  function start() {
    totals();
    const kinds = [...new Set(D.verdicts.map((v) => v.kind))].sort();
    const sel = document.getElementById("verdict-filter");
    for (const k of kinds) sel.append(el("option", { value: k }, k));
    for (const id of ["filter", "verdict-filter", "sort"]) {
      document.getElementById(id).addEventListener("input", filterAndSort);
    }
    document.getElementById("prev").addEventListener("click", () => { state.page--; list(); });
    document.getElementById("next").addEventListener("click", () => { state.page++; list(); });
    filterAndSort();
    const failed = state.view.find((r) => r[DETAILED] && verdictOf(r).kind !== "delivered");
    const first = failed || state.view[0];
    if (first) select(first[ID]);
    else document.getElementById("drawing").append(el("p", { class: "note" }, "The trace has no flows."));
    // Time from navigation to a drawn page, by the browser's clock (the benchmark reads it).
    document.documentElement.dataset.renderMs = String(Math.round(performance.now()));
    document.documentElement.dataset.ready = "1";
  }

  window.addEventListener("error", (e) => {
    document.documentElement.dataset.ready = "error";
    document.documentElement.dataset.error = String(e.message);
  });
  start();
})();
