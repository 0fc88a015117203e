"""The MCP face: one `generate_<tier>` tool per tier, on the official SDK's MCPServer."""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import anyio
import mcp_types as types
from mcp.server.mcpserver import Context, MCPServer
from mcp.shared.exceptions import MCPDeprecationWarning
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.server.mcpserver.tools import Tool
from mcp_types import CallToolResult, TextContent, ToolAnnotations
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

import structlog

from .. import __version__
from ..auth import scopes
from ..auth.http import principal_now
from ..auth.limits import TokenQuota
from ..openai_face.routes import add_routes as add_openai_routes
from ..backends.pool import CallControl
from ..calls.cache import ResponseCache
from ..compat.mcp_sdk import lowlevel_server
from ..config.schema import ServerConfig
from ..accounting.costs import CostModel
from ..calls import routing
from ..calls.arguments import Bounds, GenerateArguments, input_schema, tier_bounds
from ..calls.dispatch import ROUTER_TOOL, Dispatcher
from ..calls.results import GenerateResult
from ..errors import TieredError
from ..accounting.ledger import Ledger
from .metrics import Metrics
from ..calls.tiers import Tier, TierRegistry
from ..config.explain import describe_value

log = structlog.get_logger(__name__)

INSTRUCTIONS = (
    "Local language models in tiers of increasing size. `generate` picks the tier for a prompt and escalates "
    "when an answer is not good enough; each generate_<tier> tool answers with that tier's model (and "
    "escalates from it), for when you know which tier the task needs."
)


async def _report_progress(ctx: Context, control: CallControl, interval_s: float) -> None:
    """Progress notifications from acceptance to the answer, every `interval_s`; a no-op unless the
    client sent a progressToken. `progress` counts the reports, so it strictly increases."""
    count = 0
    while True:
        count += 1
        await ctx.report_progress(count, None, control.describe())
        await anyio.sleep(interval_s)


class _GenerateTool(Tool):
    """`prompt` and `system` are declared `str` (so that the SDK never JSON-decodes them); a value of
    another type gets one sentence here instead of the SDK's validation report."""

    async def run(self, arguments: dict[str, Any], context: Context, convert_result: bool = False) -> Any:
        for name in ("prompt", "system"):
            if name in arguments and not isinstance(arguments[name], str):
                raise ToolError(f"Error executing tool {self.name}: {name}: must be a string, got "
                                f"{describe_value(arguments[name])}")
        return await super().run(arguments, context, convert_result)


CLIENT_NAME_CHARS = 64


def client_name(ctx: Context) -> str | None:
    """The MCP client's `clientInfo` name (cut to 64 characters), or None when it gave none."""
    try:
        params = ctx.session.client_params
    except Exception:  # no session (a direct call in tests)
        return None
    info = getattr(params, "client_info", None)
    name = getattr(info, "name", None)
    return name[:CLIENT_NAME_CHARS] if isinstance(name, str) and name else None


def _tool_signature() -> inspect.Signature:
    """The tool function's parameters: GenerateArguments' fields, taken loosely (`Any`, default None) so that
    arguments.parse_arguments can reject a bad value in one sentence; prompt and system stay `str`, which
    the SDK checks first (else it would JSON-decode a prompt such as '{"a": 1}')."""
    loose = [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=str if name in ("prompt", "system")
                               else Any, default="" if name in ("prompt", "system") else None)
             for name in GenerateArguments.model_fields]
    context = inspect.Parameter("ctx", inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=Context)
    return inspect.Signature([context, *loose], return_annotation=Annotated[CallToolResult, GenerateResult])


_TOOL_SIGNATURE = _tool_signature()


def _generation_tool(name: str, title: str, description: str, annotations: ToolAnnotations, bounds: Bounds,
                     run: Callable[..., Awaitable[GenerateResult]], server: ServerConfig) -> Tool:
    """A tool taking GenerateArguments: `run(prompt, system, control, **options)` answers it, for the principal
    of the request (whose scopes the dispatcher checks)."""

    async def generate(ctx: Context, **arguments: Any) -> Annotated[CallToolResult, GenerateResult]:
        principal = principal_now()
        control = CallControl()
        failure: TieredError | None = None
        prompt, system = arguments.pop("prompt", ""), arguments.pop("system", "")
        arguments["client"] = client_name(ctx)
        arguments["principal"] = principal
        async with anyio.create_task_group() as progress:
            progress.start_soon(_report_progress, ctx, control, server.progress_interval_s)
            try:
                result = await run(prompt, system, control, **arguments)
            except TieredError as exc:  # raised here, not from the task group, which would wrap it
                failure = exc
            finally:
                progress.cancel_scope.cancel()
        if failure is not None:
            raise ToolError(str(failure)) from failure
        return CallToolResult(
            content=[TextContent(type="text", text=result.text)],
            structured_content=result.model_dump(mode="json", by_alias=True),
        )

    generate.__signature__ = _TOOL_SIGNATURE  # type: ignore[attr-defined]
    tool = _GenerateTool.from_function(generate, name=name, title=title, description=description,
                                       annotations=annotations, structured_output=True)
    tool.parameters = input_schema(bounds)  # the schema clients see: GenerateArguments' own, with the bounds
    return tool


