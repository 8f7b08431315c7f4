// Nudge console: draws the charts whose data the server put in JSON data islands.
// <div data-chart="rates|rule" data-source="ID"> + <script type="application/json" id="ID">.
(function () {
  "use strict";
  function seconds(t) {
    if (typeof t === "number") { return t > 1e11 ? t / 1000 : t; }
    var ms = Date.parse(t);
    return isNaN(ms) ? null : ms / 1000;
  }
  var palette = ["#3056d3", "#e8590c", "#2b8a3e", "#ae3ec9"];
  var kinds = {
    rates: [["events", "events/s"], ["actions", "actions/s"]],
    rule: [["entered", "entered"], ["sends", "sends"], ["conversions", "conversions"]]
  };
  function draw(el) {
    var island = document.getElementById(el.getAttribute("data-source"));
    if (!island || typeof uPlot === "undefined") { return; }
    var data = JSON.parse(island.textContent);
    var fields = kinds[el.getAttribute("data-chart")] || [];
    var xs = data.at.map(seconds);
    var cols = [xs];
    var series = [{}];
    fields.forEach(function (f, i) {
      cols.push(data[f[0]]);
      series.push({ label: f[1], stroke: palette[i % palette.length], width: 1.5 });
    });
    var width = Math.max(320, el.clientWidth || 800);
    var x = { time: true };
    var span = +el.getAttribute("data-span") || 0;  // seconds the x axis shows, ending now
    if (span > 0) {
      // a fixed window: with one sample, or samples seconds apart, uPlot's own range
      // padding stretched the axis over years
      var end = Math.max(Date.now() / 1000, xs.length ? xs[xs.length - 1] : 0);
      x.range = function () { return [end - span, end]; };
    }
    el.setAttribute("data-drawn", "1");
    new uPlot({ width: width, height: 240, series: series, scales: { x: x } }, cols, el);
  }
  document.querySelectorAll("[data-chart]").forEach(draw);
})();
