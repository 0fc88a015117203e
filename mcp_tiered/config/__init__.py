"""models.toml: its schema (schema.py), the sentences its problems are told in (explain.py)."""
