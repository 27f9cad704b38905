"""The /api/v1/admin controllers of the admin listener."""

from __future__ import annotations

from typing import Any

from litestar import Router


def admin_routes() -> list[Any]:
    """One router for every admin controller, with the body hook that also allows optional bodies."""
    from api.admin.audit import AdminAuditController
    from api.admin.auth import AdminAuthController
    from api.admin.common import admin_body
    from api.admin.mutations import AdminUserActionsController
    from api.admin.sessions import AdminSessionsController
    from api.admin.users import AdminUsersController

    controllers = [
        AdminAuthController,
        AdminUsersController,
        AdminUserActionsController,
        AdminSessionsController,
        AdminAuditController,
    ]
    return [Router(path="/api/v1/admin", route_handlers=controllers, before_request=admin_body)]
