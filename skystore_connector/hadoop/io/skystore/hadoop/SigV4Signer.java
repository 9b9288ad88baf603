package io.skystore.hadoop;

import java.nio.charset.StandardCharsets;
import java.security.GeneralSecurityException;
import java.security.MessageDigest;
import java.time.ZoneOffset;
import java.time.ZonedDateTime;
import java.time.format.DateTimeFormatter;
import java.util.ArrayList;
import java.util.HexFormat;
import java.util.List;
import java.util.Map;
import java.util.SortedMap;
import java.util.TreeMap;
import javax.crypto.Mac;
import javax.crypto.spec.SecretKeySpec;

/**
 * AWS Signature Version 4 for S3 requests sent with header authentication.
 *
 * <p>The canonical request is: method, the URI-encoded path (S3 paths are not normalised or encoded
 * twice), the sorted query with every name and value encoded, the signed headers (lower-case names,
 * trimmed values, sorted), their names joined by ';', and the payload hash. The signing key is
 * HMAC-SHA256 chained over date, region, service and "aws4_request".
 *
 * <p>{@link #main} signs a request given on the command line, so tests can compare the header with
 * botocore's for the same inputs.
 */
public final class SigV4Signer {
  public static final String ALGORITHM = "AWS4-HMAC-SHA256";
  public static final String UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD";
  public static final String EMPTY_SHA256 =
      "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  private static final DateTimeFormatter AMZ_DATE =
      DateTimeFormatter.ofPattern("yyyyMMdd'T'HHmmss'Z'").withZone(ZoneOffset.UTC);

  private final String accessKey;
  private final String secretKey;
  private final String region;
  private final String service;
  // The signing key only changes with the date: cache the last one.
  private String keyDate;
  private byte[] signingKey;

  public SigV4Signer(String accessKey, String secretKey, String region) {
    this(accessKey, secretKey, region, "s3");
  }

  public SigV4Signer(String accessKey, String secretKey, String region, String service) {
    this.accessKey = accessKey;
    this.secretKey = secretKey;
    this.region = region;
    this.service = service;
  }

  /** The x-amz-date value for now. */
  public static String amzDateNow() {
    return AMZ_DATE.format(ZonedDateTime.now(ZoneOffset.UTC));
  }

  /**
   * The Authorization header value. {@code headers} are the headers to sign, Host, X-Amz-Date and
   * X-Amz-Content-SHA256 included; {@code canonicalPath} is the path exactly as sent.
   */
  public String authorization(String method, String canonicalPath, String canonicalQuery,
      Map<String, String> headers, String payloadHash) {
    SortedMap<String, String> canonical = new TreeMap<>();
    for (Map.Entry<String, String> h : headers.entrySet()) {
      canonical.put(h.getKey().toLowerCase(java.util.Locale.ROOT), collapse(h.getValue()));
    }
    String amzDate = canonical.get("x-amz-date");
    if (amzDate == null || amzDate.length() < 8) {
      throw new IllegalArgumentException("the headers to sign need x-amz-date");
    }
    StringBuilder request = new StringBuilder();
    request.append(method).append('\n').append(canonicalPath).append('\n')
        .append(canonicalQuery).append('\n');
    for (Map.Entry<String, String> h : canonical.entrySet()) {
      request.append(h.getKey()).append(':').append(h.getValue()).append('\n');
    }
    String signedHeaders = String.join(";", canonical.keySet());
    request.append('\n').append(signedHeaders).append('\n').append(payloadHash);

    String date = amzDate.substring(0, 8);
    String scope = date + "/" + region + "/" + service + "/aws4_request";
    String stringToSign = ALGORITHM + "\n" + amzDate + "\n" + scope + "\n"
        + sha256Hex(request.toString().getBytes(StandardCharsets.UTF_8));
    String signature = HexFormat.of().formatHex(
        hmac(signingKey(date), stringToSign.getBytes(StandardCharsets.UTF_8)));
    return ALGORITHM + " Credential=" + accessKey + "/" + scope + ", SignedHeaders="
        + signedHeaders + ", Signature=" + signature;
  }

  private synchronized byte[] signingKey(String date) {
    if (!date.equals(keyDate)) {
      byte[] k = hmac(("AWS4" + secretKey).getBytes(StandardCharsets.UTF_8), utf8(date));
      k = hmac(k, utf8(region));
      k = hmac(k, utf8(service));
      signingKey = hmac(k, utf8("aws4_request"));
      keyDate = date;
    }
    return signingKey;
  }

