"""The MCP face and its transports: tools, stdio, HTTP with its guard, metrics, heap trimming."""
