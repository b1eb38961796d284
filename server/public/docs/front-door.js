// Keeps the health line of the front door current. The page is complete without it.
(() => {
  const fields = ['status', 'postgres', 'redis', 'node', 'uptimeSeconds'];
  async function refresh() {
    try {
      const res = await fetch('/health', { headers: { accept: 'application/json' }, cache: 'no-store' });
      const body = await res.json();
      for (const field of fields) {
        const el = document.getElementById(`health-${field}`);
        if (el && body[field] !== undefined) {
          el.textContent = String(body[field]);
          el.className = `v ${String(body[field])}`;
        }
      }
    } catch {
      const el = document.getElementById('health-status');
      if (el) {
        el.textContent = 'unreachable';
        el.className = 'v down';
      }
    }
  }
  setInterval(refresh, 5000);
})();
