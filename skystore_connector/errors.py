"""S3 errors, raised by the store and rendered by the gateway as the XML error a client expects.

Each class carries the S3 error code and HTTP status that boto3, the AWS CLI and s3fs understand
(they map codes to their own exceptions, e.g. ``NoSuchKey`` -> ``FileNotFoundError`` in s3fs).
"""

from __future__ import annotations


class S3Error(Exception):
    code = "InternalError"
    status = 500

    def __init__(self, message: str = "", *, resource: str | None = None):
        super().__init__(message or self.code)
        self.message = message or self.code
        self.resource = resource


def _error(name: str, status: int, code: str | None = None) -> type[S3Error]:
    return type(name, (S3Error,), {"code": code or name, "status": status, "__module__": __name__})


AccessDenied = _error("AccessDenied", 403)
SignatureDoesNotMatch = _error("SignatureDoesNotMatch", 403)
InvalidAccessKeyId = _error("InvalidAccessKeyId", 403)
RequestTimeTooSkewed = _error("RequestTimeTooSkewed", 403)
MissingSecurityHeader = _error("MissingSecurityHeader", 400)
AuthorizationHeaderMalformed = _error("AuthorizationHeaderMalformed", 400)
InvalidArgument = _error("InvalidArgument", 400)
InvalidRequest = _error("InvalidRequest", 400)
InvalidBucketName = _error("InvalidBucketName", 400)
KeyTooLongError = _error("KeyTooLongError", 400)
InvalidObjectName = _error("InvalidObjectName", 400, "InvalidArgument")
InvalidDigest = _error("InvalidDigest", 400)
BadDigest = _error("BadDigest", 400)
MalformedXML = _error("MalformedXML", 400)
MalformedPOSTRequest = _error("MalformedPOSTRequest", 400)
InvalidPolicyDocument = _error("InvalidPolicyDocument", 400)
MaxMessageLengthExceeded = _error("MaxMessageLengthExceeded", 400)
InvalidURI = _error("InvalidURI", 400)
XAmzContentSHA256Mismatch = _error("XAmzContentSHA256Mismatch", 400)  # body differs from the signed hash
EntityTooLarge = _error("EntityTooLarge", 400)
EntityTooSmall = _error("EntityTooSmall", 400)
IncompleteBody = _error("IncompleteBody", 400)
InvalidPart = _error("InvalidPart", 400)
InvalidPartOrder = _error("InvalidPartOrder", 400)
NoSuchBucket = _error("NoSuchBucket", 404)
NoSuchKey = _error("NoSuchKey", 404)
NoSuchUpload = _error("NoSuchUpload", 404)
NoSuchCORSConfiguration = _error("NoSuchCORSConfiguration", 404)
CORSForbidden = _error("CORSForbidden", 403, "AccessForbidden")  # a preflight no CORS rule allows
MethodNotAllowed = _error("MethodNotAllowed", 405)
MissingContentLength = _error("MissingContentLength", 411)
PreconditionFailed = _error("PreconditionFailed", 412)
BucketAlreadyOwnedByYou = _error("BucketAlreadyOwnedByYou", 409)
BucketAlreadyExists = _error("BucketAlreadyExists", 409)  # the name is taken by another access key
BucketNotEmpty = _error("BucketNotEmpty", 409)
AccessControlListNotSupported = _error("AccessControlListNotSupported", 400)  # ACL grants: see Config.grants
InvalidRange = _error("InvalidRange", 416)
InvalidPartNumber = _error("InvalidPartNumber", 416)  # GET ?partNumber=N past the object's parts
NotImplementedOp = _error("NotImplementedOp", 501, "NotImplemented")
InternalError = _error("InternalError", 500)
ServiceUnavailable = _error("ServiceUnavailable", 503)
