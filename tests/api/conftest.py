"""The API tests run against real gateways: the integration fixtures."""

from tests.integration.conftest import gateway, linked_gateway, make_gateway

__all__ = ["gateway", "linked_gateway", "make_gateway"]
