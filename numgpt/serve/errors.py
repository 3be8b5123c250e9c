"""OpenAI's error shape, built here and nowhere else: {"error": {"message", "type", "param", "code"}}.

The routes raise APIError; the handlers installed by `install_error_handlers` turn it, a NumgptError, a
schema failure (pydantic), an unknown route and any bug into that body, with no traceback. The
middleware (which answers before FastAPI) and the streams (which answer inside a 200) use `error_json`.
"""

from __future__ import annotations

import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ..errors import NumgptError
from .engine import ShuttingDown
from . import schemas

log = logging.getLogger("numgpt.serve")
NOT_JSON = "the body is not valid JSON (UTF-8 text)"
NOT_READABLE = "the body is not valid JSON (UTF-8 text), or is nested too deeply to read"
PARSE_FAILED = "There was an error parsing the body"     # FastAPI's HTTPException when the bytes do not decode


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code


def error_json(message: str, *, type: str = "invalid_request_error", param: str | None = None,
               code: str | None = None) -> dict:
    """The one error body of the API."""
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def error_response(status: int, message: str, **kw) -> JSONResponse:
    return JSONResponse(error_json(message, **kw), status)


def install_error_handlers(app: FastAPI) -> None:
    """Every failure a route can have, answered in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, e: APIError):
        return error_response(e.status, e.message, type=e.type, param=e.param, code=e.code)

    @app.exception_handler(ShuttingDown)
    async def _shutting_down(request: Request, e: ShuttingDown):
        return error_response(503, str(e), type="server_error", code="shutting_down")

    @app.exception_handler(NumgptError)
    async def _numgpt_error(request: Request, e: NumgptError):
        return error_response(400, str(e), code="invalid_value")

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError):
        return validation_error(e.errors(), request.headers.get("content-type", ""))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException):
        if e.status_code == 400 and e.detail == PARSE_FAILED:     # the parser raised: bad UTF-8, or too deep
            return error_response(400, await unreadable_body(request), code="invalid_json")
        message = {404: f"no route {request.method} {request.url.path}",
                   405: f"{request.method} is not allowed on {request.url.path}"}.get(e.status_code, str(e.detail))
        return error_response(e.status_code, message, code="not_found" if e.status_code == 404 else None)

    @app.exception_handler(Exception)
    async def _bug(request: Request, e: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error_response(500, "internal server error (logged on the server)", type="server_error")


async def unreadable_body(request: Request) -> str:
    """Why a body the JSON parser raised on could not be read: bytes that are not UTF-8 (which), or JSON
    nested deeper than the parser goes."""
    try:
        body = await request.body()                  # kept by the request that read it first
    except Exception:                                # (the stream already consumed elsewhere: say both)
        return NOT_READABLE
    try:
        body.decode("utf-8")
    except UnicodeDecodeError as e:
        return f"{NOT_JSON}: byte 0x{body[e.start]:02x} at offset {e.start} is not UTF-8"
    return f"{NOT_JSON}: it is nested too deeply to read"


def validation_error(errors: list, content_type: str = "application/json") -> JSONResponse:
    """pydantic's first failure as one 400 that names the field (as OpenAI answers a bad argument)."""
    first = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    if first.get("type") == "json_invalid":     # with why the parser stopped, and where
        why = (first.get("ctx") or {}).get("error")
        at = [p for p in first.get("loc", ()) if isinstance(p, int)]
        if why and at:
            why += f" (at character {at[0]})"
        return error_response(400, f"{NOT_JSON}: {why}" if why else NOT_JSON, code="invalid_json")
    loc = [p for p in first.get("loc", ()) if p != "body"]
    path = field_path(loc)
    param = str(loc[0]) if loc else None
    message = first.get("msg", "invalid value").removeprefix("Value error, ")   # pydantic's wording for a ValueError
    if not loc and first.get("type") in ("missing", "model_attributes_type", "dict_type", "model_type"):
        message = "the body must be a JSON object" + (
            "" if "json" in content_type else f" sent as Content-Type: application/json, not {content_type or 'none'}")
    elif first.get("type") == "invalid_value":      # schemas.refuse: the message names the field itself
        pass
    elif first.get("type") == "extra_forbidden":
        message = f"unrecognized request argument supplied: {path}"
    elif any_item(path) in schemas.ACCEPTS:
        message = f"{path} must be {schemas.ACCEPTS[any_item(path)]}"
    elif path:
        message = f"{path}: {message}"
    return error_response(400, message, param=param, code=first.get("type"))


def any_item(path: str) -> str:
    """A field path with its list indexes as *, as schemas.ACCEPTS names them: messages.0.content ->
    messages.*.content."""
    return re.sub(r"\.\d+(?=\.|$)", ".*", path)


UNION_TAGS = {"str", "int", "float", "bool"}   # pydantic's names of a union's plain members in an error location


def field_path(loc) -> str:
    """A pydantic error location as the request's field path: messages.0.role; union members' tags
    (str, list[int], ...; response_format's json_schema) dropped."""
    out = []
    for k, p in enumerate(loc):
        if isinstance(p, int):
            out.append(str(p))
        elif k > 0 and loc[k - 1] in schemas.TAGGED:
            continue                                   # response_format.json_schema.name, not ...json_schema.json_schema...
        elif p in UNION_TAGS:
            continue                                   # messages.0.content, not messages.0.content.str
        elif p.isidentifier():
            out.append(p)
        else:
            break
    return ".".join(out)
