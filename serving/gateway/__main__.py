"""Run the gateway from environment settings (the container's command):

    python -m serving.gateway [--host 0.0.0.0] [--port 8080]

Settings come from `TRITONFORM_GATEWAY_<FIELD>` variables and `TRITONFORM_API_KEYS`
(see serving/gateway/settings.py); a wrong or missing setting exits 2 with one clear line.
"""

from __future__ import annotations

import argparse
import sys

import uvicorn

from serving.gateway import GatewaySettings, SettingsError, create_app, server_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m serving.gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    parser.add_argument("--port", type=int, default=8080, help="port to listen on (default 8080)")
    args = parser.parse_args(argv)
    try:
        settings = GatewaySettings.from_env()
        app = create_app(settings)
    except SettingsError as exc:
        print(f"gateway: {exc}", file=sys.stderr)
        return 2
    # Proxy headers: the edge (API gateway, load balancer) sits in front; access logs are ours (JSON).
    uvicorn.Server(server_config(app, settings, args.host, args.port, proxy_headers=True)).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
