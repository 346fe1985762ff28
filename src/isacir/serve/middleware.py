"""ASGI middleware and exception handlers: upload cap, admission control, metrics, error bodies."""

from __future__ import annotations

import time

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import IsacirError
from .metrics import ServiceMetrics


class UploadTooLarge(Exception):
    pass


class UploadCap:
    """ASGI middleware: 413 for bodies over the cap, by Content-Length or while streaming."""

    def __init__(self, app, limit: int, metrics: ServiceMetrics):
        self.app, self.limit, self.metrics = app, limit, metrics

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._reject(scope, send)
        seen = 0
        started = over = False

        async def counted():
            nonlocal seen, over
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.limit:
                    over = True
                    raise UploadTooLarge()
            return message

        async def guarded_send(message):
            # A body parser may catch UploadTooLarge and answer 400 itself (Starlette's form parser
            # does, for chunked bodies): once the cap is crossed, its response is replaced by ours.
            nonlocal started
            if over:
                if not started and message["type"] == "http.response.start":
                    started = True
                    await self._reject(scope, send)
                return
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, guarded_send)
        except Exception:
            if not over:
                raise
            if not started:
                await self._reject(scope, send)

    async def _reject(self, scope, send):
        # never the raw path: a client must not be able to mint label values
        self.metrics.observe("(over upload cap)", scope.get("method", "?"), 413, 0.0)
        response = JSONResponse(
            {"detail": f"request body exceeds the {self.limit:,}-byte upload cap", "code": "too_large"}, status_code=413
        )
        await response({"type": "http"}, _empty_receive, send)


class Admission:
    """ASGI middleware: at most ``limit`` API requests in flight; beyond that 503 with Retry-After.

    A saturated server that queues without limit answers everyone late; refusing at once lets a
    load balancer or a client retry elsewhere. Probes, the UI and metrics are never refused.
    """

    def __init__(self, app, limit: int, metrics: ServiceMetrics):
        self.app, self.limit, self.metrics = app, limit, metrics
        self.inflight = 0  # touched only on the event loop's thread

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope.get("path", "").startswith("/v1/"):
            return await self.app(scope, receive, send)
        if self.inflight >= self.limit:
            self.metrics.observe("(overloaded)", scope.get("method", "?"), 503, 0.0)
            response = JSONResponse(
                {"detail": f"the server is answering {self.limit} requests; retry shortly", "code": "overloaded"},
                status_code=503,
                headers={"Retry-After": "1"},
            )
            return await response(scope, receive, send)
        self.inflight += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.inflight -= 1


async def _empty_receive():
    return {"type": "http.request", "body": b"", "more_body": False}


def install_handlers(app: FastAPI, metrics: ServiceMetrics) -> None:
    """Every error answers ``{"detail", "code"}``, and every request is measured."""

    @app.middleware("http")
    async def observe(request: Request, call_next):
        t0 = time.perf_counter()
        status = 500
        try:
            response = await call_next(request)
            status = response.status_code
            return response
        finally:
            route = request.scope.get("route")
            metrics.observe(getattr(route, "path", "unmatched"), request.method, status, time.perf_counter() - t0)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        headers = exc.headers
        if exc.status_code == 405:
            # Starlette names the methods of the first route whose path matched; a path served by
            # several routes (GET and DELETE /v1/gallery/{id}) allows every one of their methods
            headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
        if isinstance(exc.detail, dict):
            body = exc.detail
        else:  # the framework's own: unknown route (404), wrong method (405)
            body = {
                "detail": str(exc.detail),
                "code": {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "error"),
            }
        return JSONResponse(body, status_code=exc.status_code, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError):
        problems = [
            {"loc": [str(x) for x in e.get("loc", ())], "msg": str(e.get("msg", "")), "type": str(e.get("type", ""))}
            for e in exc.errors()
        ]
        summary = "; ".join(f"{'.'.join(p['loc'][1:]) or p['loc'][0]}: {p['msg']}" for p in problems[:5])
        return JSONResponse(
            {"detail": f"invalid request: {summary}", "code": "validation", "errors": problems}, status_code=422
        )

    @app.exception_handler(IsacirError)
    async def isacir_error(request: Request, exc: IsacirError):
        return JSONResponse({"detail": str(exc), "code": type(exc).__name__}, status_code=422)


def install_limits(app: FastAPI, metrics: ServiceMetrics, max_upload_bytes: int, max_inflight: int) -> None:
    """Outermost: requests beyond ``max_inflight`` get 503 and uploads over the cap 413, before
    any route (or CORS) runs."""
    app.add_middleware(UploadCap, limit=max_upload_bytes, metrics=metrics)
    app.add_middleware(Admission, limit=max_inflight, metrics=metrics)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route of the app answers on this request's path (the app records its
    routes' paths and methods in ``app.state.route_methods`` when it includes them)."""
    path = request.url.path
    methods: set[str] = set()
    for regex, route_methods in getattr(request.app.state, "route_methods", ()):
        if regex.match(path):
            methods |= set(route_methods)
    return sorted(methods)