def _tool_for(tier: Tier, dispatcher: Dispatcher, server: ServerConfig) -> Tool:
    return _generation_tool(
        tier.tool_name, f"Generate with the {tier.name} tier", tier.description,
        ToolAnnotations(title=f"{tier.name} tier ({tier.backend.model_name})", read_only_hint=True,
                        destructive_hint=False, idempotent_hint=False,
                        open_world_hint=tier.capabilities.prompt_leaves_machine),
        tier_bounds(tier, server.default_deadline_s), functools.partial(dispatcher.generate, tier.name), server)


def _router_tool(dispatcher: Dispatcher, server: ServerConfig) -> Tool:
    entries = dispatcher.entry_tiers()
    names = [t.name for t in entries]
    chain = dispatcher.tiers.chain(names[0]) if names else []
    description = (
        f"Answers a prompt with the tier that suits it, so you do not have to choose: short lookups, rewrites and "
        f"yes/no questions start on the smallest tier ({names[0] if names else 'none'}); code, arithmetic, several "
        f"steps, long prompts or long answers (max_tokens ≥ {routing.LONG_ANSWER_TOKENS}) start one tier up; a deadline "
        f"under {routing.TIGHT_DEADLINE_S:g} s starts on the fastest. From there the call escalates as usual "
        f"({' → '.join(chain)}) when an answer is not good enough. The result's `tier` and `routing` say where it "
        f"started and why. Call a generate_<tier> tool instead to fix the tier yourself (for instance "
        f"escalate=never on a small tier to keep a call cheap)."
    )
    bounds = Bounds(max((t.max_tokens for t in entries), default=1), "that of the tier it starts at",
                    server.default_deadline_s)
    return _generation_tool(
        ROUTER_TOOL, "Generate with the tier that suits the prompt", description,
        ToolAnnotations(title="generate (picks the tier)", read_only_hint=True, destructive_hint=False,
                        idempotent_hint=False, open_world_hint=any(
                            t.capabilities.prompt_leaves_machine for t in dispatcher.tiers)),
        bounds, dispatcher.generate_routed, server)


REPORT_URI = "tiered://report"
REPORT_PAGE = "/report"
REPORT_REFRESH_S = 10


def build_server(tiers: TierRegistry, server: ServerConfig | None = None, metrics: Metrics | None = None,
                 cache: ResponseCache[GenerateResult] | None = None, ledger: Ledger | None = None,
                 costs: CostModel | None = None, quota: TokenQuota | None = None) -> MCPServer:
    server = server or ServerConfig()
    dispatcher = Dispatcher(tiers, server.default_deadline_s, metrics, cache, ledger, costs, quota)
    for name, left_out in tiers.unavailable.items():
        log.warning("tier_unavailable", tier=name, reason=left_out.reason)

    mcp = MCPServer(
        name="mcp-tiered",
        title="mcp-tiered",
        version=__version__,
        instructions=INSTRUCTIONS,
        tools=[*([_router_tool(dispatcher, server)] if len(dispatcher.entry_tiers()) > 1 else []),
               *(_tool_for(tier, dispatcher, server) for tier in tiers)],
    )
    _accept_log_level(mcp)
    add_openai_routes(mcp, dispatcher)
    if ledger is not None:
        _add_report_resource(mcp, ledger, costs or CostModel())
    return mcp


def _add_report_resource(mcp: MCPServer, ledger: Ledger, costs: CostModel) -> None:
    from ..offline import report

    @mcp.resource(REPORT_URI, name="savings-report", title="Savings report",
                  description="Calls, tokens, energy and cost per tier from the ledger, the cloud-only "
                  "equivalent, savings, monthly projection, break-even and 12-month ROI (the same JSON as "
                  "`mcp-tiered report --format json`).", mime_type="application/json")
    async def savings_report() -> str:
        principal = principal_now()
        if not principal.grants.report:
            log.warning("resource_refused", resource=REPORT_URI, principal=principal.name, reason="scope")
            raise ResourceError(f"{principal.name} may not read {REPORT_URI}: it needs the scope {scopes.REPORT}")
        await anyio.to_thread.run_sync(ledger.flush, 10.0)  # include the calls answered just now
        return await anyio.to_thread.run_sync(report.report_json, ledger.source, costs, None)

    @mcp.custom_route(REPORT_PAGE, methods=["GET"])
    async def report_page(_: Request) -> Response:
        """The savings report as a page that reloads itself (HTTP transports; the same token as /metrics)."""
        from ..offline import report_render

        await anyio.to_thread.run_sync(ledger.flush, 10.0)
        data = await anyio.to_thread.run_sync(report.report_data, ledger.source, costs, None)
        return HTMLResponse(report_render.render_html(data, refresh_s=REPORT_REFRESH_S))


def _accept_log_level(mcp: MCPServer) -> None:
    """Answer `logging/setLevel` (clients on protocol versions up to 2025-11-25 send it). The server sends
    no log notifications to clients (its log is JSON on stderr), so there is nothing to filter."""

    async def set_level(ctx: Any, params: types.SetLevelRequestParams) -> types.EmptyResult:
        log.info("client_log_level", level=params.level)
        return types.EmptyResult()

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MCPDeprecationWarning)
        # MCPServer has no public hook for this deprecated method; the low-level server does.
        lowlevel_server(mcp).add_request_handler("logging/setLevel", types.SetLevelRequestParams, set_level)
