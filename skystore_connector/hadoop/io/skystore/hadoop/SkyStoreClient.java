package io.skystore.hadoop;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.io.InterruptedIOException;
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;
import java.nio.file.AccessDeniedException;
import java.security.MessageDigest;
import java.security.NoSuchAlgorithmException;
import java.time.Duration;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.Base64;
import java.util.LinkedHashMap;
import java.util.List;
import java.util.Map;
import java.util.TreeMap;

/**
 * The S3 calls the file system needs, sent path-style ({@code /bucket/key}) to one SkyStore gateway
 * endpoint and signed with SigV4 (header form, payload hash signed unless turned off).
 *
 * <p>Errors: 404 becomes {@link FileNotFoundException}, 403 {@link AccessDeniedException}, anything
 * else an {@link IOException} carrying the S3 error code. Connection failures and 500/503 answers
 * are retried a few times (every call here is idempotent or harmless to repeat).
 */
final class SkyStoreClient {
  private static final int ATTEMPTS = 3;
  // One HTTP client for every file system instance: each JDK client owns a selector thread.
  private static final HttpClient HTTP = HttpClient.newBuilder()
      .version(HttpClient.Version.HTTP_1_1) // no h2c upgrade dance with a plain-HTTP gateway
      .connectTimeout(Duration.ofSeconds(30))
      .followRedirects(HttpClient.Redirect.NEVER)
      .build();

  private final String endpoint; // scheme://host:port (+ optional base path), no trailing '/'
  private final String hostHeader;
  private final SigV4Signer signer;
  private final boolean signPayload;
  private final Duration requestTimeout;

  SkyStoreClient(URI endpoint, String accessKey, String secretKey, String region, boolean signPayload,
      Duration requestTimeout) {
    String text = endpoint.toString();
    this.endpoint = text.endsWith("/") ? text.substring(0, text.length() - 1) : text;
    this.hostHeader = hostHeader(endpoint);
    this.signer = new SigV4Signer(accessKey, secretKey, region);
    this.signPayload = signPayload;
    this.requestTimeout = requestTimeout;
  }

  /** The Host header the JDK client sends: the port only when it is not the scheme's default. */
  static String hostHeader(URI uri) {
    int port = uri.getPort();
    boolean https = "https".equalsIgnoreCase(uri.getScheme());
    if (port == -1 || (https && port == 443) || (!https && port == 80)) {
      return uri.getHost();
    }
    return uri.getHost() + ":" + port;
  }

  /** {@code /bucket/key} with the key URI-encoded ('/' kept); {@code /bucket} for bucket calls. */
  static String objectPath(String bucket, String key) {
    String path = "/" + SigV4Signer.uriEncode(bucket, false);
    return key == null || key.isEmpty() ? path : path + "/" + SigV4Signer.uriEncode(key, true);
  }

  // ---------------------------------------------------------------- objects

  /** Size and modification time of an object, or null when there is none. */
  ObjectSummary head(String bucket, String key) throws IOException {
    HttpResponse<byte[]> r = send("HEAD", bucket, key, Map.of(), Map.of(), null, 0, 0, true);
    if (r.statusCode() == 404) {
      return null;
    }
    check(r, "HEAD", bucket, key);
    long size = r.headers().firstValueAsLong("Content-Length").orElse(0L);
    long modified = r.headers().firstValue("Last-Modified").map(SkyStoreClient::httpDateMillis).orElse(0L);
    return new ObjectSummary(key, size, modified);
  }

  /** Bytes [start, start + length) of an object; fewer only at its end. */
  byte[] getRange(String bucket, String key, long start, int length) throws IOException {
    if (length <= 0) {
      return new byte[0];
    }
    Map<String, String> headers = Map.of("Range", "bytes=" + start + "-" + (start + length - 1));
    HttpResponse<byte[]> r = send("GET", bucket, key, Map.of(), headers, null, 0, 0, false);
    if (r.statusCode() == 416) {
      return new byte[0];
    }
    check(r, "GET", bucket, key);
    byte[] body = r.body();
    if (r.statusCode() == 200 && start > 0) {
      throw new IOException("the gateway ignored the Range header of GET " + bucket + "/" + key);
    }
    return body.length > length ? java.util.Arrays.copyOf(body, length) : body;
  }

  void put(String bucket, String key, byte[] data, int length) throws IOException {
    HttpResponse<byte[]> r = send("PUT", bucket, key, Map.of(), Map.of(), data, 0, length, false);
    check(r, "PUT", bucket, key);
  }

