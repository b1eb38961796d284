// Dispatcher live map: plain browser script (no build step), using the Leaflet and Socket.IO
// builds the hub serves under /map/vendor. Every value from the hub goes into the page as text,
// never as HTML: driver names, order codes, addresses, reasons and score terms come from outside.
// Leaflet writes any string it is given (tooltips, popups, attribution) with innerHTML, so it only
// ever gets DOM nodes.
(() => {
  'use strict';

  const TOKEN_KEY = 'dispatchHub.dispatcherToken';
  const COLORS = { AVAILABLE: '#1a9641', BUSY: '#f07c00', OFFLINE: '#8c8c8c' };
  const OPEN = new Set(['PENDING', 'OFFERED', 'ASSIGNED', 'PICKED_UP']);
  /** A finished delivery stays listed (faded) this long, so the dispatcher sees it end. */
  const CLOSED_LINGER_MS = 30_000;
  const MAX_LAT = 85.05112878;
  /** How many deliveries of a closed status the list loads from the hub. */
  const HISTORY_LIMIT = 200;
  const MAX_DRIVER_RESULTS = 20;

  const $ = (id) => document.getElementById(id);
  const state = {
    /** driverId -> L.CircleMarker */
    markers: new Map(),
    /** deliveryId -> delivery as last received */
    deliveries: new Map(),
    /** deliveryId -> L.CircleMarker at the pickup, for the deliveries the list shows */
    deliveryMarkers: new Map(),
    connected: false,
    error: null,
    map: null,
    filter: { status: 'open', search: '' },
    /** What the detail panel shows: { kind: 'delivery' | 'driver', id, data, loadedAt } or null. */
    detail: null,
    /** Renders of the deliveries list, for tests and tools. */
    listRenders: 0,
    /** `drivers:moved` batches handled, and the time spent in their handler (ms), for tests and tools. */
    moveBatches: 0,
    moveHandlingMs: 0,
  };
  /** driverId -> { id, name, status, lat, lng, lastPingAt (local clock ms), stale, li } */
  const drivers = new Map();
  /** Deliveries of a closed status loaded from the hub for the status filter, by id. */
  let loaded = new Map();
  let config = { tileUrl: '', staleAfterMs: 30_000, staleCheckMs: 5_000 };
  /** Local clock minus the hub's clock: hub timestamps are shifted by it before comparing with Date.now(). */
  let clockOffset = 0;
  let socket = null;
  let token = null;
  /** A handshake refused as RATE_LIMITED is tried again after the wait the hub named. */
  let retryTimer = null;
  let map = null;
  let canvas = null;
  let fittedOnce = false;
  /** Pickup, dropoff and the lines of the delivery the panel shows. */
  let detailLayer = null;

  window.hubMap = state;

  // ---------- small DOM helpers: text only ----------

  /** An element with text content and attributes; children are elements or strings (as text). */
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (value === undefined || value === null || value === false) continue;
      if (key === 'class') node.className = value;
      else if (key === 'text') node.textContent = value;
      else if (key === 'dataset') Object.assign(node.dataset, value);
      else if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
      else node.setAttribute(key, value === true ? '' : String(value));
    }
    for (const child of children.flat()) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : String(child));
    }
    return node;
  }

  function metres(m) {
    if (typeof m !== 'number' || !Number.isFinite(m)) return '–';
    return m < 1000 ? `${Math.round(m)} m` : `${(m / 1000).toFixed(m < 10_000 ? 2 : 1)} km`;
  }

  function duration(ms) {
    const s = Math.max(0, Math.floor(ms / 1000));
    if (s < 60) return `${s} s`;
    const m = Math.floor(s / 60);
    if (m < 60) return `${m} min ${s % 60} s`;
    const h = Math.floor(m / 60);
    return `${h} h ${m % 60} min`;
  }

  /** A hub timestamp (ISO text) on the local clock, ms. */
  const hubTime = (iso) => Date.parse(iso) + clockOffset;

  /** A hub time as the dispatcher's local HH:MM:SS. */
  function clock(iso) {
    if (!iso) return '–';
    const d = new Date(iso);
    if (Number.isNaN(d.getTime())) return String(iso);
    return [d.getHours(), d.getMinutes(), d.getSeconds()].map((n) => String(n).padStart(2, '0')).join(':');
  }

  // ---------- token ----------

  function tokenFromFragment() {
    const params = new URLSearchParams(location.hash.replace(/^#/, ''));
    const value = params.get('token');
    if (!value) return null;
    // The token must not stay in the address bar, the history or a copied link.
    window.history.replaceState(null, '', location.pathname + location.search);
    return value;
  }

  function storedToken() {
    try {
      return localStorage.getItem(TOKEN_KEY);
    } catch {
      return null;
    }
  }

  function storeToken(value) {
    try {
      if (value) localStorage.setItem(TOKEN_KEY, value);
      else localStorage.removeItem(TOKEN_KEY);
    } catch {
      // Private windows may refuse storage; the token then lives for this page only.
    }
  }

  /** The hub's HTTP API with the dispatcher's token; answers { status, body }. */
  async function api(method, path, body) {
    const res = await fetch(path, {
      method,
      headers: { authorization: `Bearer ${token}`, ...(body !== undefined ? { 'content-type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
      cache: 'no-store',
    });
    let parsed = null;
    try {
      parsed = await res.json();
    } catch {
      parsed = null;
    }
    return { status: res.status, body: parsed };
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
    // One canvas for every marker: thousands of moving SVG nodes cost a style and layout pass each.
    canvas = L.canvas({ padding: 0.3 });
    map = L.map('map', { worldCopyJump: true, preferCanvas: true, renderer: canvas, attributionControl: false }).setView([20, 0], 2);
    state.map = map;
    detailLayer = L.layerGroup().addTo(map);
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
    const selected = state.detail && state.detail.kind === 'driver' && state.detail.id === driver.id;
    return driver.stale
      ? { color, fillColor: color, opacity: 0.5, fillOpacity: 0.2, dashArray: '4 3', weight: selected ? 4 : 2 }
      : { color, fillColor: color, opacity: 1, fillOpacity: 0.85, dashArray: null, weight: selected ? 4 : 2 };
  }

  function isStale(driver, now = Date.now()) {
    return driver.lastPingAt === null || now - driver.lastPingAt > config.staleAfterMs;
  }

  function pingAge(driver) {
    return driver.lastPingAt === null ? 'never' : `${duration(Date.now() - driver.lastPingAt)} ago`;
  }

  function tooltipText(driver) {
    return `${driver.name} · ${driver.status} · last ping ${driver.lastPingAt === null ? 'never' : `${Math.max(0, Math.round((Date.now() - driver.lastPingAt) / 1000))} s ago`}`;
  }

  function render(driver) {
    driver.stale = isStale(driver);
    const hasPosition = typeof driver.lat === 'number' && typeof driver.lng === 'number';
    let marker = state.markers.get(driver.id);
    if (hasPosition) {
      if (!marker) {
        marker = L.circleMarker([driver.lat, driver.lng], { radius: 7, renderer: canvas, ...markerStyle(driver) });
        // An element, not a string: Leaflet writes string content with innerHTML, and the name is
        // whatever the admin (or whoever got the admin token) typed.
        const tip = document.createElement('span');
        tip.className = 'driver-tooltip';
        marker.bindTooltip(tip, { direction: 'top' });
        marker.on('tooltipopen', () => {
          tip.textContent = tooltipText(driver);
        });
        marker.on('click', () => openDriver(driver.id));
        marker.addTo(map);
        state.markers.set(driver.id, marker);
      } else {
        marker.setLatLng([driver.lat, driver.lng]);
        if (marker.options.status !== driver.status || marker.options.stale !== driver.stale) marker.setStyle(markerStyle(driver));
      }
      marker.options.status = driver.status;
      marker.options.stale = driver.stale;
    }

    hookDirty.add(driver);
    if (hookTimer === null) hookTimer = setTimeout(flushHook, HOOK_FLUSH_MS);
  }

  /** Drivers whose item in the hidden `#drivers` list is behind their marker. */
  const hookDirty = new Set();
  let hookTimer = null;
  /**
   * The hidden list is for tests and tools, so it trails the markers by up to HOOK_FLUSH_MS: with
   * thousands of drivers moving, writing its attributes on every move cost more than the markers.
   */
  const HOOK_FLUSH_MS = 200;

  function flushHook() {
    hookTimer = null;
    const list = $('drivers');
    for (const driver of hookDirty) {
      if (!drivers.has(driver.id)) continue;
      let li = driver.li;
      if (!li) {
        li = document.createElement('li');
        li.dataset.driverId = driver.id;
        driver.li = li;
        list.appendChild(li);
      }
      const hasPosition = typeof driver.lat === 'number' && typeof driver.lng === 'number';
      const lat = hasPosition ? String(driver.lat) : '';
      const lng = hasPosition ? String(driver.lng) : '';
      if (li.dataset.status !== driver.status) li.dataset.status = driver.status;
      if (li.dataset.stale !== String(driver.stale)) li.dataset.stale = String(driver.stale);
      if (li.dataset.lat !== lat) li.dataset.lat = lat;
      if (li.dataset.lng !== lng) li.dataset.lng = lng;
      if (li.textContent !== driver.name) li.textContent = driver.name;
    }
    hookDirty.clear();
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
    hookDirty.delete(driver);
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

  // ---------- deliveries: list, filters, pickup markers ----------

  function driverName(id) {
    if (!id) return 'no driver yet';
    return drivers.get(id)?.name || `driver ${id.slice(0, 8)}`;
  }

  function allDeliveries() {
    const merged = new Map(loaded);
    for (const [id, d] of state.deliveries) merged.set(id, d);
    return [...merged.values()];
  }

  function matchesSearch(d, needle) {
    if (!needle) return true;
    return d.orderCode.toLowerCase().includes(needle) || (d.driverId !== null && driverName(d.driverId).toLowerCase().includes(needle));
  }

  function visibleDeliveries() {
    const { status, search } = state.filter;
    const needle = search.trim().toLowerCase();
    return allDeliveries()
      .filter((d) => (status === 'open' ? OPEN.has(d.status) || state.deliveries.has(d.id) : d.status === status))
      .filter((d) => matchesSearch(d, needle))
      .sort((a, b) => (a.createdAt < b.createdAt ? 1 : -1));
  }

  let listScheduled = false;
  /** The list and its markers are redrawn at most once per frame, however many updates arrive. */
  function scheduleList() {
    if (listScheduled) return;
    listScheduled = true;
    requestAnimationFrame(() => {
      listScheduled = false;
      renderDeliveries();
    });
  }

  function renderDeliveries() {
    state.listRenders += 1;
    const list = $('deliveries');
    const items = visibleDeliveries();
    list.replaceChildren();
    const selectedId = state.detail && state.detail.kind === 'delivery' ? state.detail.id : null;
    if (items.length === 0) list.appendChild(el('li', { class: 'empty', text: 'none' }));
    for (const d of items) {
      const li = el(
        'li',
        { dataset: { deliveryId: d.id, status: d.status, driverId: d.driverId || '' }, class: [OPEN.has(d.status) ? '' : 'closed', d.id === selectedId ? 'selected' : ''].join(' ').trim() || null },
        el('span', { class: 'code', text: d.orderCode }),
        el('span', { class: `state ${d.status}`, text: d.status }),
        d.status === 'OFFERED' && d.offerExpiresAt ? el('span', { class: 'countdown offer-countdown', dataset: { expiresAt: d.offerExpiresAt }, text: countdown(d.offerExpiresAt) }) : null,
        el('div', { class: 'who', text: `${driverName(d.driverId)} · ${d.pickup?.address || 'pickup'} → ${d.dropoff?.address || 'dropoff'}` }),
      );
      li.addEventListener('click', () => openDelivery(d.id));
      list.appendChild(li);
    }
    const title = state.filter.status === 'open' ? 'Open deliveries' : `${state.filter.status.replace('_', ' ').toLowerCase()} deliveries`;
    $('deliveries-title').textContent = `${title} (${items.length})`;
    renderDeliveryMarkers(items);
    renderDriverResults();
  }

  /** A small square-ish dot at each listed delivery's pickup: click it for the detail. */
  function renderDeliveryMarkers(items) {
    const keep = new Set();
    for (const d of items) {
      if (!d.pickup) continue;
      keep.add(d.id);
      let marker = state.deliveryMarkers.get(d.id);
      const style = { radius: 5, color: '#333', weight: 1, fillColor: OPEN.has(d.status) ? '#fff' : '#bbb', fillOpacity: 1 };
      if (!marker) {
        marker = L.circleMarker([d.pickup.lat, d.pickup.lng], { renderer: canvas, ...style });
        marker.options.deliveryId = d.id;
        marker.on('click', () => openDelivery(d.id));
        marker.addTo(map);
        state.deliveryMarkers.set(d.id, marker);
      } else marker.setStyle(style);
    }
    for (const [id, marker] of state.deliveryMarkers) {
      if (keep.has(id)) continue;
      marker.remove();
      state.deliveryMarkers.delete(id);
    }
  }

  function renderDriverResults() {
    const needle = state.filter.search.trim().toLowerCase();
    const list = $('driver-results');
    const title = $('driver-results-title');
    list.replaceChildren();
    if (!needle) {
      list.hidden = true;
      title.hidden = true;
      return;
    }
    const found = [...drivers.values()].filter((d) => d.name.toLowerCase().includes(needle)).slice(0, MAX_DRIVER_RESULTS);
    for (const d of found) {
      const li = el('li', { dataset: { driverId: d.id } }, el('span', { class: `dot ${d.status}` }), d.name, el('span', { class: `state`, text: d.status }));
      li.addEventListener('click', () => openDriver(d.id));
      list.appendChild(li);
    }
    if (found.length === 0) list.appendChild(el('li', { class: 'empty', text: 'no driver' }));
    list.hidden = false;
    title.hidden = false;
  }

  function applyDelivery(delivery) {
    const known = state.deliveries.get(delivery.id) || loaded.get(delivery.id);
    // Updates can overtake the snapshot; an older copy must not win.
    if (known && known.updatedAt > delivery.updatedAt) return;
    const { previousStatus: _ignored, ...copy } = delivery;
    if (loaded.has(copy.id)) loaded.set(copy.id, copy);
    state.deliveries.set(copy.id, copy);
    if (!OPEN.has(copy.status)) {
      setTimeout(() => {
        const current = state.deliveries.get(copy.id);
        if (current && !OPEN.has(current.status)) {
          state.deliveries.delete(copy.id);
          scheduleList();
        }
      }, CLOSED_LINGER_MS);
    }
    scheduleList();
    if (state.detail && state.detail.kind === 'delivery' && state.detail.id === copy.id) refreshDetailSoon();
    if (state.detail && state.detail.kind === 'driver' && (copy.driverId === state.detail.id || known?.driverId === state.detail.id)) renderDriverDetail();
  }

  /** A status chosen: closed statuses are loaded from the hub (the snapshot holds open deliveries only). */
  async function applyStatusFilter() {
    state.filter.status = $('filter-status').value;
    loaded = new Map();
    const wanted = state.filter.status;
    if (wanted !== 'open' && !OPEN.has(wanted) && token) {
      const res = await api('GET', `/admin/deliveries?status=${encodeURIComponent(wanted)}&limit=${HISTORY_LIMIT}`);
      // A later choice wins over a slow answer to an earlier one.
      if (state.filter.status !== wanted) return;
      if (res.status === 200) for (const d of res.body.deliveries) loaded.set(d.id, d);
      else setConn(`could not load ${wanted} deliveries (${res.body?.error?.code || res.status})`, 'error');
    }
    renderDeliveries();
  }

  // ---------- the detail panel ----------

  function showPanel(title) {
    $('detail').hidden = false;
    $('detail-title').textContent = title;
  }

  function closeDetail() {
    state.detail = null;
    $('detail').hidden = true;
    $('detail-body').replaceChildren();
    detailLayer.clearLayers();
    for (const d of drivers.values()) if (state.markers.has(d.id)) state.markers.get(d.id).setStyle(markerStyle(d));
    scheduleList();
  }

  function section(title, ...content) {
    return [el('h3', { text: title }), ...content];
  }

  /** Column label of a candidate field: the known ones by name, any other one (a new score term) as its words. */
  function columnLabel(key) {
    const known = { rank: '#', driverId: 'driver', distanceMeters: 'distance', outcome: 'outcome' };
    return known[key] || key.replace(/([a-z0-9])([A-Z])/g, '$1 $2').toLowerCase();
  }

  function cellText(key, value) {
    if (value === null || value === undefined) return '–';
    if (key === 'driverId') return driverName(value);
    if (key === 'distanceMeters' || /Meters$/.test(key)) return metres(value);
    if (/Seconds$/.test(key) && typeof value === 'number') return duration(value * 1000);
    if (typeof value === 'boolean') return value ? 'yes' : 'no';
    if (typeof value === 'number') return Number.isInteger(value) ? String(value) : value.toFixed(2);
    if (typeof value === 'string') return value;
    return JSON.stringify(value);
  }

  /**
   * Every field any candidate has becomes a column, known ones first, the rest in the order they
   * appear: score terms the hub adds later show without this page knowing them.
   */
  function candidatesTable(candidates, chosenDriverId) {
    if (!Array.isArray(candidates) || candidates.length === 0) return el('p', { class: 'none', text: 'No candidates recorded (nobody was free, or it was never assigned).' });
    const first = ['rank', 'driverId', 'distanceMeters', 'outcome'];
    const keys = [];
    for (const c of candidates) for (const k of Object.keys(c)) if (!keys.includes(k)) keys.push(k);
    const columns = [...first.filter((k) => keys.includes(k)), ...keys.filter((k) => !first.includes(k))];
    return el(
      'table',
      { id: 'candidates' },
      el('thead', {}, el('tr', {}, columns.map((k) => el('th', { text: columnLabel(k), dataset: { key: k } })))),
      el(
        'tbody',
        {},
        candidates.map((c) =>
          el(
            'tr',
            { class: c.driverId === chosenDriverId || ['chosen', 'claimed', 'accepted'].includes(c.outcome) ? 'chosen' : null, dataset: { driverId: c.driverId || '' } },
            columns.map((k) => el('td', { text: cellText(k, c[k]), dataset: { key: k } })),
          ),
        ),
      ),
    );
  }

  function offersTable(offers) {
    return el(
      'table',
      { id: 'offers' },
      el('thead', {}, el('tr', {}, ['driver', 'offered', 'expires', 'outcome', 'reason', 'answered'].map((h) => el('th', { text: h })))),
      el(
        'tbody',
        {},
        offers.map((o) =>
          el(
            'tr',
            { dataset: { driverId: o.driverId, outcome: o.outcome } },
            el('td', { text: driverName(o.driverId) }),
            el('td', { text: clock(o.offeredAt) }),
            el('td', { class: o.outcome === 'OPEN' ? 'countdown' : null, dataset: { expiresAt: o.expiresAt }, text: o.outcome === 'OPEN' ? countdown(o.expiresAt) : clock(o.expiresAt) }),
            el('td', { text: o.outcome }),
            el('td', { text: o.reason ?? '–' }),
            el('td', { text: clock(o.answeredAt) }),
          ),
        ),
      ),
    );
  }

  function countdown(expiresAt) {
    const left = hubTime(expiresAt) - Date.now();
    return left > 0 ? `${Math.ceil(left / 1000)} s left` : 'expiring…';
  }

  function eventsTable(events) {
    return el(
      'table',
      { id: 'audit' },
      el('thead', {}, el('tr', {}, ['at', 'change', 'by', 'driver', 'reason'].map((h) => el('th', { text: h })))),
      el(
        'tbody',
        {},
        events.map((e) =>
          el(
            'tr',
            { dataset: { to: e.to, actor: e.actor } },
            el('td', { class: 'when', text: clock(e.at) }),
            el('td', { text: `${e.from ?? '∅'} → ${e.to}` }),
            el('td', { text: e.actor }),
            el('td', { text: e.driverId ? driverName(e.driverId) : '–' }),
            el('td', { text: e.reason ?? '–' }),
          ),
        ),
      ),
    );
  }

  function pushesTable(pushes) {
    return el(
      'table',
      { id: 'pushes' },
      el('thead', {}, el('tr', {}, ['push', 'driver', 'sent', 're-sends', 'answer'].map((h) => el('th', { text: h })))),
      el(
        'tbody',
        {},
        pushes.map((p) =>
          el(
            'tr',
            {},
            el('td', { text: p.kind }),
            el('td', { text: driverName(p.driverId) }),
            el('td', { text: clock(p.lastSentAt || p.createdAt) }),
            el('td', { text: String(p.resends) }),
            el('td', { text: p.acknowledgedAt ? `confirmed ${clock(p.acknowledgedAt)}` : p.closedAt ? 'no longer current' : p.unacknowledgedAt ? 'never answered' : 'waiting' }),
          ),
        ),
      ),
    );
  }

  /** Whether the driver's app confirmed the job, in words, with a class for its colour. */
  function acknowledgement(d) {
    if (!d.driverId || !['ASSIGNED', 'PICKED_UP', 'OFFERED'].includes(d.status)) return null;
    if (d.acknowledgedAt) return { cls: 'ack-yes', text: `Driver's app confirmed the job at ${clock(d.acknowledgedAt)}`, acknowledged: true };
    const push = (d.pushes || []).find((p) => p.driverId === d.driverId && (p.kind === 'assignment' || p.kind === 'offer') && !p.closedAt);
    if (push && push.unacknowledgedAt) return { cls: 'ack-no', text: `Driver's app never confirmed the job (${push.resends} re-sends unanswered)`, acknowledged: false };
    return { cls: 'ack-wait', text: `Not confirmed by the driver's app yet${push ? ` (${push.resends} re-sends)` : ''}`, acknowledged: false };
  }

  /** When the delivery entered its current state: the last audit row into it, else its last update. */
  function enteredStateAt(d) {
    const events = d.events || [];
    for (let i = events.length - 1; i >= 0; i--) if (events[i].to === d.status) return hubTime(events[i].at);
    return hubTime(d.updatedAt);
  }

  function canRedispatch(d) {
    return d.status === 'PENDING' || ((d.status === 'ASSIGNED' || d.status === 'OFFERED') && !d.acknowledgedAt);
  }

  async function act(kind, d) {
    const message = $('detail-message');
    const reason = $('detail-reason').value.trim();
    const buttons = [$('detail-cancel'), $('detail-redispatch')];
    for (const b of buttons) b.disabled = true;
    message.className = 'message';
    message.textContent = kind === 'cancel' ? 'cancelling…' : 'sending back to assignment…';
    let res;
    try {
      res = await api('POST', `/admin/deliveries/${encodeURIComponent(d.id)}/${kind}`, reason ? { reason } : {});
    } catch (err) {
      res = { status: 0, body: { error: { code: 'NETWORK', message: err.message } } };
    }
    if (state.detail?.id !== d.id) return;
    if (res.status === 200) {
      const after = res.body.delivery;
      message.textContent =
        kind === 'cancel' ? (res.body.idempotent ? 'was already cancelled' : 'cancelled') : after.status === 'PENDING' ? 'back to assignment: nobody free yet, waiting' : `assigned again, to ${driverName(after.driverId)}`;
      const result = kind === 'cancel' ? 'CANCELLED' : after.status;
      applyDelivery(after);
      await loadDeliveryDetail(d.id);
      // The outcome is marked once the panel shows the delivery as it is after the action (its audit trail included).
      const again = $('detail-message') || message;
      again.textContent = message.textContent;
      again.dataset.result = result;
    } else {
      const error = res.body?.error || { code: String(res.status), message: 'refused' };
      message.className = 'message error';
      message.dataset.result = error.code;
      message.textContent = `${error.code}: ${error.message}`;
      for (const b of buttons) b.disabled = false;
      updateActionButtons(d);
    }
  }

  function updateActionButtons(d) {
    $('detail-cancel').disabled = !OPEN.has(d.status);
    $('detail-redispatch').disabled = !canRedispatch(d);
  }

  function renderDeliveryDetail() {
    const detail = state.detail;
    if (!detail || detail.kind !== 'delivery' || !detail.data) return;
    const d = detail.data;
    showPanel(`Order ${d.orderCode}`);
    const ack = acknowledgement(d);
    const reasonInput = el('input', { id: 'detail-reason', type: 'text', maxlength: '500', placeholder: 'reason (kept in the audit trail)', 'aria-label': 'reason' });
    const body = [
      el(
        'p',
        { id: 'detail-status', dataset: { status: d.status } },
        el('span', { class: `state ${d.status}`, text: d.status }),
        ' for ',
        el('span', { id: 'detail-age', text: duration(Date.now() - enteredStateAt(d)) }),
      ),
      ack ? el('p', { id: 'detail-ack', class: ack.cls, dataset: { acknowledged: String(ack.acknowledged) }, text: ack.text }) : null,
      el(
        'dl',
        {},
        el('dt', { text: 'driver' }),
        el('dd', {}, d.driverId ? el('button', { type: 'button', class: 'linkish', id: 'detail-driver', text: driverName(d.driverId), onclick: () => openDriver(d.driverId) }) : 'none yet'),
        el('dt', { text: 'pickup' }),
        el('dd', { id: 'detail-pickup', text: d.pickup.address || `${d.pickup.lat.toFixed(5)}, ${d.pickup.lng.toFixed(5)}` }),
        el('dt', { text: 'dropoff' }),
        el('dd', { id: 'detail-dropoff', text: d.dropoff.address || `${d.dropoff.lat.toFixed(5)}, ${d.dropoff.lng.toFixed(5)}` }),
        el('dt', { text: 'distance' }),
        el('dd', { text: d.distanceMeters === null ? '–' : `${metres(d.distanceMeters)} from the pickup when chosen` }),
        el('dt', { text: 'seller order' }),
        el('dd', { text: d.sellerOrderId }),
        el('dt', { text: 'created' }),
        el('dd', { text: clock(d.createdAt) }),
      ),
      el(
        'div',
        { class: 'actions' },
        reasonInput,
        el('button', { type: 'button', id: 'detail-cancel', text: 'Cancel delivery', onclick: () => act('cancel', d) }),
        el('button', { type: 'button', id: 'detail-redispatch', text: 'Send back to assignment', onclick: () => act('redispatch', d) }),
      ),
      el('div', { id: 'detail-message', class: 'message', role: 'status' }),
      Array.isArray(d.offers) && d.offers.length > 0 ? section('Offers', offersTable(d.offers)) : null,
      // Score terms may outnumber the panel's width: the table scrolls sideways, the panel does not.
      section('Why this driver: ranked candidates', el('div', { class: 'scroll' }, candidatesTable(d.candidates, d.driverId))),
      section('Audit trail', eventsTable(d.events || [])),
      Array.isArray(d.pushes) && d.pushes.length > 0 ? section("What the driver's app was told", pushesTable(d.pushes)) : null,
    ];
    $('detail-body').replaceChildren(...body.flat().filter(Boolean));
    updateActionButtons(d);
    drawDeliveryOnMap(d);
  }

  function drawDeliveryOnMap(d) {
    detailLayer.clearLayers();
    const pickup = [d.pickup.lat, d.pickup.lng];
    const dropoff = [d.dropoff.lat, d.dropoff.lng];
    L.polyline([pickup, dropoff], { renderer: canvas, color: '#555', weight: 2, dashArray: '6 6', interactive: false }).addTo(detailLayer);
    state.detailPickup = L.circleMarker(pickup, { renderer: canvas, radius: 9, color: '#fff', weight: 2, fillColor: '#1a73e8', fillOpacity: 1, interactive: false }).addTo(detailLayer);
    state.detailDropoff = L.circleMarker(dropoff, { renderer: canvas, radius: 9, color: '#fff', weight: 2, fillColor: '#c0392b', fillOpacity: 1, interactive: false }).addTo(detailLayer);
    // Labels as elements (Leaflet would parse a string as HTML).
    state.detailPickup.bindTooltip(el('span', { class: 'place-label', text: 'pickup' }), { permanent: true, direction: 'left', offset: [-8, 0] });
    state.detailDropoff.bindTooltip(el('span', { class: 'place-label', text: 'dropoff' }), { permanent: true, direction: 'left', offset: [-8, 0] });
    state.driverLine = null;
    updateDriverLine();
    const points = [pickup, dropoff];
    const driver = d.driverId ? drivers.get(d.driverId) : null;
    if (driver && typeof driver.lat === 'number') points.push([driver.lat, driver.lng]);
    // The panel covers the right of the map: frame the route in what is left.
    const covered = $('detail').offsetWidth || 0;
    map.fitBounds(L.latLngBounds(points), { maxZoom: 16, animate: false, paddingTopLeft: [60, 60], paddingBottomRight: [covered + 60, 60] });
  }

  /** The line from the assigned driver to where it is heading: the pickup, then the dropoff. */
  function updateDriverLine() {
    const detail = state.detail;
    if (!detail || detail.kind !== 'delivery' || !detail.data) return;
    const d = detail.data;
    const driver = d.driverId && ['ASSIGNED', 'PICKED_UP', 'OFFERED'].includes(d.status) ? drivers.get(d.driverId) : null;
    if (!driver || typeof driver.lat !== 'number') {
      state.driverLine?.remove();
      state.driverLine = null;
      return;
    }
    const target = d.status === 'PICKED_UP' ? d.dropoff : d.pickup;
    const points = [[driver.lat, driver.lng], [target.lat, target.lng]];
    if (state.driverLine) state.driverLine.setLatLngs(points);
    else state.driverLine = L.polyline(points, { renderer: canvas, color: '#1a73e8', weight: 3, interactive: false }).addTo(detailLayer);
  }

  async function loadDeliveryDetail(id) {
    const res = await api('GET', `/admin/deliveries/${encodeURIComponent(id)}`);
    if (!state.detail || state.detail.kind !== 'delivery' || state.detail.id !== id) return;
    if (res.status !== 200) {
      showPanel('Delivery');
      $('detail-body').replaceChildren(el('p', { class: 'message error', text: `${res.body?.error?.code || res.status}: ${res.body?.error?.message || 'could not load the delivery'}` }));
      return;
    }
    state.detail.data = res.body;
    state.detail.loadedAt = Date.now();
    renderDeliveryDetail();
  }

  let refreshTimer = null;
  function refreshDetailSoon() {
    clearTimeout(refreshTimer);
    refreshTimer = setTimeout(() => {
      if (state.detail && state.detail.kind === 'delivery') loadDeliveryDetail(state.detail.id);
    }, 150);
  }

  function openDelivery(id) {
    const previous = state.detail;
    state.detail = { kind: 'delivery', id, data: null, loadedAt: null };
    if (previous && previous.kind === 'driver') {
      const d = drivers.get(previous.id);
      if (d) render(d);
      const m = state.markers.get(previous.id);
      if (m && d) m.setStyle(markerStyle(d));
    }
    showPanel('Loading…');
    $('detail-body').replaceChildren();
    scheduleList();
    loadDeliveryDetail(id);
  }

  function currentDeliveryOf(driverId) {
    for (const d of state.deliveries.values()) if (d.driverId === driverId && OPEN.has(d.status)) return d;
    return null;
  }

  async function openDriver(id) {
    const previous = state.detail;
    state.detail = { kind: 'driver', id, data: null, loadedAt: Date.now() };
    if (previous && previous.kind === 'driver' && previous.id !== id) {
      const before = drivers.get(previous.id);
      if (before && state.markers.has(before.id)) state.markers.get(before.id).setStyle(markerStyle(before));
    }
    detailLayer.clearLayers();
    const driver = drivers.get(id);
    if (driver && state.markers.has(id)) state.markers.get(id).setStyle(markerStyle(driver));
    renderDriverDetail();
    scheduleList();
    // A driver busy with a delivery older than the snapshot's newest 1,000: ask the hub.
    if (driver && driver.status === 'BUSY' && !currentDeliveryOf(id)) {
      const res = await api('GET', `/admin/deliveries?driverId=${encodeURIComponent(id)}&limit=5`);
      if (res.status === 200 && state.detail?.id === id) {
        const open = res.body.deliveries.find((d) => OPEN.has(d.status));
        if (open) {
          state.deliveries.set(open.id, open);
          renderDriverDetail();
        }
      }
    }
  }

  function renderDriverDetail() {
    const detail = state.detail;
    if (!detail || detail.kind !== 'driver') return;
    const driver = drivers.get(detail.id);
    if (!driver) {
      showPanel('Driver');
      $('detail-body').replaceChildren(el('p', { class: 'none', text: 'This driver is no longer on the map.' }));
      return;
    }
    showPanel(driver.name);
    const current = currentDeliveryOf(driver.id);
    $('detail-body').replaceChildren(
      el(
        'dl',
        { id: 'driver-detail', dataset: { driverId: driver.id } },
        el('dt', { text: 'status' }),
        el('dd', {}, el('span', { class: `dot ${driver.status}` }), driver.status, driver.stale ? ' (stale)' : ''),
        el('dt', { text: 'last ping' }),
        el('dd', { id: 'driver-ping-age', text: pingAge(driver) }),
        el('dt', { text: 'position' }),
        el('dd', { text: typeof driver.lat === 'number' ? `${driver.lat.toFixed(5)}, ${driver.lng.toFixed(5)}` : 'unknown' }),
        el('dt', { text: 'delivery' }),
        el(
          'dd',
          { id: 'driver-delivery' },
          current
            ? el('button', { type: 'button', class: 'linkish', dataset: { deliveryId: current.id }, text: `${current.orderCode} · ${current.status}`, onclick: () => openDelivery(current.id) })
            : 'none',
        ),
      ),
    );
  }

  /** Once a second: the ages in the panel, and the countdowns of open offers. */
  function tickPanel() {
    // The list's offered deliveries count down too (OFFERED in the dispatcher stream carries offerExpiresAt).
    for (const cell of document.querySelectorAll('#deliveries .offer-countdown')) cell.textContent = countdown(cell.dataset.expiresAt);
    const detail = state.detail;
    if (!detail || $('detail').hidden) return;
    if (detail.kind === 'driver') {
      const driver = drivers.get(detail.id);
      const age = $('driver-ping-age');
      if (driver && age) age.textContent = pingAge(driver);
      return;
    }
    if (!detail.data) return;
    const age = $('detail-age');
    if (age) age.textContent = duration(Date.now() - enteredStateAt(detail.data));
    for (const cell of document.querySelectorAll('#offers td.countdown')) cell.textContent = countdown(cell.dataset.expiresAt);
  }

  // ---------- socket ----------

  function setConn(text, cls) {
    const node = $('conn');
    node.textContent = text;
    node.className = cls || '';
  }

  function connect(value) {
    clearTimeout(retryTimer);
    if (socket) {
      socket.removeAllListeners();
      socket.disconnect();
      socket = null;
    }
    token = value;
    state.connected = false;
    state.error = null;
    if (!value) {
      setConn('enter a dispatcher token');
      return;
    }
    setConn('connecting…');
    // Same origin as the page; websocket only, like every hub client (no sticky sessions needed).
    socket = io('/dispatch', { transports: ['websocket'], auth: { token: value } });

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
      const started = performance.now();
      const watched = state.detail && state.detail.kind === 'delivery' ? state.detail.data?.driverId : null;
      let watchedMoved = false;
      for (const m of moves) {
        // A move's status is what Redis said when the fix was written, up to a map tick before the
        // batch leaves: a claim or release in that tick reaches the page first as `driver:status`,
        // and the older status here must not undo it. It only introduces a driver the page lacks.
        const fields = { lat: m.lat, lng: m.lng, lastPingAt: m.ts + clockOffset, heading: m.heading, speed: m.speed };
        if (!drivers.has(m.id)) fields.status = m.status;
        upsertDriver(m.id, fields);
        if (m.id === watched) watchedMoved = true;
      }
      if (watchedMoved) updateDriverLine();
      updateCounts();
      state.moveBatches += 1;
      state.moveHandlingMs += performance.now() - started;
    });

    socket.on('driver:status', ({ id, status }) => {
      upsertDriver(id, { status });
      updateCounts();
      if (state.detail && state.detail.kind === 'driver' && state.detail.id === id) renderDriverDetail();
    });

    socket.on('delivery:updated', (delivery) => applyDelivery(delivery));

    socket.on('delivery:push', (push) => {
      if (state.detail && state.detail.kind === 'delivery' && state.detail.id === push.deliveryId) refreshDetailSoon();
    });
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
    setInterval(tickPanel, 1000);

    const fromFragment = tokenFromFragment();
    if (fromFragment) storeToken(fromFragment);
    const initial = fromFragment || storedToken();
    $('token').value = initial || '';

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
    $('detail-close').addEventListener('click', closeDetail);
    $('filter-status').addEventListener('change', () => applyStatusFilter());
    let searchTimer = null;
    $('search').addEventListener('input', () => {
      clearTimeout(searchTimer);
      searchTimer = setTimeout(() => {
        state.filter.search = $('search').value;
        renderDeliveries();
      }, 120);
    });
    document.addEventListener('keydown', (e) => {
      if (e.key === 'Escape' && !$('detail').hidden) closeDetail();
    });
    connect(initial);
  }

  state.openDelivery = (id) => openDelivery(id);
  state.openDriver = (id) => openDriver(id);

  start();
})();
