"""The OpenAI chat completions API on the HTTP transports (/v1/models, /v1/chat/completions), answered by the
same dispatcher as the MCP tools. See docs/openai.md."""
