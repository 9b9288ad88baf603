"""The route table: (resource, method, what else must hold) -> handler, first match wins.

A resource is ``service`` (``/``), ``bucket`` (``/bucket``) or ``object`` (``/bucket/key``). A route's
``when`` is a sub-resource that must be in the query (``"cors"``), a header that must be present
(``"header:x-amz-copy-source"``), a query value (``"list-type=2"``), or None. Sub-resources S3 has and this
gateway does not are answered 501 NotImplemented before routing (``UNSUPPORTED``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Awaitable, Callable

from . import acl, buckets, cors, listing, multipart, objects

Handler = Callable[..., Awaitable]

UNSUPPORTED = {
    "policy", "lifecycle", "tagging", "website", "logging", "notification", "replication", "encryption",
    "object-lock", "retention", "legal-hold", "torrent", "restore", "select", "requestPayment", "accelerate",
    "analytics", "inventory", "metrics", "intelligent-tiering", "ownershipControls", "publicAccessBlock",
    "policyStatus", "attributes",
}


@dataclass(frozen=True)
class Route:
    resource: str
    method: str
    when: str | tuple[str, ...] | None
    handler: Handler

    def matches(self, resource: str, method: str, query: dict[str, str], headers) -> bool:
        if resource != self.resource or method != self.method:
            return False
        conditions = self.when if isinstance(self.when, tuple) else (self.when,) if self.when else ()
        for condition in conditions:
            if condition.startswith("header:"):
                if condition[len("header:"):] not in headers:
                    return False
            elif "=" in condition:
                name, _, value = condition.partition("=")
                if query.get(name) != value:
                    return False
            elif condition not in query:
                return False
        return True


ROUTES = [
    Route("service", "GET", None, buckets.list_buckets),
    Route("service", "HEAD", None, buckets.list_buckets),
    # buckets
    Route("bucket", "PUT", "cors", cors.put_cors),
    Route("bucket", "PUT", "acl", acl.put_acl),
    Route("bucket", "PUT", "versioning", buckets.put_versioning),
    Route("bucket", "PUT", None, buckets.create_bucket),
    Route("bucket", "DELETE", "cors", cors.delete_cors),
    Route("bucket", "DELETE", None, buckets.delete_bucket),
    Route("bucket", "HEAD", None, buckets.head_bucket),
    Route("bucket", "POST", "delete", objects.delete_objects),
    Route("bucket", "GET", "location", buckets.get_location),
    Route("bucket", "GET", "versioning", buckets.get_versioning),
    Route("bucket", "GET", "acl", acl.get_bucket_acl),
    Route("bucket", "GET", "cors", cors.get_cors),
    Route("bucket", "GET", "uploads", multipart.list_uploads),
    Route("bucket", "GET", "versions", listing.list_object_versions),
    Route("bucket", "GET", None, listing.list_objects),
    # objects
    Route("object", "PUT", "acl", acl.put_acl),
    Route("object", "PUT", ("uploadId", "header:x-amz-copy-source"), multipart.upload_part_copy),
    Route("object", "PUT", ("partNumber", "header:x-amz-copy-source"), multipart.upload_part_copy),
    Route("object", "PUT", "uploadId", multipart.upload_part),
    Route("object", "PUT", "partNumber", multipart.upload_part),
    Route("object", "PUT", "header:x-amz-copy-source", objects.copy_object),
    Route("object", "PUT", None, objects.put_object),
    Route("object", "GET", "acl", acl.get_object_acl),
    Route("object", "GET", "uploadId", multipart.list_parts),
    Route("object", "GET", None, objects.get_object),
    Route("object", "HEAD", None, objects.head_object),
    Route("object", "DELETE", "uploadId", multipart.abort_upload),
    Route("object", "DELETE", None, objects.delete_object),
    Route("object", "POST", "uploads", multipart.create_upload),
    Route("object", "POST", "uploadId", multipart.complete_upload),
]


def find(resource: str, method: str, query: dict[str, str], headers) -> Handler | None:
    return next((r.handler for r in ROUTES if r.matches(resource, method, query, headers)), None)


def is_browser_post(method: str, resource: str, query: dict[str, str], headers) -> bool:
    """A form upload: signed by its policy field, not by SigV4 headers."""
    return (resource == "bucket" and method == "POST" and "delete" not in query
            and headers.get("content-type", "").lower().startswith("multipart/form-data")
            and "authorization" not in headers)