  void delete(String bucket, String key) throws IOException {
    HttpResponse<byte[]> r = send("DELETE", bucket, key, Map.of(), Map.of(), null, 0, 0, false);
    if (r.statusCode() != 404) {
      check(r, "DELETE", bucket, key);
    }
  }

  /** DeleteObjects in batches of 1000 keys (the S3 limit), quiet mode: only failures come back. */
  void deleteAll(String bucket, List<String> keys) throws IOException {
    for (int from = 0; from < keys.size(); from += 1000) {
      List<String> batch = keys.subList(from, Math.min(keys.size(), from + 1000));
      if (batch.size() == 1) {
        delete(bucket, batch.get(0));
        continue;
      }
      byte[] body = S3Xml.deleteRequest(batch);
      Map<String, String> headers = new LinkedHashMap<>();
      headers.put("Content-MD5", md5Base64(body));
      headers.put("Content-Type", "application/xml");
      HttpResponse<byte[]> r = send("POST", bucket, "", Map.of("delete", ""), headers, body, 0,
          body.length, false);
      check(r, "DeleteObjects", bucket, "");
      List<String> errors = S3Xml.deleteErrors(r.body());
      if (!errors.isEmpty()) {
        throw new IOException("DeleteObjects on " + bucket + " failed for " + errors);
      }
    }
  }

  /** Server-side copy within a bucket (CopyObject). */
  void copy(String bucket, String sourceKey, String targetKey) throws IOException {
    Map<String, String> headers = Map.of("x-amz-copy-source", objectPath(bucket, sourceKey).substring(1));
    HttpResponse<byte[]> r = send("PUT", bucket, targetKey, Map.of(), headers, null, 0, 0, false);
    check(r, "COPY " + bucket + "/" + sourceKey + " ->", bucket, targetKey);
    // S3 may answer 200 and still report the failure in the body.
    String[] error = S3Xml.error(r.body());
    if (error != null) {
      throw new IOException("COPY " + sourceKey + " -> " + targetKey + ": " + error[0] + " " + error[1]);
    }
  }

  /** One page of ListObjectsV2. */
  ListPage list(String bucket, String prefix, String delimiter, String token, int maxKeys)
      throws IOException {
    Map<String, String> query = new TreeMap<>();
    query.put("list-type", "2");
    query.put("prefix", prefix);
    query.put("max-keys", Integer.toString(maxKeys));
    if (delimiter != null) {
      query.put("delimiter", delimiter);
    }
    if (token != null) {
      query.put("continuation-token", token);
    }
    HttpResponse<byte[]> r = send("GET", bucket, "", query, Map.of(), null, 0, 0, false);
    check(r, "LIST", bucket, prefix);
    return S3Xml.listPage(r.body());
  }

  // ---------------------------------------------------------------- multipart upload

  String createMultipart(String bucket, String key) throws IOException {
    HttpResponse<byte[]> r = send("POST", bucket, key, Map.of("uploads", ""), Map.of(), null, 0, 0, false);
    check(r, "CreateMultipartUpload", bucket, key);
    return S3Xml.uploadId(r.body());
  }

  /** Uploads one part; returns its ETag. */
  String uploadPart(String bucket, String key, String uploadId, int partNumber, byte[] data,
      int length) throws IOException {
    Map<String, String> query = Map.of("partNumber", Integer.toString(partNumber), "uploadId", uploadId);
    HttpResponse<byte[]> r = send("PUT", bucket, key, query, Map.of(), data, 0, length, false);
    check(r, "UploadPart " + partNumber, bucket, key);
    return r.headers().firstValue("ETag")
        .orElseThrow(() -> new IOException("UploadPart answered without an ETag"));
  }

  void completeMultipart(String bucket, String key, String uploadId, List<String> etags)
      throws IOException {
    byte[] body = S3Xml.completeRequest(etags);
    HttpResponse<byte[]> r = send("POST", bucket, key, Map.of("uploadId", uploadId),
        Map.of("Content-Type", "application/xml"), body, 0, body.length, false);
    check(r, "CompleteMultipartUpload", bucket, key);
    String[] error = S3Xml.error(r.body()); // also a 200-with-error case in S3
    if (error != null) {
      throw new IOException("CompleteMultipartUpload " + key + ": " + error[0] + " " + error[1]);
    }
  }

  void abortMultipart(String bucket, String key, String uploadId) throws IOException {
    HttpResponse<byte[]> r = send("DELETE", bucket, key, Map.of("uploadId", uploadId), Map.of(), null,
        0, 0, false);
    if (r.statusCode() != 404) {
      check(r, "AbortMultipartUpload", bucket, key);
    }
  }

