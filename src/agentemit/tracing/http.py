"""``HttpTracer``: every HTTP request an agent makes inside ``trace_context`` becomes a span.

Agent Lightning's HttpTracer records an agent's HTTP traffic (LLM calls, tool APIs) as spans. Ours
patches ``httpx.Client.send`` / ``httpx.AsyncClient.send`` and the stdlib's
``http.client.HTTPConnection`` (which ``urllib.request`` uses) with wrappers that start an
OpenTelemetry span through the SDK tracer, so the rollout's span processor collects it, parented
under whatever span is current, like any third-party span.

Spans are named ``HTTP <METHOD>`` and carry OpenTelemetry HTTP client attributes: ``url.full``
(query values and userinfo masked: secrets are never recorded, not only redacted later),
``http.request.method``, ``server.address``, ``server.port``, ``http.response.status_code`` and the
body sizes when a ``Content-Length`` gives them. A 4xx/5xx answer or an exception sets status ERROR;
the exception is recorded and re-raised unchanged.

Cost outside a rollout is one contextvar read per request. The pipeline's own exports are never
recorded: they run with OpenTelemetry's suppress-instrumentation key set and no active rollout, and
:class:`HttpTracer` pauses recording while it talks to its store itself (sequence ids, flushes).

Patches are shared by every HttpTracer in the process and reference-counted per library: the first
``init()`` installs them, the last ``teardown()`` restores the original methods exactly.
"""

from __future__ import annotations

import contextlib
import http.client
import logging
import threading
import traceback
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace

from agentemit.pipeline.pipeline import FlushReport
from agentemit.pipeline.redact import MASK
from agentemit.stores.base import SpanStore
from agentemit.tracing.context import CURRENT, RolloutContext
from agentemit.tracing.otel import OtelTracer, install_provider

logger = logging.getLogger("agentemit.tracing.http")

HTTPX: Final = "httpx"
HTTP_CLIENT: Final = "http.client"
LIBRARIES: Final = (HTTPX, HTTP_CLIENT)

_SUPPRESS_KEY: Final = otel_context._SUPPRESS_INSTRUMENTATION_KEY
_PAUSED: ContextVar[bool] = ContextVar("agentemit_http_paused", default=False)
_PENDING_ATTR: Final = "_agentemit_http_span"  # the span of an http.client request awaiting its response


@contextlib.contextmanager
def http_recording_paused() -> Iterator[None]:
    """Inside this block, this thread's (or task's) HTTP requests are not recorded."""
    token = _PAUSED.set(True)
    try:
        yield
    finally:
        _PAUSED.reset(token)


# --- attributes ---------------------------------------------------------------------------------


def redact_url(url: str) -> str:
    """``url`` with userinfo and every query value masked and the fragment dropped.

    Query keys are kept (they say what was asked, rarely who asked); a bare query item could be a
    token, so it is masked whole. The mask is the pipeline's, so its Redactor leaves it as is.
    """
    parts = urlsplit(url)
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        netloc = (f"{MASK}:{MASK}@" if ":" in userinfo else f"{MASK}@") + hostport
    query = "&".join(_mask_query_item(item) for item in parts.query.split("&")) if parts.query else ""
    return urlunsplit((parts.scheme, netloc, parts.path, query, ""))


def _mask_query_item(item: str) -> str:
    key, sep, _ = item.partition("=")
    return f"{key}={MASK}" if sep else (item and MASK)


