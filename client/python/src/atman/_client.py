"""Client (blocking) and AsyncClient (asyncio, grpc.aio) of the atman.v1.Atman service and of
grpc.health.v1.Health.

Both add what every caller would otherwise write (the C++ client in client/atman_client.h does
the same): a deadline per call, retries of UNAVAILABLE (the server is draining or not up yet)
with exponential backoff, TLS and mutual TLS, a bearer token as `authorization: Bearer <t>`
metadata, message size limits and keepalive pings.

Retries: gRPC's own retry policy, from the channel's service config (retryableStatusCodes
UNAVAILABLE, initial/max backoff and multiplier as given), on every atman.v1.Atman method; the
call's deadline bounds all its attempts. gRPC caps a policy at 5 attempts: up to 4 retries
make exactly retries + 1 attempts; more are met by repeating the call in Python, in rounds of
5 attempts (ceil((retries + 1) / 5) rounds, max_backoff apart, while the deadline allows). A stream is
retried only before its first event (gRPC commits the call then); health checks are never
retried. The channel's reconnect backoff follows the same initial/max backoff, so that a server
that comes up is reached by the next attempt.

Errors: a call that fails raises AtmanError (the gRPC status code and the server's message,
whose field path, for INVALID_ARGUMENT, is `field`); bad option values raise OptionError before
any call.

Thread safety: a Client may be used from many threads at once (one channel). An AsyncClient
belongs to the event loop that first uses it.
"""
from __future__ import annotations

import asyncio
import json
import os
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator, Iterator, Optional, Union

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from atman import _options, _prompt
from atman._build import VERSION
from atman._options import OptionError
from atman._results import Explanation, GenerateResult, ModelInfo, Progress, Token
from atman.v1 import atman_pb2 as pb
from atman.v1 import atman_pb2_grpc as pb_grpc

_DEFAULT = object()
_POLICY_MAX_ATTEMPTS = 5  # gRPC's cap on retryPolicy.maxAttempts


class AtmanError(Exception):
    """A call that failed: `code` (grpc.StatusCode), `details` (the server's message) and, for
    INVALID_ARGUMENT, `field` (the field path the message starts with, e.g.
    "options.control_factor")."""

    def __init__(self, code: grpc.StatusCode, details: str, method: str = ""):
        super().__init__(f"{method + ': ' if method else ''}{code.name}: {details}")
        self.code = code
        self.details = details
        self.field: Optional[str] = None
        if code == grpc.StatusCode.INVALID_ARGUMENT and ": " in details:
            self.field = details.split(": ", 1)[0]


@dataclass(frozen=True)
class Tls:
    """TLS settings: `ca` (PEM roots signing the server's certificate; None: the system's),
    `cert` and `key` (a client certificate for mutual TLS: both or neither), `server_name`
    (the name checked in the server's certificate; None: the host). Paths or PEM bytes."""
    ca: Union[str, bytes, "os.PathLike[str]", None] = None
    cert: Union[str, bytes, "os.PathLike[str]", None] = None
    key: Union[str, bytes, "os.PathLike[str]", None] = None
    server_name: Optional[str] = None


def _pem(field: str, value: Any) -> Optional[bytes]:
    if value is None:
        return None
    if isinstance(value, bytes):
        return value
    try:
        with open(value, "rb") as f:
            return f.read()
    except (OSError, TypeError) as e:
        raise OptionError(field, f"cannot read {value!r}: {e}") from None


def _seconds(field: str, value: Any, allow_none: bool) -> Optional[float]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0 \
            or value == float("inf"):
        raise OptionError(field, f"{value!r} is not a finite number of seconds >= 0"
                          + (" (or None)" if allow_none else ""))
    return float(value)


