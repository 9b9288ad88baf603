package io.skystore.hadoop;

import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.time.Instant;
import java.util.ArrayList;
import java.util.List;
import javax.xml.XMLConstants;
import javax.xml.parsers.DocumentBuilder;
import javax.xml.parsers.DocumentBuilderFactory;
import javax.xml.parsers.ParserConfigurationException;
import org.w3c.dom.Document;
import org.w3c.dom.Element;
import org.w3c.dom.Node;
import org.w3c.dom.NodeList;
import org.xml.sax.SAXException;

/** Reads the XML bodies of S3 responses (JDK DOM) and writes the few request bodies S3 wants. */
final class S3Xml {
  private S3Xml() {}

  static Document parse(byte[] body) throws IOException {
    try {
      DocumentBuilderFactory factory = DocumentBuilderFactory.newInstance();
      factory.setNamespaceAware(false);
      factory.setExpandEntityReferences(false);
      // Responses never need a DTD; refusing them rules out entity tricks from a rogue server.
      trySetFeature(factory, "http://apache.org/xml/features/disallow-doctype-decl", true);
      trySetFeature(factory, XMLConstants.FEATURE_SECURE_PROCESSING, true);
      DocumentBuilder builder = factory.newDocumentBuilder();
      return builder.parse(new ByteArrayInputStream(body));
    } catch (ParserConfigurationException | SAXException e) {
      throw new IOException("unreadable XML from the SkyStore gateway: " + e.getMessage(), e);
    }
  }

  private static void trySetFeature(DocumentBuilderFactory factory, String feature, boolean on) {
    try {
      factory.setFeature(feature, on);
    } catch (ParserConfigurationException e) {
      // a parser without that feature: the defaults stay
    }
  }

  static ListPage listPage(byte[] body) throws IOException {
    Element root = parse(body).getDocumentElement();
    List<ObjectSummary> objects = new ArrayList<>();
    for (Element c : children(root, "Contents")) {
      objects.add(new ObjectSummary(text(c, "Key"), parseLong(text(c, "Size")),
          isoMillis(text(c, "LastModified"))));
    }
    List<String> prefixes = new ArrayList<>();
    for (Element p : children(root, "CommonPrefixes")) {
      prefixes.add(text(p, "Prefix"));
    }
    boolean truncated = "true".equalsIgnoreCase(text(root, "IsTruncated"));
    String token = truncated ? text(root, "NextContinuationToken") : null;
    if (truncated && (token == null || token.isEmpty())) {
      throw new IOException("a truncated listing without NextContinuationToken");
    }
    return new ListPage(objects, prefixes, token);
  }

  static String uploadId(byte[] body) throws IOException {
    String id = text(parse(body).getDocumentElement(), "UploadId");
    if (id == null || id.isEmpty()) {
      throw new IOException("CreateMultipartUpload answered without an UploadId");
    }
    return id;
  }

  /** {code, message} when the body is an S3 {@code <Error>} document, else null. */
  static String[] error(byte[] body) {
    if (body == null || body.length == 0) {
      return null;
    }
    try {
      Element root = parse(body).getDocumentElement();
      if (!"Error".equals(root.getTagName())) {
        return null;
      }
      return new String[] {text(root, "Code"), text(root, "Message")};
    } catch (IOException e) {
      return null;
    }
  }

  /** "key: code message" for every key a DeleteObjects request could not delete. */
  static List<String> deleteErrors(byte[] body) throws IOException {
    List<String> errors = new ArrayList<>();
    for (Element e : children(parse(body).getDocumentElement(), "Error")) {
      errors.add(text(e, "Key") + ": " + text(e, "Code") + " " + text(e, "Message"));
    }
    return errors;
  }

  static byte[] deleteRequest(List<String> keys) {
    StringBuilder xml = new StringBuilder("<Delete><Quiet>true</Quiet>");
    for (String key : keys) {
      xml.append("<Object><Key>").append(escape(key)).append("</Key></Object>");
    }
    return xml.append("</Delete>").toString().getBytes(StandardCharsets.UTF_8);
  }

  static byte[] completeRequest(List<String> etags) {
    StringBuilder xml = new StringBuilder("<CompleteMultipartUpload>");
    for (int i = 0; i < etags.size(); i++) {
      xml.append("<Part><PartNumber>").append(i + 1).append("</PartNumber><ETag>")
          .append(escape(etags.get(i))).append("</ETag></Part>");
    }
    return xml.append("</CompleteMultipartUpload>").toString().getBytes(StandardCharsets.UTF_8);
  }

  static long isoMillis(String iso) {
    if (iso == null || iso.isEmpty()) {
      return 0L;
    }
    try {
      return Instant.parse(iso).toEpochMilli();
    } catch (java.time.format.DateTimeParseException e) {
      return 0L;
    }
  }

  private static long parseLong(String s) throws IOException {
    try {
      return Long.parseLong(s.trim());
    } catch (NullPointerException | NumberFormatException e) {
      throw new IOException("a listing entry without a valid Size: " + s);
    }
  }

  private static List<Element> children(Element parent, String tag) {
    List<Element> out = new ArrayList<>();
    NodeList nodes = parent.getChildNodes();
    for (int i = 0; i < nodes.getLength(); i++) {
      Node n = nodes.item(i);
      if (n instanceof Element e && tag.equals(e.getTagName())) {
        out.add(e);
      }
    }
    return out;
  }

  /** Text of the first direct child named {@code tag}, or null. */
  private static String text(Element parent, String tag) {
    List<Element> found = children(parent, tag);
    return found.isEmpty() ? null : found.get(0).getTextContent();
  }

  private static String escape(String s) {
    return s.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
        .replace("\"", "&quot;").replace("'", "&apos;");
  }
}