def _content_length(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        size = int(value)
    except ValueError:
        return None
    return size if size >= 0 else None


def _request_attributes(method: str, url: str, host: str | None, port: int | None) -> dict[str, Any]:
    attrs: dict[str, Any] = {"http.request.method": method, "url.full": redact_url(url)}
    scheme = urlsplit(url).scheme
    if scheme:
        attrs["url.scheme"] = scheme
    if host:
        attrs["server.address"] = host
    if port is not None:
        attrs["server.port"] = port
    return attrs


# --- span lifecycle (every step swallows its own errors: a request must never break) ---------


def _recording() -> bool:
    """True when a request made now should be recorded."""
    return CURRENT.get() is not None and not _PAUSED.get() and not otel_context.get_value(_SUPPRESS_KEY)


_otel_tracer: otel_trace.Tracer | None = None


def _tracer() -> otel_trace.Tracer:
    global _otel_tracer
    if _otel_tracer is None:
        _otel_tracer = install_provider().get_tracer("agentemit.http")
    return _otel_tracer


def _start(method: str, url: str, host: str | None, port: int | None, request_size: int | None) -> Any:
    """The started span, or None when recording failed (the request then runs unrecorded)."""
    try:
        attrs = _request_attributes(method, url, host, port)
        if request_size is not None:
            attrs["http.request.body.size"] = request_size
        return _tracer().start_span(f"HTTP {method}", kind=otel_trace.SpanKind.CLIENT, attributes=attrs)
    except Exception:
        logger.debug("http tracer: could not start a span for %s", method, exc_info=True)
        return None


def _succeed(span: Any, status: int | None, response_size: int | None, protocol: str | None) -> None:
    try:
        if status is not None:
            span.set_attribute("http.response.status_code", status)
        if response_size is not None:
            span.set_attribute("http.response.body.size", response_size)
        if protocol:
            span.set_attribute("network.protocol.version", protocol)
        if status is not None and status >= 400:  # a client span's error, per OpenTelemetry HTTP semantic conventions
            span.set_attribute("error.type", str(status))
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR))
        span.end()
    except Exception:
        logger.debug("http tracer: could not finish a span", exc_info=True)


def _abandon(span: Any) -> None:
    """End the span of a request whose response was never read (the connection was reused)."""
    with contextlib.suppress(Exception):
        span.end()


def _fail(span: Any, exc: BaseException, raw_url: str) -> None:
    """Record ``exc`` on the span, with the request's raw URL scrubbed from its text, and end it."""
    try:
        message = str(exc)
        stack = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
        if raw_url:
            safe_url = redact_url(raw_url)
            message, stack = message.replace(raw_url, safe_url), stack.replace(raw_url, safe_url)
        kind = type(exc)
        span.record_exception(exc, attributes={"exception.message": message, "exception.stacktrace": stack})
        span.set_attribute("error.type", f"{kind.__module__}.{kind.__qualname__}")
        span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, f"{kind.__name__}: {message}"))
        span.end()
    except Exception:
        logger.debug("http tracer: could not record a failed request", exc_info=True)


def _activate(span: Any) -> Any:
    """Make ``span`` current while the request runs (hooks and nested spans parent under it)."""
    try:
        return otel_context.attach(otel_trace.set_span_in_context(span))
    except Exception:
        logger.debug("http tracer: could not activate a span", exc_info=True)
        return None


def _deactivate(token: Any) -> None:
    if token is not None:
        with contextlib.suppress(Exception):
            otel_context.detach(token)


# --- httpx --------------------------------------------------------------------------------------


def _httpx_start(request: Any) -> Any:
    try:
        url = request.url
        return _start(
            str(request.method),
            str(url),
            url.host or None,
            url.port if url.port is not None else _default_port(url.scheme),
            _content_length(request.headers.get("content-length")),
        )
    except Exception:
        logger.debug("http tracer: could not read an httpx request", exc_info=True)
        return None


def _httpx_succeed(span: Any, response: Any) -> None:
    status: int | None
    try:
        status = int(response.status_code)
        size = _content_length(response.headers.get("content-length"))
        protocol = str(response.http_version).removeprefix("HTTP/")
    except Exception:
        logger.debug("http tracer: could not read an httpx response", exc_info=True)
        status, size, protocol = None, None, ""
    _succeed(span, status, size, protocol)


def _httpx_url(request: Any) -> str:
    try:
        return str(request.url)
    except Exception:
        return ""


def _wrap_httpx_send(original: Callable[..., Any]) -> Callable[..., Any]:
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if not (_patched[HTTPX] and _recording()):
            return original(self, request, *args, **kwargs)
        span = _httpx_start(request)
        if span is None:
            return original(self, request, *args, **kwargs)
        token = _activate(span)
        try:
            response = original(self, request, *args, **kwargs)
        except BaseException as exc:
            _deactivate(token)
            _fail(span, exc, _httpx_url(request))
            raise
        _deactivate(token)
        _httpx_succeed(span, response)
        return response

    send.__wrapped__ = original  # type: ignore[attr-defined]
    return send


