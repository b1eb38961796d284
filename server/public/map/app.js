// Dispatcher live map: plain browser script (no build step), using the Leaflet and Socket.IO
// builds the hub serves under /map/vendor. Every value from the hub goes into the page as text,
// never as HTML: driver names, order codes and addresses come from outside. Leaflet writes any
// string it is given (tooltips, popups, attribution) with innerHTML, so it only ever gets DOM nodes.
(() => {
  'use strict';

  const TOKEN_KEY = 'dispatchHub.dispatcherToken';
  const COLORS = { AVAILABLE: '#1a9641', BUSY: '#f07c00', OFFLINE: '#8c8c8c' };
  const OPEN = new Set(['PENDING', 'ASSIGNED', 'PICKED_UP']);
  /** A finished delivery stays listed (faded) this long, so the dispatcher sees it end. */
  const CLOSED_LINGER_MS = 30_000;
  const MAX_LAT = 85.05112878;

  const $ = (id) => document.getElementById(id);
  const state = {
    /** driverId -> L.CircleMarker */
    markers: new Map(),
    /** deliveryId -> delivery as last received */
    deliveries: new Map(),
    connected: false,
    error: null,
  };
  /** driverId -> { id, name, status, lat, lng, lastPingAt (local clock ms), stale, li } */
  const drivers = new Map();
  let config = { tileUrl: '', staleAfterMs: 30_000, staleCheckMs: 5_000 };
  /** Local clock minus the hub's clock: hub timestamps are shifted by it before comparing with Date.now(). */
  let clockOffset = 0;
  let socket = null;
  /** A handshake refused as RATE_LIMITED is tried again after the wait the hub named. */
  let retryTimer = null;
  let map = null;
  let fittedOnce = false;

  window.hubMap = state;

  // ---------- token ----------

  function tokenFromFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ''));
    const token = params.get('token');
    if (!token) return null;
    // The token must not stay in the address bar, the history or a copied link.
    history.replaceState(null, '', location.pathname + location.search);
    return token;
  }

  function storedToken() {
    try {
      return localStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  }

  function storeToken(token) {
    try {
      if (token) localStorage.setItem(TOKEN_KEY, token);
      else localStorage.removeItem(TOKEN_KEY);
    } catch {
      // Private windows may refuse storage; the token then lives for this page only.
    }
  }

  // ---------- map ----------

  /**
   * The tile credit, built from text: Leaflet's own attribution control writes its strings with
   * innerHTML, so the map gets this control instead.
   */
  function addAttribution(text, url) {
    const Credit = L.Control.extend({
      options: { position: 'bottomright' },
      onAdd() {
        const box = L.DomUtil.create('div', 'leaflet-control-attribution leaflet-control');
        const leaflet = document.createElement('a');
        leaflet.href = 'https://leafletjs.com';
        leaflet.textContent = 'Leaflet';
        box.append(leaflet, ' | ');
        if (/^https?:\/\//i.test(url || '')) {
          const link = document.createElement('a');
          link.href = url;
          link.rel = 'noopener noreferrer';
          link.target = '_blank';
          link.textContent = text;
          box.append(link);
        } else {
          box.append(text);
        }
        return box;
      },
    });
    new Credit().addTo(map);
  }

  function createMap() {
    map = L.map('map', { worldCopyJump: true, preferCanvas: false, attributionControl: false }).setView([20, 0], 2);
    if (config.tileAttribution) addAttribution(config.tileAttribution, config.tileAttributionUrl);
    if (config.tileUrl) {
      const tiles = L.tileLayer(config.tileUrl, { maxZoom: 19 });
      // No tiles (offline, blocked, no tile server) leaves a blank background; markers still work.
      tiles.on('tileerror', () => {
        $('tiles-note').hidden = false;
      });
      tiles.on('tileload', () => {
        $('tiles-note').hidden = true;
      });
      tiles.addTo(map);
    } else {
      $('tiles-note').hidden = false;
    }
    map.on('moveend', sendViewport);
  }

  function currentViewport() {
    const b = map.getBounds();
    const west = b.getWest();
    const east = b.getEast();
    // Zoomed out past one world width: everything is in view, so ask for no filter at all.
    if (east - west >= 360) return null;
    const wrap = (lng) => ((((lng + 180) % 360) + 360) % 360) - 180;
    // After wrapping, minLng > maxLng means the view crosses the antimeridian; the hub handles that.
    return {
      minLat: Math.max(-MAX_LAT, b.getSouth()),
      maxLat: Math.min(MAX_LAT, b.getNorth()),
      minLng: wrap(west),
      maxLng: east === 180 ? 180 : wrap(east),
    };
  }

  function sendViewport() {
    if (!socket || !state.connected || !map) return;
    const viewport = currentViewport();
    state.viewport = viewport;
    socket.timeout(5000).emit('viewport', viewport, (err, reply) => {
      if (err || !reply || !reply.ok) console.warn('viewport refused', err || (reply && reply.error));
    });
  }

  // ---------- drivers ----------

  function markerStyle(driver) {
    const color = COLORS[driver.status] || COLORS.OFFLINE;
    return driver.stale
      ? { color, fillColor: color, opacity: 0.5, fillOpacity: 0.2, dashArray: '4 3', weight: 2 }
      : { color, fillColor: color, opacity: 1, fillOpacity: 0.85, dashArray: null, weight: 2 };
  }

  function isStale(driver, now = Date.now()) {
    return driver.lastPingAt === null || now - driver.lastPingAt > config.staleAfterMs;
  }

  function tooltipText(driver) {
    const age = driver.lastPingAt === null ? 'never' : `${Math.max(0, Math.round((Date.now() - driver.lastPingAt) / 1000))} s ago`;
    return `${driver.name} · ${driver.status} · last ping ${age}`;
  }

  function render(driver) {
    driver.stale = isStale(driver);
    const hasPosition = typeof driver.lat === 'number' && typeof driver.lng === 'number';
    let marker = state.markers.get(driver.id);
    if (hasPosition) {
      if (!marker) {
        marker = L.circleMarker([driver.lat, driver.lng], { radius: 7, className: 'driver-marker', ...markerStyle(driver) });
        // An element, not a string: Leaflet writes string content with innerHTML, and the name is
        // whatever the admin (or whoever got the admin token) typed.
        const tip = document.createElement('span');
        tip.className = 'driver-tooltip';
        marker.bindTooltip(tip, { direction: 'top' });
        marker.on('tooltipopen', () => {
          tip.textContent = tooltipText(driver);
        });
        marker.addTo(map);
        state.markers.set(driver.id, marker);
      } else {
        marker.setLatLng([driver.lat, driver.lng]);
        marker.setStyle(markerStyle(driver));
      }
      marker.options.status = driver.status;
      marker.options.stale = driver.stale;
      const el = marker.getElement && marker.getElement();
      if (el) {
        el.classList.toggle('stale', driver.stale);
        for (const s of Object.keys(COLORS)) el.classList.toggle(`status-${s}`, s === driver.status);
        el.setAttribute('data-driver-id', driver.id);
      }
    }

    let li = driver.li;
    if (!li) {
      li = document.createElement('li');
      driver.li = li;
      $('drivers').appendChild(li);
    }
    li.dataset.driverId = driver.id;
    li.dataset.status = driver.status;
    li.dataset.stale = String(driver.stale);
    li.dataset.lat = hasPosition ? String(driver.lat) : '';
    li.dataset.lng = hasPosition ? String(driver.lng) : '';
    li.textContent = driver.name;
  }

  function upsertDriver(id, fields) {
    let driver = drivers.get(id);
    if (!driver) {
      driver = { id, name: `driver ${id.slice(0, 8)}`, status: 'OFFLINE', lat: null, lng: null, lastPingAt: null, stale: true, li: null };
      drivers.set(id, driver);
    }
    Object.assign(driver, fields);
    render(driver);
    return driver;
  }

  function removeDriver(id) {
    const driver = drivers.get(id);
    if (!driver) return;
    state.markers.get(id)?.remove();
    state.markers.delete(id);
    driver.li?.remove();
    drivers.delete(id);
  }

  function updateCounts() {
    const counts = { AVAILABLE: 0, BUSY: 0, OFFLINE: 0 };
    for (const d of drivers.values()) counts[d.status] = (counts[d.status] || 0) + 1;
    for (const s of Object.keys(counts)) $(`count-${s}`).textContent = String(counts[s]);
  }

  function checkStale() {
    const now = Date.now();
    for (const driver of drivers.values()) {
      if (driver.stale !== isStale(driver, now)) render(driver);
    }
  }

  // ---------- deliveries ----------

  function driverName(id) {
    if (!id) return 'no driver yet';
    return drivers.get(id)?.name || `driver ${id.slice(0, 8)}`;
  }

  function renderDeliveries() {
    const list = $('deliveries');
    const items = [...state.deliveries.values()].sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1));
    list.replaceChildren();
    if (items.length === 0) {
      const li = document.createElement('li');
      li.className = 'empty';
      li.textContent = 'none';
      list.appendChild(li);
      return;
    }
    for (const d of items) {
      const li = document.createElement('li');
      li.dataset.deliveryId = d.id;
      li.dataset.status = d.status;
      li.dataset.driverId = d.driverId || '';
      if (!OPEN.has(d.status)) li.classList.add('closed');
      const code = document.createElement('span');
      code.className = 'code';
      code.textContent = d.orderCode;
      const stateEl = document.createElement('span');
      stateEl.className = `state ${d.status}`;
      stateEl.textContent = d.status;
      const who = document.createElement('div');
      who.className = 'who';
      who.textContent = `${driverName(d.driverId)} · ${d.pickup?.address || 'pickup'} → ${d.dropoff?.address || 'dropoff'}`;
      li.append(code, stateEl, who);
      li.addEventListener('click', () => {
        if (map && d.pickup) map.panTo([d.pickup.lat, d.pickup.lng]);
      });
      list.appendChild(li);
    }
  }

  function applyDelivery(delivery) {
    const known = state.deliveries.get(delivery.id);
    // Updates can overtake the snapshot; an older copy must not win.
    if (known && known.updatedAt > delivery.updatedAt) return;
    const { previousStatus: _ignored, ...copy } = delivery;
    state.deliveries.set(delivery.id, copy);
    if (!OPEN.has(copy.status)) {
      setTimeout(() => {
        const current = state.deliveries.get(copy.id);
        if (current && !OPEN.has(current.status)) {
          state.deliveries.delete(copy.id);
          renderDeliveries();
        }
      }, CLOSED_LINGER_MS);
    }
    renderDeliveries();
  }

  // ---------- socket ----------

  function setConn(text, cls) {
    const el = $('conn');
    el.textContent = text;
    el.className = cls || '';
  }

  function connect(token) {
    clearTimeout(retryTimer);
    if (socket) {
      socket.removeAllListeners();
      socket.disconnect();
      socket = null;
    }
    state.connected = false;
    state.error = null;
    if (!token) {
      setConn('enter a dispatcher token');
      return;
    }
    setConn('connecting…');
    // Same origin as the page; websocket only, like every hub client (no sticky sessions needed).
    socket = io('/dispatch', { transports: ['websocket'], auth: { token } });

    socket.on('connect', () => {
      state.connected = true;
      state.error = null;
      setConn('connected', 'connected');
      sendViewport();
    });
    socket.on('disconnect', (reason) => {
      state.connected = false;
      setConn(`disconnected (${reason}), reconnecting…`, 'error');
    });
    socket.on('connect_error', (err) => {
      state.connected = false;
      state.error = err.message;
      // A refused handshake (bad token, wrong role) is not retried by the client; a network error is.
      if (!socket.active && err.data?.code === 'RATE_LIMITED') {
        const waitMs = Math.max(1000, Number(err.data.details?.retryAfterMs) || 5000) + Math.random() * 1000;
        setConn(`busy, retrying in ${Math.round(waitMs / 1000)} s…`, 'error');
        const refused = socket;
        retryTimer = setTimeout(() => {
          if (socket === refused) socket.connect();
        }, waitMs);
      } else if (!socket.active) setConn(`refused: ${err.message}${err.data?.message ? ` (${err.data.message})` : ''}`, 'error');
      else setConn(`cannot reach the hub (${err.message}), retrying…`, 'error');
    });

    socket.on('snapshot', (snapshot) => {
      const seen = new Set();
      for (const d of snapshot.drivers) {
        seen.add(d.id);
        const known = drivers.get(d.id);
        const lastSeen = d.lastSeenAt ? Date.parse(d.lastSeenAt) + clockOffset : null;
        // A move may have arrived between connect and snapshot; the newer position stays.
        if (known && known.lastPingAt !== null && lastSeen !== null && known.lastPingAt > lastSeen) {
          upsertDriver(d.id, { name: d.name, status: d.status });
        } else {
          upsertDriver(d.id, { name: d.name, status: d.status, lat: d.lat, lng: d.lng, lastPingAt: lastSeen });
        }
      }
      for (const id of [...drivers.keys()]) if (!seen.has(id)) removeDriver(id);
      state.deliveries.clear();
      for (const delivery of snapshot.deliveries) state.deliveries.set(delivery.id, delivery);
      renderDeliveries();
      updateCounts();
      if (!fittedOnce) {
        const points = snapshot.drivers.filter((d) => d.lat !== null && d.lng !== null).map((d) => [d.lat, d.lng]);
        if (points.length > 0) {
          fittedOnce = true;
          map.fitBounds(L.latLngBounds(points).pad(0.5), { maxZoom: 15, animate: false });
        }
      }
      state.snapshotAt = Date.now();
    });

    socket.on('drivers:moved', (moves) => {
      for (const m of moves) {
        upsertDriver(m.id, { lat: m.lat, lng: m.lng, status: m.status, lastPingAt: m.ts + clockOffset, heading: m.heading, speed: m.speed });
      }
      updateCounts();
    });

    socket.on('driver:status', ({ id, status }) => {
      upsertDriver(id, { status });
      updateCounts();
    });

    socket.on('delivery:updated', (delivery) => applyDelivery(delivery));
  }

  // ---------- start ----------

  async function loadConfig() {
    const sentAt = Date.now();
    const res = await fetch('/map/config.json', { cache: 'no-store' });
    if (!res.ok) throw new Error(`config.json: ${res.status}`);
    const body = await res.json();
    // The hub's clock, read half a round trip ago.
    const receivedAt = Date.now();
    clockOffset = Math.round((sentAt + receivedAt) / 2 - body.serverTime);
    return body;
  }

  async function start() {
    try {
      config = { ...config, ...(await loadConfig()) };
    } catch (err) {
      setConn(`cannot load the map configuration: ${err.message}`, 'error');
    }
    createMap();
    setInterval(checkStale, Math.max(250, config.staleCheckMs));

    const fromFragment = tokenFromFragment();
    if (fromFragment) storeToken(fromFragment);
    const token = fromFragment || storedToken();
    $('token').value = token || '';

    $('token-form').addEventListener('submit', (e) => {
      e.preventDefault();
      const value = $('token').value.trim();
      storeToken(value);
      connect(value);
    });
    $('forget').addEventListener('click', () => {
      storeToken(null);
      $('token').value = '';
      connect(null);
    });
    connect(token);
  }

  start();
})();