class _Settings:
    """What both clients share: validated settings, channel options and credentials."""

    def __init__(self, address, tls, token, timeout, retries, initial_backoff, max_backoff,
                 backoff_multiplier, max_message_bytes):
        if not isinstance(address, str) or not address:
            raise OptionError("address", f"{address!r} is not a host:port or gRPC target")
        self.address = address
        self.timeout = _seconds("timeout", timeout, allow_none=True)
        if isinstance(retries, bool) or not isinstance(retries, int) or not 0 <= retries <= 100:
            raise OptionError("retries", f"{retries!r} is not an integer in [0, 100]")
        self.retries = retries
        self.initial_backoff = _seconds("initial_backoff", initial_backoff, allow_none=False)
        self.max_backoff = _seconds("max_backoff", max_backoff, allow_none=False)
        if not 0 < self.initial_backoff <= self.max_backoff:
            raise OptionError("initial_backoff", f"need 0 < initial_backoff ({initial_backoff}) "
                              f"<= max_backoff ({max_backoff})")
        if isinstance(backoff_multiplier, bool) or \
                not isinstance(backoff_multiplier, (int, float)) or \
                not 1 <= backoff_multiplier < float("inf"):
            raise OptionError("backoff_multiplier", f"{backoff_multiplier!r} is not >= 1")
        self.backoff_multiplier = float(backoff_multiplier)
        if isinstance(max_message_bytes, bool) or not isinstance(max_message_bytes, int) or \
                not 1024 <= max_message_bytes <= 2**31 - 1:
            raise OptionError("max_message_bytes", f"{max_message_bytes!r} is not in "
                              "[1024, 2147483647]")
        if token is not None and (not isinstance(token, str) or not token or "\n" in token):
            raise OptionError("token", "must be a non-empty string of one line")
        self.metadata = (("authorization", f"Bearer {token}"),) if token else ()
        if tls is True:
            tls = Tls()
        if tls not in (None, False) and not isinstance(tls, Tls):
            raise OptionError("tls", f"{tls!r} is not None, True or an atman.Tls")
        self.credentials = None
        self.options: list[tuple[str, Any]] = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.primary_user_agent", f"atman-client-python/{VERSION}"),
            ("grpc.keepalive_time_ms", 30000), ("grpc.keepalive_timeout_ms", 10000),
            ("grpc.initial_reconnect_backoff_ms", int(self.initial_backoff * 1000)),
            ("grpc.min_reconnect_backoff_ms", int(self.initial_backoff * 1000)),
            ("grpc.max_reconnect_backoff_ms", int(self.max_backoff * 1000)),
            ("grpc.service_config_disable_resolution", 1),
        ]
        if isinstance(tls, Tls):
            if (tls.cert is None) != (tls.key is None):
                raise OptionError("tls.cert" if tls.cert is None else "tls.key",
                                  "give both tls.cert and tls.key, or neither")
            self.credentials = grpc.ssl_channel_credentials(
                root_certificates=_pem("tls.ca", tls.ca), private_key=_pem("tls.key", tls.key),
                certificate_chain=_pem("tls.cert", tls.cert))
            if tls.server_name:
                self.options.append(("grpc.ssl_target_name_override", tls.server_name))
        self.policy_attempts = min(retries + 1, _POLICY_MAX_ATTEMPTS)
        if self.policy_attempts >= 2:
            policy = {"maxAttempts": self.policy_attempts,
                      "initialBackoff": f"{self.initial_backoff:.3f}s",
                      "maxBackoff": f"{self.max_backoff:.3f}s",
                      "backoffMultiplier": self.backoff_multiplier,
                      "retryableStatusCodes": ["UNAVAILABLE"]}
            config = {"methodConfig": [{"name": [{"service": "atman.v1.Atman"}],
                                        "retryPolicy": policy}]}
            self.options += [("grpc.enable_retries", 1),
                             ("grpc.service_config", json.dumps(config))]
        else:
            self.options.append(("grpc.enable_retries", 0))
        # Calls of the outer (Python) loop: each is one gRPC call of policy_attempts attempts.
        self.rounds = -(-(retries + 1) // self.policy_attempts)

    def deadline(self, timeout: Any) -> Optional[float]:
        t = self.timeout if timeout is _DEFAULT else _seconds("timeout", timeout, True)
        return None if t is None else time.monotonic() + t

    def explain_request(self, prompt, target, request_id, options) -> pb.ExplainRequest:
        if not isinstance(target, str):
            raise OptionError("target", f"{target!r} is not a string")
        return pb.ExplainRequest(prompt=_prompt.prompt_items(prompt), target=target,
                                 options=_options.explain_options(options),
                                 request_id=_options.request_id(request_id))

    def generate_request(self, prompt, request_id, options) -> pb.GenerateRequest:
        request = _options.generate_request(options)
        request.prompt.extend(_prompt.prompt_items(prompt))
        request.request_id = _options.request_id(request_id)
        return request

    @staticmethod
    def tokenize_request(text, add_special_tokens) -> pb.TokenizeRequest:
        if not isinstance(text, str):
            raise OptionError("text", f"{text!r} is not a string")
        request = pb.TokenizeRequest(text=text)
        if not _options._bool("add_special_tokens", add_special_tokens):
            request.add_special_tokens = False
        return request


def _remaining(deadline: Optional[float]) -> Optional[float]:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _error(e: grpc.RpcError, method: str, rounds: int) -> AtmanError:
    details = e.details() or ""
    if e.code() == grpc.StatusCode.UNAVAILABLE and rounds > 1:
        details += f" ({rounds} rounds of retries)"
    return AtmanError(e.code(), details, method)


def _gives_up(s: "_Settings", e: grpc.RpcError, r: int, rounds: int,
              deadline: Optional[float], started: bool = False) -> bool:
    """Whether round `r` of `rounds` ends the call with `e`: only UNAVAILABLE before any
    stream event is retried, and only while a backoff still fits before the deadline."""
    left = _remaining(deadline)
    return started or e.code() != grpc.StatusCode.UNAVAILABLE or r == rounds or \
        (left is not None and left <= s.max_backoff)


def _stream_item(request: pb.ExplainRequest, event) -> Union[Progress, Explanation]:
    """One ExplainStream event: a Progress, or the final Explanation."""
    if event.HasField("progress"):
        p = event.progress
        return Progress(p.rows_done, p.rows_total, p.estimated_seconds_left)
    return Explanation.from_proto(request, event.result)


class Client:
    """A blocking client. `address`: host:port (or any gRPC target). `tls`: None/False
    (plaintext), True (the system's roots) or an atman.Tls. `token`: bearer token. `timeout`:
    seconds per call including retries (None: no deadline), overridable per call. `retries`:
    how many times UNAVAILABLE is retried (0 to 100). Use as a context manager or close()."""

    def __init__(self, address: str = "127.0.0.1:50051", *, tls: Union[None, bool, Tls] = None,
                 token: Optional[str] = None, timeout: Optional[float] = 60.0, retries: int = 3,
                 initial_backoff: float = 0.1, max_backoff: float = 2.0,
                 backoff_multiplier: float = 2.0, max_message_bytes: int = 32 << 20):
        self._s = _Settings(address, tls, token, timeout, retries, initial_backoff, max_backoff,
                            backoff_multiplier, max_message_bytes)
        s = self._s
        self._channel = (grpc.secure_channel(s.address, s.credentials, s.options)
                         if s.credentials else grpc.insecure_channel(s.address, s.options))
        self._stub = pb_grpc.AtmanStub(self._channel)
        self._health = health_pb2_grpc.HealthStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _unary(self, method: str, request, timeout, rounds: Optional[int] = None):
        call = getattr(self._stub, method)
        deadline = self._s.deadline(timeout)
        rounds = self._s.rounds if rounds is None else rounds
        for r in range(1, rounds + 1):
            try:
                return call(request, timeout=_remaining(deadline), metadata=self._s.metadata)
            except grpc.RpcError as e:
                if _gives_up(self._s, e, r, rounds, deadline):
                    raise _error(e, method, r) from None
            time.sleep(self._s.max_backoff)

    def explain(self, prompt: Any, target: str = "", *, request_id: str = "",
                timeout: Any = _DEFAULT, **options: Any) -> Explanation:
        """Explains `target` (empty: a greedy generation of max_new_tokens) given `prompt`.
        Options: the ExplainOptions fields of the API with their defaults (docs/python.md)."""
        request = self._s.explain_request(prompt, target, request_id, options)
        return Explanation.from_proto(request, self._unary("Explain", request, timeout))

    def explain_stream(self, prompt: Any, target: str = "", *, request_id: str = "",
                       timeout: Any = _DEFAULT,
                       **options: Any) -> Iterator[Union[Progress, Explanation]]:
        """explain() as a stream: Progress events, then the Explanation (always last). Closing
        the iterator early cancels the call."""
        request = self._s.explain_request(prompt, target, request_id, options)
        deadline = self._s.deadline(timeout)
        for r in range(1, self._s.rounds + 1):
            call = self._stub.ExplainStream(request, timeout=_remaining(deadline),
                                            metadata=self._s.metadata)
            started = False
            try:
                for event in call:
                    started = True
                    yield _stream_item(request, event)
                return
            except grpc.RpcError as e:
                if _gives_up(self._s, e, r, self._s.rounds, deadline, started):
                    raise _error(e, "ExplainStream", r) from None
            finally:
                call.cancel()  # no-op once the call ended; ends it when the caller stopped early
            time.sleep(self._s.max_backoff)

    def generate(self, prompt: Any, *, request_id: str = "", timeout: Any = _DEFAULT,
                 **options: Any) -> GenerateResult:
        """Completes `prompt`. Options: the GenerateRequest fields (max_new_tokens, temperature,
        top_k, top_p, seed, controls, control_mode, control_token_overlap, layers,
        add_special_tokens, stop_at_eos) with the API's defaults."""
        request = self._s.generate_request(prompt, request_id, options)
        return GenerateResult.from_proto(self._unary("Generate", request, timeout))

    def tokenize(self, text: str, *, add_special_tokens: bool = True,
                 timeout: Any = _DEFAULT) -> list[Token]:
        request = self._s.tokenize_request(text, add_special_tokens)
        return Token.list_from_proto(self._unary("Tokenize", request, timeout))

    def model_info(self, *, timeout: Any = _DEFAULT) -> ModelInfo:
        return ModelInfo.from_proto(self._unary("GetModelInfo", pb.GetModelInfoRequest(),
                                                timeout))

    def health(self, service: str = "", *, timeout: Any = _DEFAULT) -> str:
        """grpc.health.v1 Check of `service` ("" = the server; "atman.v1.Atman"): "SERVING",
        "NOT_SERVING", ...; an unknown service raises AtmanError(NOT_FOUND). Not retried."""
        deadline = self._s.deadline(timeout)
        try:
            response = self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                          timeout=_remaining(deadline))
        except grpc.RpcError as e:
            raise _error(e, "Health.Check", 1) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


