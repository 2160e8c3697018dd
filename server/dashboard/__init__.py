"""`nbo dashboard`: a live campaign page beside the servers, fed by the decision and outcome logs.

The process tails the log streams (server.dashboard.tail) into per-second counts held in memory
(server.dashboard.window), reads budgets and live versions from Redis when the page asks
(server.dashboard.live), and serves `GET /api/live` (server.dashboard.snapshot) and one
self-contained page (server.dashboard.web, page.html); server.dashboard.serve runs them on one
event loop. The servers do nothing for it: it reads what they already write.
"""
