"""The team store ([store] url): one PostgreSQL database that every mcp-tiered process configured with the same
URL shares — each laptop's stdio server and every HTTP replica. It holds the ledger (the same `calls` and `hops`
as SQLite's), the cloud budget (reservations with a lease), the calls in flight on `openai` endpoints and,
with `shared_cache`, the response cache. Without a URL every process keeps its own SQLite ledger.
"""
