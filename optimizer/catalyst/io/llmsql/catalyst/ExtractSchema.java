package io.llmsql.catalyst;

import java.util.ArrayList;
import java.util.HashSet;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.Set;

import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;

import org.apache.spark.sql.types.ArrayType;
import org.apache.spark.sql.types.DataType;
import org.apache.spark.sql.types.DataTypes;
import org.apache.spark.sql.types.Metadata;
import org.apache.spark.sql.types.StructField;
import org.apache.spark.sql.types.StructType;

/**
 * {@code llm_extract}'s schema option to the Spark type of its value. The Python side
 * ({@code udf/extract.py}) reads the same text to validate each answer; this class must give the type
 * Python's {@code output_schema(text).spark_type} names (tests/test_extract_spark.py checks every
 * spelling in {@link #SPELLINGS}).
 *
 * <p>A schema is a field list or a JSON schema of an object (text starting with <code>{</code>).
 * Field list: {@code name [:] type, ...}, names plain, "double-quoted" or `backquoted`; types
 * {@code ARRAY<T>}, {@code T[]}, {@code STRUCT<...>} or {@code STRUCT(...)}, and the scalar spellings
 * of DuckDB and Spark in {@link #SPELLINGS} (a length or precision in parentheses is ignored).
 * JSON schema: types string, integer (INT), number (DOUBLE), boolean, array (items), object
 * (properties), and enum (of strings, a STRING).
 */
final class ExtractSchema {
  /** Every accepted scalar spelling (upper case) and its Spark type, as sqlglot reads it in udf/extract.py. */
  static final Map<String, DataType> SPELLINGS = Map.ofEntries(
      Map.entry("STRING", DataTypes.StringType), Map.entry("VARCHAR", DataTypes.StringType),
      Map.entry("TEXT", DataTypes.StringType), Map.entry("CHAR", DataTypes.StringType),
      Map.entry("NVARCHAR", DataTypes.StringType), Map.entry("NCHAR", DataTypes.StringType),
      Map.entry("BPCHAR", DataTypes.StringType),
      Map.entry("INT", DataTypes.IntegerType), Map.entry("INTEGER", DataTypes.IntegerType),
      Map.entry("INT4", DataTypes.IntegerType), Map.entry("INT2", DataTypes.IntegerType),
      Map.entry("INT1", DataTypes.IntegerType), Map.entry("TINYINT", DataTypes.IntegerType),
      Map.entry("SMALLINT", DataTypes.IntegerType), Map.entry("SHORT", DataTypes.IntegerType),
      Map.entry("BYTE", DataTypes.IntegerType),
      Map.entry("BIGINT", DataTypes.LongType), Map.entry("LONG", DataTypes.LongType),
      Map.entry("INT8", DataTypes.LongType), Map.entry("INT64", DataTypes.LongType),
      Map.entry("DOUBLE", DataTypes.DoubleType), Map.entry("FLOAT8", DataTypes.DoubleType),
      Map.entry("FLOAT", DataTypes.DoubleType), Map.entry("FLOAT4", DataTypes.DoubleType),
      Map.entry("REAL", DataTypes.DoubleType), Map.entry("DECIMAL", DataTypes.DoubleType),
      Map.entry("NUMERIC", DataTypes.DoubleType), Map.entry("DEC", DataTypes.DoubleType),
      Map.entry("BOOLEAN", DataTypes.BooleanType), Map.entry("BOOL", DataTypes.BooleanType),
      Map.entry("LOGICAL", DataTypes.BooleanType));

  static final String FIELD_LIST = "a field list like 'brewery STRING, abv DOUBLE, styles ARRAY<STRING>'";
  static final String EXAMPLE = FIELD_LIST + " or a JSON schema";

  private ExtractSchema() {}

  /** The STRUCT type of {@code spec}; IllegalArgumentException saying what is wrong. */
  static StructType parse(String spec) {
    if (spec == null || spec.trim().isEmpty()) {
      throw new IllegalArgumentException("llm_extract needs the option schema: " + EXAMPLE);
    }
    String text = spec.trim();
    if (text.startsWith("{")) {
      JsonNode root;
      try {
        root = new ObjectMapper().readTree(text);
      } catch (com.fasterxml.jackson.core.JsonProcessingException e) {
        throw new IllegalArgumentException("schema is not valid JSON: " + e.getOriginalMessage());
      }
      DataType t = fromJson(root, "schema");
      if (!(t instanceof StructType)) {
        throw new IllegalArgumentException(
            "schema must describe an object (a field list, or a JSON schema of type object)");
      }
      return (StructType) t;
    }
    Ddl ddl = new Ddl(text);
    StructType t = ddl.fields(null);
    ddl.expectEnd();
    return t;
  }

  /** The names of a JSON-schema's types, in udf/extract.py's order. */
  private static final List<String> JSON_KINDS =
      List.of("string", "integer", "number", "boolean", "array", "object");

