"""The fleet dashboard: server-rendered pages (Jinja2, autoescaped) with HTMX, served by
``fleet-operator`` (``[dashboard] listen``) and standalone (``fleet dashboard``).

* :mod:`.views` — pure view models (overview, device list and detail, deployments, rollouts);
* :mod:`.source` — where the fleet is read from: the NATS buckets (kept by watches), the
  operator's own view (it passes one in), or :mod:`.mock` (seeded, and says so on every page);
* :mod:`.app` — the aiohttp application: pages, the ping action, live logs over SSE, security
  headers on every response, CSRF on every POST, the OIDC login (:mod:`.auth`).

Under ``Content-Security-Policy: script-src 'self'`` (every mode): no inline script, no inline
handler, no inline style; behaviour lives in ``static/app.js`` and HTMX attributes.
"""
