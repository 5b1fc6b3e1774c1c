// The operator page's only script: refresh its live parts (#live-table, #live-detail) once a
// second (short polling, chosen over server-sent events: see the README), show when the
// connection is lost, and warn when an open form's generation is no longer the state's.
// Forms work without it.
"use strict";
(function () {
  const live = document.getElementById("live");
  if (!live) return;
  const status = document.getElementById("status");
  const lost = document.getElementById("lost");
  const generation = document.getElementById("generation");
  const expected = document.getElementById("expected-generation");
  const stale = document.getElementById("stale");
  const PERIOD_MS = 1000, TIMEOUT_MS = 2500;
  let lostSince = null;

  function clock(date) { return date.toISOString().slice(11, 19) + " UTC"; }

  function connected(now) {
    lostSince = null;
    lost.hidden = true;
    document.body.classList.remove("offline");
    status.textContent = "live · " + clock(now);
    status.className = "status ok";
  }

  function disconnected(now, why) {
    if (lostSince === null) lostSince = now;
    lost.hidden = false;
    document.body.classList.add("offline");
    status.textContent = "connection lost since " + clock(lostSince) + " (" + why + ")";
    status.className = "status lost";
  }

  async function poll() {
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), TIMEOUT_MS);
    try {
      const answer = await fetch(live.dataset.src, {
        cache: "no-store", credentials: "same-origin", signal: controller.signal,
      });
      if (!answer.ok) throw new Error("HTTP " + answer.status);
      const fresh = new DOMParser().parseFromString(await answer.text(), "text/html");
      for (const part of ["live-table", "live-detail"]) {
        const source = fresh.getElementById(part), target = document.getElementById(part);
        if (source && target) target.innerHTML = source.innerHTML;
      }
      const root = live.querySelector(".live-root");
      const current = root ? root.dataset.generation : null;
      if (current !== null && generation) generation.textContent = current;
      if (expected && stale && current !== null) {
        stale.hidden = current === expected.value;
        document.getElementById("stale-generation").textContent = current;
      }
      connected(new Date());
    } catch (error) {
      disconnected(new Date(), error.name === "AbortError" ? "timeout" : error.message);
    } finally {
      clearTimeout(timer);
      setTimeout(poll, PERIOD_MS);
    }
  }
  setTimeout(poll, PERIOD_MS);
})();