  /** Query parameters as SigV4 wants them: sorted by encoded name, names and values encoded. */
  public static String canonicalQuery(Map<String, String> params) {
    SortedMap<String, String> sorted = new TreeMap<>();
    for (Map.Entry<String, String> p : params.entrySet()) {
      String value = p.getValue() == null ? "" : p.getValue();
      sorted.put(uriEncode(p.getKey(), false), uriEncode(value, false));
    }
    List<String> parts = new ArrayList<>();
    for (Map.Entry<String, String> p : sorted.entrySet()) {
      parts.add(p.getKey() + "=" + p.getValue());
    }
    return String.join("&", parts);
  }

  /** RFC 3986 encoding of UTF-8 bytes; only A-Z a-z 0-9 - _ . ~ (and '/' if asked) stay as they are. */
  public static String uriEncode(String s, boolean keepSlash) {
    StringBuilder out = new StringBuilder(s.length() + 8);
    for (byte b : s.getBytes(StandardCharsets.UTF_8)) {
      int c = b & 0xff;
      boolean unreserved = (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9')
          || c == '-' || c == '_' || c == '.' || c == '~' || (keepSlash && c == '/');
      if (unreserved) {
        out.append((char) c);
      } else {
        out.append('%').append(Character.toUpperCase(Character.forDigit(c >> 4, 16)))
            .append(Character.toUpperCase(Character.forDigit(c & 0xf, 16)));
      }
    }
    return out.toString();
  }

  public static String sha256Hex(byte[] data) {
    return sha256Hex(data, 0, data.length);
  }

  public static String sha256Hex(byte[] data, int off, int len) {
    try {
      MessageDigest md = MessageDigest.getInstance("SHA-256");
      md.update(data, off, len);
      return HexFormat.of().formatHex(md.digest());
    } catch (GeneralSecurityException e) {
      throw new IllegalStateException("the JDK has no SHA-256", e);
    }
  }

  private static byte[] hmac(byte[] key, byte[] data) {
    try {
      Mac mac = Mac.getInstance("HmacSHA256");
      mac.init(new SecretKeySpec(key, "HmacSHA256"));
      return mac.doFinal(data);
    } catch (GeneralSecurityException e) {
      throw new IllegalStateException("the JDK has no HmacSHA256", e);
    }
  }

  private static byte[] utf8(String s) {
    return s.getBytes(StandardCharsets.UTF_8);
  }

  /** Header values are trimmed and runs of spaces collapsed to one. */
  private static String collapse(String value) {
    return value.trim().replaceAll(" +", " ");
  }

  /**
   * Signs requests given on the command line and prints, for each, the URL path, the canonical
   * query and the Authorization header (three lines). Requests are separated by {@code --}:
   *
   * <pre>
   * java -cp skystore-hadoop.jar io.skystore.hadoop.SigV4Signer ACCESS SECRET REGION METHOD \
   *     BUCKET KEY PAYLOAD_HASH [-q name=value]... [-h name:value]... [-- ACCESS SECRET ...]
   * </pre>
   * Names and values are given decoded; X-Amz-Date, Host and X-Amz-Content-SHA256 go in -h.
   */
  public static void main(String[] args) {
    List<String> request = new ArrayList<>();
    for (String arg : args) {
      if (arg.equals("--")) {
        printSigned(request);
        request.clear();
      } else {
        request.add(arg);
      }
    }
    printSigned(request);
  }

  private static void printSigned(List<String> args) {
    if (args.size() < 7 || args.size() % 2 == 0) {
      throw new IllegalArgumentException("usage: ACCESS SECRET REGION METHOD BUCKET KEY PAYLOAD_HASH"
          + " [-q name=value]... [-h name:value]... [-- ...], got " + args);
    }
    Map<String, String> query = new TreeMap<>();
    Map<String, String> headers = new TreeMap<>();
    for (int i = 7; i + 1 < args.size(); i += 2) {
      String arg = args.get(i + 1);
      if (args.get(i).equals("-q")) {
        int eq = arg.indexOf('=');
        query.put(eq < 0 ? arg : arg.substring(0, eq), eq < 0 ? "" : arg.substring(eq + 1));
      } else if (args.get(i).equals("-h")) {
        int colon = arg.indexOf(':');
        headers.put(arg.substring(0, colon), arg.substring(colon + 1));
      } else {
        throw new IllegalArgumentException("unknown flag " + args.get(i));
      }
    }
    String path = SkyStoreClient.objectPath(args.get(4), args.get(5));
    String canonicalQuery = canonicalQuery(query);
    SigV4Signer signer = new SigV4Signer(args.get(0), args.get(1), args.get(2));
    System.out.println(path);
    System.out.println(canonicalQuery);
    System.out.println(signer.authorization(args.get(3), path, canonicalQuery, headers, args.get(6)));
  }
}
