"""gRPC server reflection, an admin surface: it lists every service and message of the API.

With authentication on, only a caller with the `admin` role may use it; health checks
(grpc.health.v1) stay open, for probes that carry no credentials.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any

import grpc
from grpc_reflection.v1alpha import reflection
from grpc_reflection.v1alpha import reflection_pb2_grpc as reflection_grpc

from server.api.auth import PermissionDenied, Unauthenticated
from server.api.gate import Gate
from server.api.servicers import authorization
from server.api.status import status_of

METHOD = "ServerReflectionInfo"


class _GuardedReflection(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    def __init__(self, service_names: Iterable[str], gate: Gate) -> None:
        super().__init__(tuple(service_names))
        self._gate = gate

    async def ServerReflectionInfo(
        self, request_iterator: Any, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[Any]:
        if self._gate.authenticates:
            try:
                self._gate.admit(METHOD, authorization(context))
            except (Unauthenticated, PermissionDenied) as err:
                status = status_of(err)
                context.set_code(grpc.StatusCode[status.code.value])
                context.set_details(status.message)
                return
        async for response in super().ServerReflectionInfo(request_iterator, context):
            yield response


def add_reflection(server: grpc.aio.Server, gate: Gate, service_names: Iterable[str]) -> None:
    """Reflection over `service_names` (and itself), for admins when authentication is on."""
    names = (*service_names, reflection.SERVICE_NAME)
    reflection_grpc.add_ServerReflectionServicer_to_server(_GuardedReflection(names, gate), server)
