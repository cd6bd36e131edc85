"""The Hugging Face Hub as featx needs it: repo metadata (exists, gated, model_type) through
``huggingface_hub.HfApi``, network failures mapped to one transient error with the fix, and the
token downloads will use. ``huggingface_hub`` is imported only inside functions."""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from featx.errors import TransientError, UsageError
from featx import settings
from featx.settings import HF_TOKEN_ENV

DEFAULT_ENDPOINT = "https://huggingface.co"


class HubInfo(NamedTuple):
    """What the hub says about one repo: does it exist, is it gated, its config's model_type."""

    exists: bool
    gated: bool
    model_type: str | None


class Hub(Protocol):
    """The hub as ``check_models`` needs it. Raise ``TransientError`` when it cannot be reached."""

    def model_info(
        self, repo_id: str, revision: str | None, token: str | None
    ) -> tuple[bool, bool, str | None]: ...


def hub_endpoint() -> str:
    return settings.hf_endpoint() or DEFAULT_ENDPOINT


def one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def unreachable(exc: BaseException, endpoint: str | None = None) -> TransientError:
    """The one-line error for a hub that cannot be reached."""
    return TransientError(
        f"cannot reach the Hugging Face Hub at {endpoint or hub_endpoint()} "
        f"({type(exc).__name__}: {one_line(exc)}); check the network and HF_ENDPOINT, "
        "or run `featx models --check` where the hub is reachable"
    )


_NETWORK_ERROR_NAMES = {
    "ConnectError",
    "ConnectTimeout",
    "ConnectionError",
    "NetworkError",
    "OfflineModeIsEnabled",
    "PoolTimeout",
    "ProxyError",
    "ReadError",
    "ReadTimeout",
    "RemoteProtocolError",
    "SSLError",
    "Timeout",
    "TimeoutException",
    "TransportError",
    "WriteTimeout",
}


def is_network_error(exc: BaseException) -> bool:
    """Connection, DNS, TLS and timeout failures of any HTTP stack (httpx, requests, stdlib)."""
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return True
    return any(cls.__name__ in _NETWORK_ERROR_NAMES for cls in type(exc).__mro__)


class HubAdapter:
    """``Hub`` backed by ``huggingface_hub.HfApi`` (metadata requests only)."""

    def __init__(self, endpoint: str | None = None, timeout: float = 15.0, api: Any = None):
        self.endpoint = endpoint or hub_endpoint()
        self.timeout = timeout
        if api is None:
            from huggingface_hub import HfApi

            api = HfApi(endpoint=self.endpoint)
        self._api = api

    def model_info(
        self, repo_id: str, revision: str | None = None, token: str | None = None
    ) -> HubInfo:
        from huggingface_hub.errors import (
            DisabledRepoError,
            GatedRepoError,
            HfHubHTTPError,
            HFValidationError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        try:
            info = self._api.model_info(
                repo_id, revision=revision, token=token, timeout=self.timeout, expand=["config", "gated"]
            )
        except GatedRepoError:  # a subclass of RepositoryNotFoundError: test it first
            return HubInfo(True, True, None)
        except (RepositoryNotFoundError, RevisionNotFoundError, DisabledRepoError, HFValidationError):
            return HubInfo(False, False, None)
        except HfHubHTTPError as e:  # also an OSError: before the network test
            status = getattr(getattr(e, "response", None), "status_code", None)
            if status in (401, 403):
                raise UsageError(
                    f"the Hugging Face Hub rejected the token ({status}) for {repo_id}; "
                    f"check {HF_TOKEN_ENV} (`hf auth whoami`) or unset it"
                ) from e
            if status == 404:
                return HubInfo(False, False, None)
            raise unreachable(e, self.endpoint) from e  # 429, 5xx: retry later
        except Exception as e:
            if is_network_error(e):
                raise unreachable(e, self.endpoint) from e
            raise
        config = getattr(info, "config", None) or {}
        gated = getattr(info, "gated", False)
        return HubInfo(True, bool(gated), config.get("model_type"))


def default_token() -> str | None:
    """``HF_TOKEN``, else the token ``hf auth login`` saved (what downloads will use)."""
    token = settings.hf_token()
    if token:
        return token
    try:
        from huggingface_hub import get_token
    except ImportError:
        return None
    return get_token()
