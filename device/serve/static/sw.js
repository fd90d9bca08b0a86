// edgekit serve: the page's service worker. It keeps the page itself (HTML, script, style, icons) so
// the page opens while the station is out of reach; photos then wait in the page's own queue
// (IndexedDB). Nothing of the API is ever cached: every count comes from the station.
"use strict";

const CACHE = "edgekit-page-v1";
const SHELL = ["/", "/static/app.js", "/static/app.css", "/static/manifest.webmanifest",
               "/static/icon-192.png", "/static/icon-512.png"];

self.addEventListener("install", (ev) => {
  // the API goes straight to the network, not through this worker's fetch handler: on a phone a
  // worker woken for every upload and question costs each of them time (browsers that know
  // static routes; the others ask the handler below, which lets them pass)
  const routes = ev.addRoutes && typeof URLPattern === "function"
    ? ev.addRoutes([{ condition: { urlPattern: new URLPattern({ pathname: "/api/*" }) }, source: "network" }])
        .catch(() => null)
    : null;
  ev.waitUntil(Promise.all([routes, caches.open(CACHE).then((c) => c.addAll(SHELL))]).then(() => self.skipWaiting()));
});

self.addEventListener("activate", (ev) => {
  ev.waitUntil(caches.keys()
    .then((keys) => Promise.all(keys.filter((k) => k !== CACHE).map((k) => caches.delete(k))))
    .then(() => self.clients.claim()));
});

self.addEventListener("fetch", (ev) => {
  const url = new URL(ev.request.url);
  if (ev.request.method !== "GET" || url.origin !== self.location.origin) return;
  if (ev.request.mode === "navigate" && url.pathname !== "/") return;  // e.g. the station's own /station
  const path = ev.request.mode === "navigate" ? "/" : url.pathname;
  if (!SHELL.includes(path)) return;  // the API and everything else: straight to the station
  // the station's copy when it answers (a new version is taken at once), the kept one when not
  ev.respondWith(fetch(ev.request).then((resp) => {
    if (resp.ok && !resp.redirected) {
      const copy = resp.clone();
      caches.open(CACHE).then((c) => c.put(path, copy));
    }
    return resp;
  }).catch(() => caches.match(path).then((hit) => hit || Response.error())));
});
