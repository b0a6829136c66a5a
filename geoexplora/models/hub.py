"""timm's pretrained weights (``weights: timm``) without a long wait when the Hugging Face Hub is out of reach.

huggingface_hub retries a download it cannot make for tens of seconds before giving up (issue 10: 45 s,
then a ``LocalEntryNotFoundError`` traceback). Here the Hub endpoint is tried once with a short timeout;
when it cannot be reached (or ``HF_HUB_OFFLINE`` is set) the weights are read from the local cache only,
and when they are not there either the user gets one line saying so.
"""

from __future__ import annotations

import contextlib
import os
import socket
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import torch

from geoexplora.errors import GeoExploraError

CONNECT_TIMEOUT_S = 3.0


def hub_endpoint() -> str:
    from huggingface_hub import constants

    return os.environ.get("HF_ENDPOINT") or constants.ENDPOINT


def hub_reachable(endpoint: str, timeout: float = CONNECT_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``endpoint``'s host opens within ``timeout`` seconds."""
    url = urlparse(endpoint)
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def _offline(enabled: bool) -> Iterator[None]:
    """huggingface_hub in offline mode (cache only) for the block when ``enabled``."""
    from huggingface_hub import constants

    saved = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = saved or enabled
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = saved


def timm_pretrained_state_dict(name: str, **kwargs: Any) -> dict[str, torch.Tensor]:
    """``timm.create_model(name, pretrained=True, **kwargs).state_dict()``, from the cache when offline.

    Raises:
        GeoExploraError: one line when the weights are neither cached nor downloadable.
    """
    import timm
    from huggingface_hub import constants

    endpoint = hub_endpoint()
    offline = bool(constants.HF_HUB_OFFLINE) or not hub_reachable(endpoint)
    try:
        with _offline(offline):
            return timm.create_model(name, pretrained=True, **kwargs).state_dict()
    except (OSError, RuntimeError, ValueError) as err:
        reason = ("the network cannot reach " + endpoint) if offline else f"the download failed ({type(err).__name__})"
        raise GeoExploraError(
            f"weights: timm: {name}'s pretrained weights are not in the Hugging Face cache and {reason}; "
            "fetch them once with network access, or give a local .safetensors file as weights"
        ) from None


def check_timm_weights(name: str) -> None:
    """Fail in a second, before anything is built, when ``name``'s pretrained weights can be neither read
    from the cache nor downloaded (the Hub out of reach); a no-op when the Hub answers."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE or not hub_reachable(hub_endpoint()):
        timm_pretrained_state_dict(name)