  // ---------------------------------------------------------------- transport

  private HttpResponse<byte[]> send(String method, String bucket, String key, Map<String, String> query,
      Map<String, String> extraHeaders, byte[] body, int off, int len, boolean discardBody)
      throws IOException {
    String path = objectPath(bucket, key);
    String canonicalQuery = SigV4Signer.canonicalQuery(query);
    URI uri = URI.create(endpoint + path + (canonicalQuery.isEmpty() ? "" : "?" + canonicalQuery));
    String payloadHash = body == null ? SigV4Signer.EMPTY_SHA256
        : signPayload ? SigV4Signer.sha256Hex(body, off, len) : SigV4Signer.UNSIGNED_PAYLOAD;
    IOException last = null;
    for (int attempt = 1; attempt <= ATTEMPTS; attempt++) {
      Map<String, String> headers = new TreeMap<>(extraHeaders);
      headers.put("x-amz-date", SigV4Signer.amzDateNow()); // fresh on a retry
      headers.put("x-amz-content-sha256", payloadHash);
      headers.put("host", hostHeader);
      String auth = signer.authorization(method, path, canonicalQuery, headers, payloadHash);
      HttpRequest.Builder request = HttpRequest.newBuilder(uri).timeout(requestTimeout)
          .method(method, body == null ? HttpRequest.BodyPublishers.noBody()
              : HttpRequest.BodyPublishers.ofByteArray(body, off, len))
          .header("Authorization", auth);
      for (Map.Entry<String, String> h : headers.entrySet()) {
        if (!h.getKey().equals("host")) { // the JDK client writes Host itself (the same value)
          request.header(h.getKey(), h.getValue());
        }
      }
      try {
        HttpResponse<byte[]> r = HTTP.send(request.build(), discardBody
            ? info -> HttpResponse.BodySubscribers.replacing(new byte[0])
            : HttpResponse.BodyHandlers.ofByteArray());
        int status = r.statusCode();
        if ((status == 500 || status == 503) && attempt < ATTEMPTS) {
          last = failure(r, method, bucket, key);
          pause(attempt);
          continue;
        }
        return r;
      } catch (InterruptedException e) {
        Thread.currentThread().interrupt();
        throw new InterruptedIOException(method + " " + uri + " interrupted");
      } catch (IOException e) {
        last = e;
        if (attempt < ATTEMPTS) {
          pause(attempt);
        }
      }
    }
    throw new IOException(method + " " + uri + " failed after " + ATTEMPTS + " attempts: " + last, last);
  }

  private static void pause(int attempt) throws InterruptedIOException {
    try {
      Thread.sleep(100L << attempt);
    } catch (InterruptedException e) {
      Thread.currentThread().interrupt();
      throw new InterruptedIOException("interrupted between retries");
    }
  }

  private static void check(HttpResponse<byte[]> r, String op, String bucket, String key)
      throws IOException {
    if (r.statusCode() / 100 != 2) {
      throw failure(r, op, bucket, key);
    }
  }

  private static IOException failure(HttpResponse<byte[]> r, String op, String bucket, String key) {
    String[] error = S3Xml.error(r.body());
    String what = op + " skystore://" + bucket + "/" + key + ": HTTP " + r.statusCode()
        + (error == null ? "" : " " + error[0] + (error[1] == null ? "" : " (" + error[1] + ")"));
    if (r.statusCode() == 404) {
      return new FileNotFoundException(what);
    }
    if (r.statusCode() == 403) {
      return new AccessDeniedException(what);
    }
    return new IOException(what);
  }

  static long httpDateMillis(String value) {
    try {
      return ZonedDateTime.parse(value, DateTimeFormatter.RFC_1123_DATE_TIME).toInstant().toEpochMilli();
    } catch (java.time.format.DateTimeParseException e) {
      return 0L;
    }
  }

  private static String md5Base64(byte[] body) {
    try {
      return Base64.getEncoder().encodeToString(MessageDigest.getInstance("MD5").digest(body));
    } catch (NoSuchAlgorithmException e) {
      throw new IllegalStateException("the JDK has no MD5", e);
    }
  }

  /** Every key under {@code prefix} (no delimiter), all pages. */
  List<ObjectSummary> listAll(String bucket, String prefix) throws IOException {
    List<ObjectSummary> all = new ArrayList<>();
    String token = null;
    do {
      ListPage page = list(bucket, prefix, null, token, 1000);
      all.addAll(page.objects());
      token = page.nextToken();
    } while (token != null);
    return all;
  }
}
