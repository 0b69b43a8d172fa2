"""The OpenAI-compatible gateway in front of Triton: `create_app(GatewaySettings(...))`."""

from serving.gateway.app import create_app, server_config
from serving.gateway.settings import GatewaySettings, SettingsError

__all__ = ["GatewaySettings", "SettingsError", "create_app", "server_config"]
