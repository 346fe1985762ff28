"""The HTTP API: one router per resource (``routes/``) and the dependencies they share (``deps``)."""
