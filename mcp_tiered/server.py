"""The MCP face: one `generate_<tier>` tool per tier, on the official SDK's MCPServer."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated, Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, TextContent, ToolAnnotations

import structlog

from . import __version__
from .dispatch import Dispatcher, GenerateResult, input_schema
from .errors import TieredError
from .tiers import Tier, TierRegistry

log = structlog.get_logger(__name__)

INSTRUCTIONS = (
    "Local language models in tiers of increasing size. Each generate_<tier> tool answers a prompt with "
    "that tier's model; prefer the smallest tier whose description fits the task."
)


def _tool_for(tier: Tier, dispatcher: Dispatcher) -> Tool:
    async def generate(
        prompt: str = "",
        system: str = "",
        max_tokens: Any = None,
        temperature: Any = None,
        stop: Any = None,
        escalate: Any = None,
        local_only: Any = None,
    ) -> Annotated[CallToolResult, GenerateResult]:
        try:
            result = await dispatcher.generate(
                tier.name, prompt, system, max_tokens=max_tokens, temperature=temperature, stop=stop,
                escalate=escalate, local_only=local_only,
            )
        except TieredError as exc:
            raise ToolError(str(exc)) from exc
        return CallToolResult(
            content=[TextContent(type="text", text=result.text)],
            structured_content=result.model_dump(mode="json", by_alias=True),
        )

    tool = Tool.from_function(
        generate,
        name=tier.tool_name,
        title=f"Generate with the {tier.name} tier",
        description=tier.description,
        annotations=ToolAnnotations(
            title=f"{tier.name} tier ({tier.backend.model_name})",
            read_only_hint=True,
            destructive_hint=False,
            idempotent_hint=False,
            open_world_hint=not tier.backend.is_local,
        ),
        structured_output=True,
    )
    # The function takes its arguments loosely so that dispatch.build_request can reject a
    # bad value in one sentence; the schema clients see is the precise one. (prompt and system
    # stay `str`: the SDK would otherwise JSON-decode a prompt such as '{"a": 1}'.)
    tool.parameters = input_schema(tier)
    return tool


def build_server(tiers: TierRegistry) -> MCPServer:
    dispatcher = Dispatcher(tiers)
    if tiers.cloud_disabled:
        log.warning("cloud_disabled", reason=tiers.cloud_disabled)

    @asynccontextmanager
    async def lifespan(_: MCPServer) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await tiers.aclose()

    return MCPServer(
        name="mcp-tiered",
        title="mcp-tiered",
        version=__version__,
        instructions=INSTRUCTIONS,
        tools=[_tool_for(tier, dispatcher) for tier in tiers],
        lifespan=lifespan,
    )
