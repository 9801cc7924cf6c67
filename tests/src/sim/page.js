// Draws the dashboard page's charts as SVG from #page-data, then writes what it drew into
// the DOM (per widget data-rendered-series / data-points / data-no-data, and
// #render-status) for the browser check to read back.
(function () {
  "use strict";
  var NS = "http://www.w3.org/2000/svg";
  var COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#9467bd", "#8c564b", "#e377c2",
                "#17becf", "#bcbd22", "#7f7f7f", "#d62728", "#393b79", "#637939"];
  var STATE_COLORS = { Alarm: "#d13212", Ok: "#1d8102", InsufficientData: "#879596" };
  var status = document.getElementById("render-status");

  function el(name, attrs, parent) {
    var e = document.createElementNS(NS, name);
    for (var k in attrs) { e.setAttribute(k, attrs[k]); }
    if (parent) { parent.appendChild(e); }
    return e;
  }
  function txt(name, attrs, parent, s) {
    var e = el(name, attrs, parent);
    e.textContent = s;
    return e;
  }
  function nice(v) {
    if (!(v > 0)) { return 1; }
    var p = Math.pow(10, Math.floor(Math.log10(v)));
    var f = v / p;
    return (f <= 1 ? 1 : f <= 2 ? 2 : f <= 5 ? 5 : 10) * p;
  }
  function fmt(v) {
    var a = Math.abs(v);
    if (a >= 1e6) { return (v / 1e6).toFixed(1) + "M"; }
    if (a >= 1e4) { return (v / 1e3).toFixed(0) + "k"; }
    if (a >= 100 || v === Math.round(v)) { return v.toFixed(0); }
    return v.toFixed(a >= 10 ? 1 : 2);
  }

  try {
    var data = JSON.parse(document.getElementById("page-data").textContent);
    var t0 = data.run_start_ms, t1 = data.run_end_ms;
    data.widgets.forEach(function (w) {
      w.series.forEach(function (s) {
        s.points.forEach(function (p) { t0 = Math.min(t0, p[0]); t1 = Math.max(t1, p[0] + data.period_ms); });
      });
    });
    if (!(t1 > t0)) { t1 = t0 + 1000; }
    var start = data.run_start_ms;
    var secs = function (t) { return (t - start) / 1000; };

    // The time axis shared by the timeline and the charts: x in [L, W - R].
    function axis(svg, W, L, R, top, bottom, labels) {
      var x = function (t) { return L + (t - t0) / (t1 - t0) * (W - L - R); };
      var span = (t1 - t0) / 1000;
      var step = nice(span / 8);
      for (var s = Math.ceil(secs(t0) / step) * step; s <= secs(t1); s += step) {
        var xx = x(start + s * 1000);
        el("line", { "class": "gridline", x1: xx, x2: xx, y1: top, y2: bottom }, svg);
        if (labels) { txt("text", { "class": "tick", x: xx, y: bottom + 12, "text-anchor": "middle" }, svg, fmt(s) + " s"); }
      }
      return x;
    }
    function faults(svg, x, top, bottom, labels) {
      data.faults.forEach(function (f) {
        var a = x(f.start_ms), b = x(f.end_ms === null ? t1 : f.end_ms);
        var r = el("rect", { "class": "fault-window", x: a, y: top, width: Math.max(b - a, 1), height: bottom - top, "data-fault": f.fault }, svg);
        txt("title", {}, r, f.fault + " (" + fmt(secs(f.start_ms)) + " s to " + (f.end_ms === null ? "end" : fmt(secs(f.end_ms)) + " s") + "): " + f.detail);
        if (labels) { txt("text", { "class": "fault-label", x: a + 2, y: top + 9 }, svg, f.fault); }
      });
    }
    function annotations(svg, x, top, bottom, alarms, labels) {
      var n = 0;
      alarms.forEach(function (a) {
        a.transitions.forEach(function (tr, i) {
          var xx = x(tr[0]);
          var color = STATE_COLORS[tr[1]] || "#545b64";
          var line = el("line", { "class": "alarm-annotation", x1: xx, x2: xx, y1: top, y2: bottom, stroke: color, "data-alarm": a.alarm, "data-state": tr[1] }, svg);
          txt("title", {}, line, a.region + " " + a.alarm + " → " + tr[1] + " at " + fmt(secs(tr[0])) + " s");
          if (labels) {
            txt("text", { "class": "alarm-label", x: xx + 2, y: top + 10 + 10 * ((n + i) % 4), fill: color }, svg, a.alarm.replace(/^tidemark-/, "") + " → " + tr[1]);
          }
        });
        n += a.transitions.length;
      });
      return n;
    }

    // Timeline: every fault window, and one lane per alarm with its states over the run
    // and a marker at each transition.
    (function () {
      var lanes = data.alarms.length, LANE = 13, TOP = 14;
      var W = 1200, L = 46, R = 14, bottom = TOP + Math.max(lanes, 1) * LANE;
      var H = bottom + 16;
      var svg = el("svg", { viewBox: "0 0 " + W + " " + H, "class": "timeline" });
      document.getElementById("timeline").appendChild(svg);
      var x = axis(svg, W, L, R, 2, bottom, true);
      faults(svg, x, 2, bottom, true);
      txt("text", { "class": "tick", x: 2, y: 11 }, svg, "faults");
      txt("text", { "class": "tick", x: 2, y: TOP + 10 }, svg, lanes ? "alarms" : "no alarm fired");
      data.alarms.forEach(function (a, i) {
        var y0 = TOP + i * LANE;
        a.transitions.forEach(function (tr, j) {
          var end = j + 1 < a.transitions.length ? a.transitions[j + 1][0] : t1;
          el("rect", { "class": "alarm-state", x: x(tr[0]), y: y0 + LANE - 4, width: Math.max(x(end) - x(tr[0]), 1), height: 3, fill: STATE_COLORS[tr[1]] || "#545b64" }, svg);
        });
        annotations(svg, x, y0 + 1, y0 + LANE - 1, [a], false);
        txt("text", { "class": "alarm-label", x: x(a.transitions.length ? a.transitions[0][0] : t0) + 3, y: y0 + 8, fill: "#16191f" }, svg,
            a.alarm + ": " + a.transitions.map(function (tr) { return tr[1] + " at " + fmt(secs(tr[0])) + " s"; }).join(" → "));
      });
    })();

    var withData = 0, empty = 0;
    var sections = document.querySelectorAll("section.widget");
    Array.prototype.forEach.call(sections, function (sec) {
      var w = data.widgets[Number(sec.getAttribute("data-widget-index"))];
      var chart = sec.querySelector(".chart"), legend = sec.querySelector(".legend");
      var W = 560, H = 200, L = 46, R = 10, top = 6, bottom = H - 18;
      var svg = el("svg", { viewBox: "0 0 " + W + " " + H, preserveAspectRatio: "none" });
      chart.appendChild(svg);
      var series = w.series.filter(function (s) { return s.points.length > 0; });
      var ymin = 0, ymax = 0;
      series.forEach(function (s) {
        s.points.forEach(function (p) { ymax = Math.max(ymax, p[1]); ymin = Math.min(ymin, p[1]); });
      });
      var ystep = nice((ymax - ymin) / 4 || 1);
      ymax = Math.max(ystep, Math.ceil(ymax / ystep) * ystep);
      ymin = Math.floor(ymin / ystep) * ystep;
      var y = function (v) { return bottom - (v - ymin) / (ymax - ymin) * (bottom - top); };
      for (var v = ymin; v <= ymax + 1e-9; v += ystep) {
        el("line", { "class": "gridline", x1: L, x2: W - R, y1: y(v), y2: y(v) }, svg);
        txt("text", { "class": "tick", x: L - 4, y: y(v) + 3, "text-anchor": "end" }, svg, fmt(v));
      }
      var x = axis(svg, W, L, R, top, bottom, true);
      faults(svg, x, top, bottom, false);
      el("line", { "class": "axis", x1: L, x2: W - R, y1: bottom, y2: bottom }, svg);
      el("line", { "class": "axis", x1: L, x2: L, y1: top, y2: bottom }, svg);
      var points = 0;
      series.forEach(function (s, i) {
        var color = COLORS[i % COLORS.length];
        // A point sits at the middle of its period.
        var d = s.points.map(function (p, j) {
          return (j === 0 ? "M" : "L") + x(p[0] + data.period_ms / 2).toFixed(1) + " " + y(p[1]).toFixed(1);
        }).join(" ");
        var path = el("path", { "class": "series", d: d, stroke: color, "data-label": s.label, "data-points": s.points.length }, svg);
        txt("title", {}, path, s.label);
        if (s.points.length === 1) {
          el("circle", { cx: x(s.points[0][0] + data.period_ms / 2), cy: y(s.points[0][1]), r: 2.5, fill: color }, svg);
        }
        points += s.points.length;
        var li = document.createElement("li");
        var sw = document.createElement("span");
        sw.className = "swatch";
        sw.style.background = color;
        li.appendChild(sw);
        li.appendChild(document.createTextNode(s.label));
        legend.appendChild(li);
      });
      var mine = data.alarms.filter(function (a) { return w.metrics.indexOf(a.metric) >= 0; });
      annotations(svg, x, top, bottom, mine, false);
      if (series.length === 0) {
        empty += 1;
        sec.setAttribute("data-no-data", "true");
        txt("text", { "class": "no-data", x: (L + W - R) / 2, y: (top + bottom) / 2, "text-anchor": "middle" }, svg, "No data in this run");
        var li = document.createElement("li");
        li.className = "no-data-reason";
        li.textContent = "No data: " + (w.missing.join("; ") || "no series");
        legend.appendChild(li);
      } else {
        withData += 1;
        sec.setAttribute("data-no-data", "false");
      }
      sec.setAttribute("data-rendered-series", String(series.length));
      sec.setAttribute("data-points", String(points));
    });
    status.setAttribute("data-status", "ok");
    status.textContent = "rendered " + sections.length + " widgets: " + withData + " with data, " + empty + " without";
  } catch (e) {
    status.setAttribute("data-status", "error");
    status.textContent = "rendering failed: " + e;
  }
})();
