"""One router per resource; :data:`routers` in the order the app includes them."""

from . import admin, edge, feedback, gallery, models, ops, pilot, review, search

routers = [
    ops.router,
    search.router,
    models.router,
    edge.router,
    pilot.router,
    gallery.router,
    feedback.router,
    review.router,
    admin.router,
]

__all__ = ["routers"]