class AsyncClient:
    """The asyncio client (grpc.aio): the same constructor and methods as Client, as
    coroutines; explain_stream() is an async iterator. Cancelling the task that awaits a call
    cancels the call (the server drops its work and counts it CANCELLED). Use
    `async with AsyncClient(...)` or `await client.close()`."""

    def __init__(self, address: str = "127.0.0.1:50051", *, tls: Union[None, bool, Tls] = None,
                 token: Optional[str] = None, timeout: Optional[float] = 60.0, retries: int = 3,
                 initial_backoff: float = 0.1, max_backoff: float = 2.0,
                 backoff_multiplier: float = 2.0, max_message_bytes: int = 32 << 20):
        self._s = _Settings(address, tls, token, timeout, retries, initial_backoff, max_backoff,
                            backoff_multiplier, max_message_bytes)
        self._channel: Optional[grpc.aio.Channel] = None

    def _open(self):
        if self._channel is None:
            s = self._s
            self._channel = (grpc.aio.secure_channel(s.address, s.credentials, s.options)
                             if s.credentials else grpc.aio.insecure_channel(s.address, s.options))
            self._stub = pb_grpc.AtmanStub(self._channel)
            self._health = health_pb2_grpc.HealthStub(self._channel)
        return self._stub

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = None

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def _unary(self, method: str, request, timeout):
        call = getattr(self._open(), method)
        deadline = self._s.deadline(timeout)
        for r in range(1, self._s.rounds + 1):
            try:
                return await call(request, timeout=_remaining(deadline),
                                  metadata=self._s.metadata)
            except grpc.RpcError as e:
                if _gives_up(self._s, e, r, self._s.rounds, deadline):
                    raise _error(e, method, r) from None
            await asyncio.sleep(self._s.max_backoff)

    async def explain(self, prompt: Any, target: str = "", *, request_id: str = "",
                      timeout: Any = _DEFAULT, **options: Any) -> Explanation:
        request = self._s.explain_request(prompt, target, request_id, options)
        return Explanation.from_proto(request, await self._unary("Explain", request, timeout))

    async def explain_stream(self, prompt: Any, target: str = "", *, request_id: str = "",
                             timeout: Any = _DEFAULT,
                             **options: Any) -> AsyncIterator[Union[Progress, Explanation]]:
        request = self._s.explain_request(prompt, target, request_id, options)
        stub = self._open()
        deadline = self._s.deadline(timeout)
        for r in range(1, self._s.rounds + 1):
            call = stub.ExplainStream(request, timeout=_remaining(deadline),
                                      metadata=self._s.metadata)
            started = False
            try:
                async for event in call:
                    started = True
                    yield _stream_item(request, event)
                return
            except grpc.RpcError as e:
                if _gives_up(self._s, e, r, self._s.rounds, deadline, started):
                    raise _error(e, "ExplainStream", r) from None
            finally:
                call.cancel()
            await asyncio.sleep(self._s.max_backoff)

    async def generate(self, prompt: Any, *, request_id: str = "", timeout: Any = _DEFAULT,
                       **options: Any) -> GenerateResult:
        request = self._s.generate_request(prompt, request_id, options)
        return GenerateResult.from_proto(await self._unary("Generate", request, timeout))

    async def tokenize(self, text: str, *, add_special_tokens: bool = True,
                       timeout: Any = _DEFAULT) -> list[Token]:
        request = self._s.tokenize_request(text, add_special_tokens)
        return Token.list_from_proto(await self._unary("Tokenize", request, timeout))

    async def model_info(self, *, timeout: Any = _DEFAULT) -> ModelInfo:
        return ModelInfo.from_proto(await self._unary("GetModelInfo", pb.GetModelInfoRequest(),
                                                      timeout))

    async def health(self, service: str = "", *, timeout: Any = _DEFAULT) -> str:
        self._open()
        deadline = self._s.deadline(timeout)
        try:
            response = await self._health.Check(health_pb2.HealthCheckRequest(service=service),
                                                timeout=_remaining(deadline))
        except grpc.RpcError as e:
            raise _error(e, "Health.Check", 1) from None
        return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)
