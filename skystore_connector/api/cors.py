"""CORS: the bucket's rules (Put/Get/DeleteBucketCors), preflight ``OPTIONS`` answered from them, and the
``Access-Control-*`` headers added to a matching browser request. Rules are stored as plain dicts on the
bucket row; the first rule that allows the origin, method and headers wins, as in S3."""

from __future__ import annotations

import fnmatch

from starlette.responses import Response

from .. import errors
from ..access import OWNER, READ
from .call import Call, run
from .s3xml import add, child_text, children, xml_response, xml_root

METHODS = {"GET", "PUT", "POST", "DELETE", "HEAD"}
MAX_RULES = 100
NOT_ALLOWED = "CORSResponse: This CORS request is not allowed. This is usually because the evalution of Origin, " \
              "request method / Access-Control-Request-Method or Access-Control-Request-Headers are not " \
              "whitelisted by the resource's CORS spec."


def parse_rules(document) -> list[dict]:
    rules = []
    for entry in children(document, "CORSRule"):
        def texts(name: str) -> list[str]:
            return [(c.text or "").strip() for c in children(entry, name)]

        rule = {"origins": texts("AllowedOrigin"), "methods": texts("AllowedMethod"),
                "headers": texts("AllowedHeader"), "expose": texts("ExposeHeader")}
        if not rule["origins"] or not rule["methods"]:
            raise errors.MalformedXML("every <CORSRule> needs an <AllowedOrigin> and an <AllowedMethod>")
        bad = [m for m in rule["methods"] if m not in METHODS]
        if bad:
            raise errors.InvalidRequest(f"Found unsupported HTTP method in CORS config. Unsupported method is {bad[0]}")
        if any(o.count("*") > 1 for o in rule["origins"]):
            raise errors.InvalidRequest("AllowedOrigin can not have more than one wildcard")
        rule_id, max_age = child_text(entry, "ID"), child_text(entry, "MaxAgeSeconds")
        if rule_id:
            rule["id"] = rule_id
        if max_age is not None:
            try:
                rule["max_age"] = int(max_age.strip())
            except ValueError:
                raise errors.MalformedXML("MaxAgeSeconds must be an integer") from None
        rules.append(rule)
    if not rules or len(rules) > MAX_RULES:
        raise errors.MalformedXML(f"a CORS configuration holds 1 to {MAX_RULES} <CORSRule> entries")
    return rules


def _like(pattern: str, value: str, *, fold: bool = False) -> bool:
    if fold:
        pattern, value = pattern.lower(), value.lower()
    return fnmatch.fnmatchcase(value, pattern.replace("[", "[[]"))


def match(rules: list | None, origin: str, method: str, headers: list[str]) -> dict | None:
    for rule in rules or []:
        if (any(_like(o, origin) for o in rule["origins"]) and method in rule["methods"]
                and all(any(_like(h, name, fold=True) for h in rule["headers"]) for name in headers)):
            return rule
    return None


def allow_headers(rule: dict, origin: str, method: str, request_headers: list[str]) -> dict[str, str]:
    headers = {"access-control-allow-origin": "*" if rule["origins"] == ["*"] else origin,
               "access-control-allow-methods": ", ".join(rule["methods"]), "vary": "Origin, Access-Control-Request-"
               "Headers, Access-Control-Request-Method"}
    if rule["origins"] != ["*"]:
        headers["access-control-allow-credentials"] = "true"
    if request_headers:
        headers["access-control-allow-headers"] = ", ".join(request_headers)
    if rule.get("expose"):
        headers["access-control-expose-headers"] = ", ".join(rule["expose"])
    if "max_age" in rule:
        headers["access-control-max-age"] = str(rule["max_age"])
    return headers


async def preflight(store, bucket: str, headers) -> Response:
    """``OPTIONS`` (unsigned, as browsers send it): 200 with the allowing rule's headers, else 403."""
    origin, method = headers.get("origin"), headers.get("access-control-request-method")
    if not origin or not method:
        raise errors.InvalidRequest("Insufficient information. Origin request header needed."
                                    if not origin else "Insufficient information. "
                                    "Access-Control-Request-Method header needed.")
    info = await run(store.head_bucket, bucket)
    wanted = [h.strip().lower() for h in headers.get("access-control-request-headers", "").split(",") if h.strip()]
    rule = match(info.cors, origin, method, wanted)
    if rule is None:
        raise errors.CORSForbidden(NOT_ALLOWED)
    return Response(b"", 200, allow_headers(rule, origin, method, wanted))


async def put_cors(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, OWNER)
    rules = parse_rules(await call.xml_body("CORSConfiguration"))
    await run(call.store.set_bucket_cors, bucket, rules)
    return Response(b"", 200)


async def get_cors(call: Call, bucket: str, key: str) -> Response:
    info = await call.bucket(bucket, READ)
    if not info.cors:
        raise errors.NoSuchCORSConfiguration("The CORS configuration does not exist", resource=bucket)
    root = xml_root("CORSConfiguration")
    for rule in info.cors:
        entry = add(root, "CORSRule")
        if "id" in rule:
            add(entry, "ID", rule["id"])
        for tag, field in (("AllowedHeader", "headers"), ("AllowedMethod", "methods"),
                           ("AllowedOrigin", "origins"), ("ExposeHeader", "expose")):
            for value in rule.get(field, []):
                add(entry, tag, value)
        if "max_age" in rule:
            add(entry, "MaxAgeSeconds", rule["max_age"])
    return xml_response(root, call.request_id)


async def delete_cors(call: Call, bucket: str, key: str) -> Response:
    await call.bucket(bucket, OWNER)
    await run(call.store.set_bucket_cors, bucket, None)
    return Response(b"", 204)