  private static DataType fromJson(JsonNode s, String where) {
    if (s == null || !s.isObject()) {
      throw new IllegalArgumentException(where + " must be a JSON object");
    }
    if (s.has("enum")) {
      JsonNode values = s.get("enum");
      boolean ok = values.isArray() && values.size() > 0;
      for (JsonNode v : values) {
        ok &= v.isTextual();
      }
      if (!ok) {
        throw new IllegalArgumentException(where + ": enum must list strings");
      }
      return DataTypes.StringType;
    }
    JsonNode kind = s.get("type");
    if (kind == null || !kind.isTextual() || !JSON_KINDS.contains(kind.asText())) {
      throw new IllegalArgumentException(where + ": type must be one of " + String.join(", ", JSON_KINDS)
          + ", got " + kind);
    }
    switch (kind.asText()) {
      case "string":
        return DataTypes.StringType;
      case "integer":
        return DataTypes.IntegerType;
      case "number":
        return DataTypes.DoubleType;
      case "boolean":
        return DataTypes.BooleanType;
      case "array":
        return new ArrayType(fromJson(s.get("items"), where + ".items"), true);
      default:
        JsonNode props = s.get("properties");
        if (props == null || !props.isObject() || props.size() == 0) {
          throw new IllegalArgumentException(where + ": an object needs properties");
        }
        List<StructField> fields = new ArrayList<>();
        for (Map.Entry<String, JsonNode> p : props.properties()) {
          fields.add(field(p.getKey(), fromJson(p.getValue(), where + "." + p.getKey())));
        }
        return new StructType(fields.toArray(new StructField[0]));
    }
  }

  private static StructField field(String name, DataType type) {
    return new StructField(name, type, true, Metadata.empty());
  }

  /** A recursive-descent reader of a field list (one token of look-ahead). */
  private static final class Ddl {
    private final String text;
    private int pos;

    Ddl(String text) {
      this.text = text;
    }

    /** Fields up to {@code close} (or the end when null), e.g. {@code a INT, b: ARRAY<STRING>}. */
    StructType fields(String close) {
      List<StructField> out = new ArrayList<>();
      Set<String> seen = new HashSet<>();
      do {
        String name = name();
        accept(":");
        if (!seen.add(name.toLowerCase(Locale.ROOT))) {
          throw error("field " + name + " is given twice");
        }
        out.add(field(name, type()));
      } while (accept(","));
      if (close != null) {
        expect(close);
      }
      return new StructType(out.toArray(new StructField[0]));
    }

    DataType type() {
      String word = word();
      String upper = word.toUpperCase(Locale.ROOT);
      DataType t;
      if (upper.equals("ARRAY")) {
        expect("<");
        t = new ArrayType(type(), true);
        expect(">");
      } else if (upper.equals("STRUCT")) {
        String close = accept("(") ? ")" : accept("<") ? ">" : null;
        if (close == null) {
          throw error("STRUCT needs its fields in (...) or <...>");
        }
        t = fields(close);
      } else {
        t = SPELLINGS.get(upper);
        if (t == null) {
          throw new IllegalArgumentException("schema: unsupported type " + word + "; supported: STRING (VARCHAR), "
              + "INT, BIGINT, DOUBLE, BOOLEAN, ARRAY<T> (T[]) and STRUCT<...> (STRUCT(...))");
        }
        if (accept("(")) { // VARCHAR(10), DECIMAL(5, 2): the size does not change the type
          number();
          if (accept(",")) {
            number();
          }
          expect(")");
        }
      }
      while (accept("[")) {
        expect("]");
        t = new ArrayType(t, true);
      }
      return t;
    }

    private String name() {
      skipSpace();
      if (pos < text.length() && (text.charAt(pos) == '"' || text.charAt(pos) == '`')) {
        char q = text.charAt(pos++);
        StringBuilder b = new StringBuilder();
        while (pos < text.length()) {
          char c = text.charAt(pos++);
          if (c == q && pos < text.length() && text.charAt(pos) == q) {
            b.append(q); // a doubled quote is the quote itself
            pos++;
          } else if (c == q) {
            return b.toString();
          } else {
            b.append(c);
          }
        }
        throw error("a quoted name is not closed");
      }
      return word();
    }

    private String word() {
      skipSpace();
      int start = pos;
      while (pos < text.length() && (Character.isLetterOrDigit(text.charAt(pos)) || text.charAt(pos) == '_')) {
        pos++;
      }
      if (start == pos || Character.isDigit(text.charAt(start))) {
        throw error("expected a name or a type");
      }
      return text.substring(start, pos);
    }

    private void number() {
      skipSpace();
      int start = pos;
      while (pos < text.length() && Character.isDigit(text.charAt(pos))) {
        pos++;
      }
      if (start == pos) {
        throw error("expected a number");
      }
    }

    private boolean accept(String token) {
      skipSpace();
      if (text.startsWith(token, pos)) {
        pos += token.length();
        return true;
      }
      return false;
    }

    private void expect(String token) {
      if (!accept(token)) {
        throw error("expected '" + token + "'");
      }
    }

    void expectEnd() {
      skipSpace();
      if (pos < text.length()) {
        throw error("expected ',' or the end");
      }
    }

    private void skipSpace() {
      while (pos < text.length() && Character.isWhitespace(text.charAt(pos))) {
        pos++;
      }
    }

    private IllegalArgumentException error(String what) {
      String at = pos < text.length() ? "at '" + text.substring(pos, Math.min(text.length(), pos + 12)) + "'"
          : "at the end";
      return new IllegalArgumentException("schema '" + text + "' is not " + FIELD_LIST + ": " + what + " " + at);
    }
  }
}
