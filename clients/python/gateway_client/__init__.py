"""Client library of the push gateway (PROTOCOL.md section 8).

- ``GatewayClient``: the WebSocket client (reconnect, resume, dedupe, ack, token refresh).
- ``GatewayAPI``: the REST client for business systems (retries without pushing twice).
"""

from gateway_client.api import GatewayAPI, GatewayAPIError, Webhooks
from gateway_client.client import GatewayClient, GatewayClosed, Push
from gateway_client.policy import Backoff, CloseCode, RecentIds, refresh_delay_s, token_exp

__all__ = [
    "Backoff",
    "CloseCode",
    "GatewayAPI",
    "GatewayAPIError",
    "GatewayClient",
    "GatewayClosed",
    "Push",
    "RecentIds",
    "Webhooks",
    "refresh_delay_s",
    "token_exp",
]
__version__ = "0.1.0"