def _wrap_httpx_asend(original: Callable[..., Any]) -> Callable[..., Any]:
    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        if not (_patched[HTTPX] and _recording()):
            return await original(self, request, *args, **kwargs)
        span = _httpx_start(request)
        if span is None:
            return await original(self, request, *args, **kwargs)
        token = _activate(span)
        try:
            response = await original(self, request, *args, **kwargs)
        except BaseException as exc:
            _deactivate(token)
            _fail(span, exc, _httpx_url(request))
            raise
        _deactivate(token)
        _httpx_succeed(span, response)
        return response

    send.__wrapped__ = original  # type: ignore[attr-defined]
    return send


# --- http.client (and urllib.request, which uses it) ---------------------------------------------
# ``request()`` starts the span and ``getresponse()`` ends it when the status line and headers have
# arrived, so the span covers connect, send and wait, not the reading of the body.


def _default_port(scheme: str) -> int | None:
    return {"http": 80, "https": 443}.get(scheme)


def _http_client_target(conn: http.client.HTTPConnection, url: str) -> tuple[str, str, int | None]:
    """(full URL, server host, server port) of a request on ``conn`` for ``url`` (a path or absolute)."""
    tunnel_host: str | None = getattr(conn, "_tunnel_host", None)
    host = tunnel_host or conn.host
    port: int | None = getattr(conn, "_tunnel_port", None) if tunnel_host else conn.port
    if url.startswith(("http://", "https://")):  # absolute form: sent through a proxy
        parts = urlsplit(url)
        return url, parts.hostname or host, parts.port or _default_port(parts.scheme)
    scheme = "https" if isinstance(conn, http.client.HTTPSConnection) else "http"
    netloc = f"[{host}]" if ":" in host else host
    if port is not None and port != _default_port(scheme):
        netloc = f"{netloc}:{port}"
    return f"{scheme}://{netloc}{url if url.startswith('/') else '/' + url}", host, port


def _body_size(body: Any, headers: Any) -> int | None:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return len(body)
    try:
        for key, value in dict(headers or {}).items():
            if str(key).lower() == "content-length":
                return _content_length(str(value))
    except Exception:
        return None
    return None


def _http_client_start(conn: http.client.HTTPConnection, method: str, url: str, body: Any, headers: Any) -> None:
    """Start the request's span and leave it on the connection for ``getresponse`` to end."""
    try:
        full_url, host, port = _http_client_target(conn, url)
        span = _start(str(method), full_url, host, port, _body_size(body, headers))
        if span is not None:
            conn.__dict__[_PENDING_ATTR] = (span, full_url)
    except Exception:
        logger.debug("http tracer: could not read an http.client request", exc_info=True)


