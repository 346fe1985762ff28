"""One router per resource; :data:`routers` in the order the app includes them."""

from . import edge, feedback, gallery, models, ops, pilot, search

routers = [ops.router, search.router, models.router, edge.router, pilot.router, gallery.router, feedback.router]

__all__ = ["routers"]
