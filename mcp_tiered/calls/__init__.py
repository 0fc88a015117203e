"""One call from arguments to result: tiers and policy, routing, the cascade, escalation, the cache."""
