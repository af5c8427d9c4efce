"""Access control: API keys and tenants (``keys``), the request dependency that checks them (``auth``),
and per-key rate limits kept in Redis (``ratelimit``)."""
