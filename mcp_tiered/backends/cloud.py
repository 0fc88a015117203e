"""The cloud tier: Claude through the official anthropic SDK (its retries, backoff and retry-after)."""

from __future__ import annotations

import time

import anthropic

from ..config import CloudConfig
from ..errors import BackendError
from .base import Backend, Completion, GenerationRequest
from .pool import CallControl


class CloudBackend(Backend):
    is_local = False

    def __init__(self, config: CloudConfig, api_key: str):
        self.config = config
        self.model_name = config.model
        self._client = anthropic.AsyncAnthropic(
            api_key=api_key,
            base_url=config.base_url,
            timeout=config.timeout_s,
            max_retries=config.max_retries,
        )

    async def generate(self, request: GenerationRequest, control: CallControl | None = None) -> Completion:
        if control is None:
            return await self._create(request)
        control.tier, control.phase = "cloud", "waiting for the cloud"
        started = time.perf_counter()
        try:
            return await self._create(request)
        finally:
            control.generation_s = time.perf_counter() - started

    async def _create(self, request: GenerationRequest) -> Completion:
        kwargs = {"system": request.system} if request.system else {}
        if request.stop:
            kwargs["stop_sequences"] = list(request.stop)
        try:
            message = await self._client.messages.create(
                model=self.config.model,
                max_tokens=request.max_tokens,
                messages=[{"role": "user", "content": request.prompt}],
                **kwargs,
            )
            text = "".join(block.text for block in message.content if block.type == "text")
            usage = message.usage
            finish = "length" if message.stop_reason == "max_tokens" else "stop"
            return Completion(text.strip(), finish, usage.input_tokens, usage.output_tokens)
        except anthropic.AuthenticationError as exc:
            raise BackendError(
                f"cloud: the Anthropic API rejected the API key (HTTP 401); check ${self.config.api_key_env}"
            ) from exc
        except anthropic.PermissionDeniedError as exc:
            raise BackendError(f"cloud: the API key may not use model {self.config.model} (HTTP 403)") from exc
        except anthropic.RateLimitError as exc:
            raise BackendError(f"cloud: rate limited by the Anthropic API (HTTP 429) after "
                               f"{self.config.max_retries} retries; try again later") from exc
        except anthropic.APITimeoutError as exc:
            raise BackendError(f"cloud: no answer from the Anthropic API within {self.config.timeout_s:g} s "
                               f"(cloud.timeout_s), {self.config.max_retries} retries included") from exc
        except anthropic.APIConnectionError as exc:
            raise BackendError(f"cloud: cannot reach the Anthropic API ({exc})") from exc
        except anthropic.APIStatusError as exc:
            raise BackendError(f"cloud: the Anthropic API answered HTTP {exc.status_code} "
                               f"after {self.config.max_retries} retries ({_error_message(exc)})") from exc
        except (anthropic.APIResponseValidationError, ValueError) as exc:
            raise BackendError("cloud: the Anthropic API sent a response that is not a valid Messages API "
                               "answer") from exc

    async def aclose(self) -> None:
        await self._client.close()


def _error_message(exc: anthropic.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        return str(body["error"].get("message", exc.message))
    return exc.message
