"""mcp-tiered: tiered local GGUF models as MCP tools, in front of the cloud."""

__version__ = "0.1.0"
