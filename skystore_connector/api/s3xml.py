"""XML in and out: S3's response documents and errors, and request documents parsed with ``defusedxml``
(no entity expansion, no external entities, no DTDs: a request body cannot make the gateway fetch or
inflate anything)."""

from __future__ import annotations

import base64
import re
import time
import xml.etree.ElementTree as ET
from email.utils import formatdate

import defusedxml.ElementTree as SafeET
from defusedxml import DefusedXmlException
from starlette.responses import Response

from .. import errors
from ..errors import S3Error

S3_NS = "http://s3.amazonaws.com/doc/2006-03-01/"
MALFORMED = "The XML you provided was not well-formed or did not validate against our published schema."


def quote_etag(etag: str) -> str:
    return etag if etag.startswith('"') else f'"{etag}"'


def http_date(ts: float) -> str:
    return formatdate(ts, usegmt=True)


def iso_date(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts)) + f".{int(ts * 1000) % 1000:03d}Z"


def header_value(value: str) -> str:
    """HTTP header values are ASCII in practice; S3 sends other text RFC 2047 encoded, and so do we."""
    if value.isascii():
        return value
    return "=?UTF-8?B?" + base64.b64encode(value.encode()).decode() + "?="


# Characters XML 1.0 cannot carry at all (even escaped); S3 keys may hold them. They are percent-encoded.
_XML_INVALID = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")


def xml_text(value) -> str:
    text = str(value).lower() if isinstance(value, bool) else str(value)
    return _XML_INVALID.sub(lambda m: f"%{ord(m.group()):02X}" if m.group() < " " else f"\\u{ord(m.group()):04x}", text)


def xml_root(tag: str) -> ET.Element:
    return ET.Element(tag, xmlns=S3_NS)


def add(parent: ET.Element, tag: str, text=None) -> ET.Element:
    child = ET.SubElement(parent, tag)
    if text is not None:
        child.text = xml_text(text)
    return child


def xml_response(root: ET.Element, request_id: str, status: int = 200) -> Response:
    body = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    return Response(body, status, {"x-amz-request-id": request_id, "content-type": "application/xml"})


def error_response(error: S3Error, request_id: str, resource: str, *, head: bool = False) -> Response:
    headers = {"x-amz-request-id": request_id}
    if head:  # HEAD responses never carry a body; the status tells the client what happened
        return Response(b"", error.status, headers)
    root = ET.Element("Error")
    add(root, "Code", error.code)
    add(root, "Message", error.message)
    add(root, "Resource", error.resource or resource)
    add(root, "RequestId", request_id)
    headers["content-type"] = "application/xml"
    return Response(ET.tostring(root, encoding="utf-8", xml_declaration=True), error.status, headers)


def local_name(element: ET.Element) -> str:
    tag = element.tag
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def children(element: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in element if local_name(c) == name]


def child_text(element: ET.Element, name: str, default: str | None = None) -> str | None:
    found = children(element, name)
    return (found[0].text or "") if found else default


def parse_xml(body: bytes, root_name: str) -> ET.Element:
    """The request document, whose root must be ``<root_name>``; MalformedXML for anything else."""
    try:
        root = SafeET.fromstring(body, forbid_dtd=True)
    except (ET.ParseError, DefusedXmlException, ValueError):
        raise errors.MalformedXML(MALFORMED) from None
    if local_name(root) != root_name:
        raise errors.MalformedXML(f"expected a <{root_name}> document")
    return root
