// Live refresh of the overview: fetch /api/overview every few seconds and update the
// figures in place. Values go in with textContent only: nothing from Redis becomes markup.
(function () {
  "use strict";
  var root = document.querySelector("[data-live]");
  if (!root) return;
  var url = root.getAttribute("data-live");
  var every = Number(root.getAttribute("data-interval")) || 2000;
  var status = document.querySelector("[data-live-status]");

  function pick(data, path) {
    return path.split(".").reduce(function (value, key) {
      return value === null || value === undefined ? undefined : value[key];
    }, data);
  }

  function format(value, kind) {
    if (value === null || value === undefined) return kind === "rate" ? "measuring…" : "–";
    if (kind === "rate") return value.toLocaleString("en-US", { maximumFractionDigits: 1, minimumFractionDigits: 1 }) + "/s";
    if (kind === "age") {
      if (value < 60) return Math.round(value) + " s";
      if (value < 3600) return Math.floor(value / 60) + " min " + Math.round(value % 60) + " s";
      return Math.floor(value / 3600) + " h " + Math.floor((value % 3600) / 60) + " min";
    }
    return typeof value === "number" ? value.toLocaleString("en-US") : String(value);
  }

  function when(iso) {
    var moment = iso ? new Date(iso) : null;
    if (!moment || isNaN(moment.getTime())) return iso || "–";
    return moment.toISOString().slice(0, 19).replace("T", " ");
  }

  function cell(text, className) {
    var td = document.createElement("td");
    if (className) td.className = className;
    td.textContent = text;
    return td;
  }

  function paused(list) {
    var rows = document.querySelector("[data-paused-rows]");
    var table = document.querySelector("[data-paused-table]");
    var empty = document.querySelector("[data-paused-empty]");
    if (!rows) return;
    while (rows.firstChild) rows.removeChild(rows.firstChild);
    list.forEach(function (site) {
      var tr = document.createElement("tr");
      var code = document.createElement("code");
      code.textContent = site.website;
      var first = document.createElement("td");
      first.appendChild(code);
      tr.appendChild(first);
      tr.appendChild(cell(((site.status === null ? "" : site.status) + " " + site.error).trim()));
      tr.appendChild(cell(when(site.since)));
      tr.appendChild(cell(format(site.parked, "number"), "num"));
      rows.appendChild(tr);
    });
    table.classList.toggle("hidden", list.length === 0);
    empty.classList.toggle("hidden", list.length !== 0);
  }

  function apply(data) {
    root.querySelectorAll("[data-field]").forEach(function (el) {
      el.textContent = format(pick(data, el.getAttribute("data-field")), el.getAttribute("data-format"));
    });
    var holds = root.querySelector("[data-holds]");
    if (holds) {
      holds.textContent = data.identity.holds ? "identity holds: nothing lost" : format(data.identity.lost, "number") + " lost";
      holds.className = "badge " + (data.identity.holds ? "badge-ok" : "badge-bad");
    }
    paused(data.paused || []);
    if (status) status.textContent = "live · updated " + new Date(data.read_at).toISOString().slice(11, 19) + " UTC";
  }

  function tick() {
    fetch(url, { headers: { Accept: "application/json" }, credentials: "same-origin", cache: "no-store" })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.json();
      })
      .then(apply)
      .catch(function (error) {
        if (status) status.textContent = "refresh failed (" + error.message + "), retrying";
      })
      .then(function () { window.setTimeout(tick, every); });
  }

  window.setTimeout(tick, every);
})();
