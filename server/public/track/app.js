// Customer tracking page: plain browser script, no build step. The text (status steps, driver's
// first name, distance) is what the page is for and needs nothing but this script; the map is a
// bonus that appears once a tile has loaded. Every value from the hub goes in as text, never as
// HTML: order codes, addresses and names come from outside.
(() => {
  'use strict';

  const STEPS = ['PENDING', 'ASSIGNED', 'PICKED_UP', 'DELIVERED'];
  const ENDED = new Set(['DELIVERED', 'FAILED', 'CANCELLED']);
  const $ = (id) => document.getElementById(id);

  const data = JSON.parse($('tracking-data').textContent);
  // This page's own address plus /state: right also when a proxy serves the hub under a path.
  const stateUrl = `${location.pathname.replace(/\/+$/, '')}/state`;
  /** Local clock minus the hub's: positions carry the hub's time. */
  const clockOffset = Date.now() - data.config.serverTime;

  const view = {
    state: data.state,
    polls: 0,
    mapShown: false,
    expired: false,
    map: null,
    markers: { pickup: null, dropoff: null, driver: null },
  };
  window.hubTrack = view;

  function metres(a, b) {
    const rad = Math.PI / 180;
    const dLat = (b.lat - a.lat) * rad;
    const dLng = (b.lng - a.lng) * rad;
    const h = Math.sin(dLat / 2) ** 2 + Math.cos(a.lat * rad) * Math.cos(b.lat * rad) * Math.sin(dLng / 2) ** 2;
    return 12_742_000 * Math.asin(Math.min(1, Math.sqrt(h)));
  }

  function distanceText(m) {
    return m < 1000 ? `${Math.max(10, Math.round(m / 10) * 10)} m` : `${(m / 1000).toFixed(1)} km`;
  }

  function ago(ms) {
    const s = Math.max(0, Math.round(ms / 1000));
    if (s < 60) return `${s} s ago`;
    const m = Math.round(s / 60);
    return m < 60 ? `${m} min ago` : `${Math.round(m / 60)} h ago`;
  }

  function statusText(state) {
    const name = state.driver ? state.driver.firstName : 'Your driver';
    switch (state.status) {
      case 'PENDING':
      case 'OFFERED':
        return 'Your order is ready; we are finding a driver.';
      case 'ASSIGNED':
        return `${name} is on the way to pick up your order.`;
      case 'PICKED_UP':
        return `${name} has your order and is on the way to you.`;
      case 'DELIVERED':
        return 'Delivered. Enjoy!';
      case 'FAILED':
        return 'This delivery could not be completed. The shop will be in touch.';
      case 'CANCELLED':
        return 'This delivery was cancelled.';
      default:
        return state.status;
    }
  }

  function placeText(place) {
    return place.address || `${place.lat.toFixed(5)}, ${place.lng.toFixed(5)}`;
  }

  function renderText(state) {
    $('order-code').textContent = state.orderCode;
    document.title = `Delivery ${state.orderCode}`;
    const step = state.status === 'OFFERED' ? 'PENDING' : state.status;
    const reached = STEPS.indexOf(step);
    for (const li of $('steps').children) {
      const index = STEPS.indexOf(li.dataset.step);
      li.classList.toggle('done', reached >= 0 && index < reached);
      li.classList.toggle('current', reached >= 0 && index === reached);
    }
    const status = $('status');
    status.textContent = statusText(state);
    status.dataset.status = state.status;
    status.className = ENDED.has(state.status) ? `ended ${state.status}` : '';

    const driver = $('driver');
    const position = state.driver && state.driver.lat !== null && state.driver.lng !== null ? { lat: state.driver.lat, lng: state.driver.lng } : null;
    if (state.driver) {
      let line = `Driver: ${state.driver.firstName}`;
      if (position) {
        line += ` · ${distanceText(metres(position, state.dropoff))} away`;
        if (state.driver.ts !== null) line += ` · seen ${ago(Date.now() - (state.driver.ts + clockOffset))}`;
      }
      driver.textContent = line;
      driver.hidden = false;
    } else {
      driver.textContent = '';
      driver.hidden = true;
    }
    driver.dataset.lat = position ? String(position.lat) : '';
    driver.dataset.lng = position ? String(position.lng) : '';

    $('pickup').textContent = placeText(state.pickup);
    $('dropoff').textContent = placeText(state.dropoff);
    $('updated').textContent = view.expired ? 'This link has expired.' : `Updated ${new Date(state.updatedAt).toLocaleTimeString()}`;
  }

  // ---------- the map: only once a tile proves the tile server is reachable ----------

  function dot(color, radius) {
    return { radius, color: '#fff', weight: 2, fillColor: color, fillOpacity: 1 };
  }

  function createMap() {
    if (typeof L === 'undefined' || !data.config.tileUrl) return;
    const state = view.state;
    const map = L.map('map', { attributionControl: false, zoomControl: true });
    view.map = map;
    if (data.config.tileAttribution) {
      // Text only: Leaflet's own attribution control writes its strings as HTML.
      const Credit = L.Control.extend({
        options: { position: 'bottomright' },
        onAdd() {
          const box = L.DomUtil.create('div', 'leaflet-control-attribution leaflet-control');
          box.textContent = data.config.tileAttribution;
          return box;
        },
      });
      new Credit().addTo(map);
    }
    const tiles = L.tileLayer(data.config.tileUrl, { maxZoom: 19 });
    tiles.once('tileload', () => {
      view.mapShown = true;
      $('map').classList.remove('waiting');
      $('map').removeAttribute('aria-hidden');
      $('legend').hidden = false;
      map.invalidateSize();
      frame();
    });
    tiles.addTo(map);
    view.markers.pickup = L.circleMarker([state.pickup.lat, state.pickup.lng], dot('#5f6368', 6)).addTo(map);
    view.markers.dropoff = L.circleMarker([state.dropoff.lat, state.dropoff.lng], dot('#1a9641', 8)).addTo(map);
    frame();
    placeDriver(state);
  }

  function frame() {
    if (!view.map) return;
    const state = view.state;
    const points = [[state.pickup.lat, state.pickup.lng], [state.dropoff.lat, state.dropoff.lng]];
    if (state.driver && state.driver.lat !== null) points.push([state.driver.lat, state.driver.lng]);
    view.map.fitBounds(L.latLngBounds(points).pad(0.25), { maxZoom: 16, animate: false });
  }

  function placeDriver(state) {
    if (!view.map) return;
    const position = state.driver && state.driver.lat !== null && state.driver.lng !== null ? [state.driver.lat, state.driver.lng] : null;
    if (!position) {
      view.markers.driver?.remove();
      view.markers.driver = null;
      return;
    }
    if (!view.markers.driver) view.markers.driver = L.circleMarker(position, dot('#1a73e8', 9)).addTo(view.map);
    else view.markers.driver.setLatLng(position);
    if (!view.map.getBounds().contains(position)) frame();
  }

  // ---------- live updates: polling, paused while the page is not visible ----------

  let timer = null;

  function schedule(ms) {
    clearTimeout(timer);
    if (ENDED.has(view.state.status) || view.expired) return;
    timer = setTimeout(poll, ms);
  }

  async function poll() {
    if (document.hidden) return; // visibilitychange starts it again
    view.polls += 1;
    let res;
    try {
      res = await fetch(stateUrl, { cache: 'no-store', headers: { accept: 'application/json' } });
    } catch {
      schedule(data.config.pollMs * 2);
      return;
    }
    if (res.status === 404) {
      view.expired = true;
      renderText(view.state);
      return;
    }
    if (res.status === 429) {
      const wait = Number(res.headers.get('retry-after')) || 10;
      schedule(Math.max(wait * 1000, data.config.pollMs));
      return;
    }
    if (!res.ok) {
      schedule(data.config.pollMs * 2);
      return;
    }
    const state = await res.json();
    view.state = state;
    renderText(state);
    placeDriver(state);
    schedule(data.config.pollMs);
  }

  document.addEventListener('visibilitychange', () => {
    if (!document.hidden) schedule(0);
  });

  renderText(view.state);
  createMap();
  schedule(data.config.pollMs);
})();
