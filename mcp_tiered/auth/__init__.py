"""Who may call what on the HTTP transports ([auth]): identities from the company's OpenID provider and named
API keys, their scopes and limits. See docs/auth.md."""