def _wrap_request(original: Callable[..., Any]) -> Callable[..., Any]:
    def request(self: http.client.HTTPConnection, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        if _PENDING_ATTR in self.__dict__:  # a previous request's response was never read
            _abandon(self.__dict__.pop(_PENDING_ATTR)[0])
        if not (_patched[HTTP_CLIENT] and _recording()):
            return original(self, method, url, *args, **kwargs)
        body = args[0] if args else kwargs.get("body")
        headers = args[1] if len(args) > 1 else kwargs.get("headers")
        _http_client_start(self, method, url, body, headers)
        try:
            return original(self, method, url, *args, **kwargs)
        except BaseException as exc:
            pending = self.__dict__.pop(_PENDING_ATTR, None)
            if pending is not None:
                _fail(pending[0], exc, pending[1])
            raise

    request.__wrapped__ = original  # type: ignore[attr-defined]
    return request


def _wrap_getresponse(original: Callable[..., Any]) -> Callable[..., Any]:
    def getresponse(self: http.client.HTTPConnection) -> Any:
        status: int | None
        pending: tuple[Any, str] | None = self.__dict__.pop(_PENDING_ATTR, None)
        if pending is None:
            return original(self)
        span, url = pending
        try:
            response = original(self)
        except BaseException as exc:
            _fail(span, exc, url)
            raise
        try:
            version = {10: "1.0", 11: "1.1"}.get(response.version)
            size = _content_length(response.getheader("content-length"))
            status = int(response.status)
        except Exception:
            logger.debug("http tracer: could not read an http.client response", exc_info=True)
            version, size, status = None, None, None
        _succeed(span, status, size, version)
        return response

    getresponse.__wrapped__ = original  # type: ignore[attr-defined]
    return getresponse


# --- installation -------------------------------------------------------------------------------

_Patch = tuple[type, str, Callable[[Callable[..., Any]], Callable[..., Any]]]


def _patches(library: str) -> list[_Patch]:
    if library == HTTPX:
        import httpx

        return [(httpx.Client, "send", _wrap_httpx_send), (httpx.AsyncClient, "send", _wrap_httpx_asend)]
    if library == HTTP_CLIENT:
        return [
            (http.client.HTTPConnection, "request", _wrap_request),
            (http.client.HTTPConnection, "getresponse", _wrap_getresponse),
        ]
    raise ValueError(f"http tracer: unknown library {library!r}; expected one of {', '.join(LIBRARIES)}")


_LOCK = threading.Lock()
_refcounts: dict[str, int] = dict.fromkeys(LIBRARIES, 0)
_patched: dict[str, bool] = dict.fromkeys(LIBRARIES, False)  # read by the wrappers on every call
_originals: dict[str, list[tuple[type, str, Any, Any]]] = {}  # library -> (class, name, original, wrapper)


def install(library: str) -> None:
    """Patch ``library`` (``"httpx"`` or ``"http.client"``) unless already patched; counts a reference."""
    with _LOCK:
        patches = _patches(library)
        _refcounts[library] += 1
        if _refcounts[library] > 1:
            return
        installed = []
        for cls, name, wrap in patches:
            original = cls.__dict__[name]
            wrapper = wrap(original)
            setattr(cls, name, wrapper)
            installed.append((cls, name, original, wrapper))
        _originals[library] = installed
        _patched[library] = True


def uninstall(library: str) -> None:
    """Drop one reference; the last one restores the original methods.

    A method someone else wrapped after us is left in place (restoring ours would drop their
    wrapper); our wrapper inside it then passes every call straight through.
    """
    with _LOCK:
        if _refcounts.get(library, 0) == 0:
            return
        _refcounts[library] -= 1
        if _refcounts[library] > 0:
            return
        _patched[library] = False
        for cls, name, original, wrapper in _originals.pop(library, []):
            if cls.__dict__.get(name) is wrapper:
                setattr(cls, name, original)
            else:
                logger.debug("http tracer: %s.%s was re-wrapped by someone else; left in place", cls.__name__, name)


def installed(library: str) -> int:
    """How many HttpTracers currently hold ``library`` patched."""
    with _LOCK:
        return _refcounts.get(library, 0)


class HttpTracer(OtelTracer):
    """An :class:`OtelTracer` that also records the HTTP requests made inside ``trace_context``.

    Args:
        store: as for :class:`OtelTracer`.
        libraries: which clients to instrument: ``"httpx"`` (sync and async) and/or
            ``"http.client"`` (also covers ``urllib.request``).
        **options: any other :class:`OtelTracer` argument.

    Raises:
        ValueError: an unknown library name.
    """

    def __init__(
        self, store: SpanStore | None = None, *, libraries: tuple[str, ...] = LIBRARIES, **options: Any
    ) -> None:
        unknown = [lib for lib in libraries if lib not in LIBRARIES]
        if unknown:
            raise ValueError(f"HttpTracer: unknown libraries {unknown}; expected any of {', '.join(LIBRARIES)}")
        super().__init__(store, **options)
        self.libraries = tuple(dict.fromkeys(libraries))
        self._instrumented = False
        self._instrument_lock = threading.Lock()

    def init(self) -> None:
        super().init()
        with self._instrument_lock:
            if self._instrumented:
                return
            for library in self.libraries:
                install(library)
            self._instrumented = True

    def teardown(self) -> None:
        with http_recording_paused():
            super().teardown()
        with self._instrument_lock:
            if not self._instrumented:
                return
            for library in self.libraries:
                uninstall(library)
            self._instrumented = False

    # Our own store traffic (sequence ids on entering, exports on flushing) is never an agent's request.

    def _enter(self, name: str | None, rollout_id: str | None, attempt_id: str | None) -> tuple[RolloutContext, Any]:
        with http_recording_paused():
            return super()._enter(name, rollout_id, attempt_id)

    def force_flush(self, timeout: float = 5.0, *, drain_spool: bool = False) -> FlushReport | None:
        with http_recording_paused():
            return super().force_flush(timeout, drain_spool=drain_spool)

    def teardown_worker(self) -> None:
        with http_recording_paused():
            super().teardown_worker()
