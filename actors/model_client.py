"""The model an agent actor runs: simulated, or an OpenAI-compatible endpoint's client."""

from __future__ import annotations

from agents import Model

from actors.sim_model import SimulatedModel
from config import Settings


def make_model(settings: Settings) -> Model:
    """The configured model: simulated by default, or any OpenAI-compatible endpoint."""
    if settings.model == "simulated":
        return SimulatedModel(
            ttft_s=settings.sim_ttft_ms / 1000,
            tokens_per_s=settings.sim_tokens_per_s,
            reply_tokens=settings.sim_reply_tokens,
        )
    import httpx2 as httpx  # the HTTP library the openai client is built on
    from agents import OpenAIChatCompletionsModel
    from openai import AsyncOpenAI, DefaultAsyncHttpxClient

    class _ClosingChatCompletionsModel(OpenAIChatCompletionsModel):
        """Closes its HTTP client with the model."""

        async def close(self) -> None:
            await client.close()

    # Endpoints such as a local vLLM or Ollama take any key; the client insists on one.
    api_key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else "none"
    # At most `openai_max_concurrency` connections, each held by one request (a stream
    # until it ends); requests beyond wait for one (no pool timeout) instead of flooding.
    cap = settings.openai_max_concurrency
    limits = httpx.Limits(max_connections=cap, max_keepalive_connections=cap)
    client = AsyncOpenAI(
        base_url=settings.openai_base_url,
        api_key=api_key,
        max_retries=settings.openai_max_retries,
        timeout=httpx.Timeout(settings.openai_timeout_s, pool=None),
        http_client=DefaultAsyncHttpxClient(limits=limits),
    )
    return _ClosingChatCompletionsModel(model=settings.openai_model or "", openai_client=client)
