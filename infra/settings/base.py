"""The base of every settings block: immutable, camelCase keys in YAML, unknown keys rejected."""

from __future__ import annotations

import ipaddress

from pydantic import BaseModel, ConfigDict
from pydantic.alias_generators import to_camel


class Settings(BaseModel):
    """Base for all settings blocks."""

    model_config = ConfigDict(frozen=True, extra="forbid", alias_generator=to_camel, populate_by_name=True)


def check_cidr(value: str) -> str:
    """The CIDR in canonical form; a clear error naming the expected format otherwise."""
    try:
        return str(ipaddress.ip_network(value, strict=True))
    except ValueError as exc:
        raise ValueError(f"must be a CIDR block such as 10.0.0.0/16 or 203.0.113.7/32 ({exc})") from None
