package io.skystore.hadoop;

import java.io.FileNotFoundException;
import java.io.IOException;
import java.net.URI;
import java.time.Duration;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.conf.Configuration;
import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileAlreadyExistsException;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.ParentNotDirectoryException;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.PathIsNotEmptyDirectoryException;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.util.Progressable;

/**
 * Hadoop {@link FileSystem} for {@code skystore://bucket/key}: a SkyStore virtual bucket reached
 * through the gateway's S3 API (path-style, SigV4).
 *
 * <p>Directories are implied by keys ({@code a/b} exists as a directory when some key starts with
 * {@code a/b/}) or made explicit by an empty marker object {@code a/b/} (written by {@link #mkdirs},
 * and when a delete or rename would otherwise make a parent directory vanish). Rename is copy then
 * delete, key by key: not atomic, but what FileOutputCommitter needs.
 *
 * <p>Configuration (each {@code fs.skystore.X} may also come from the environment as noted):
 * <pre>
 * fs.skystore.impl            io.skystore.hadoop.SkyStoreFileSystem
 * fs.skystore.endpoint        gateway URL, e.g. http://127.0.0.1:9000   (SKYSTORE_ENDPOINT)
 * fs.skystore.access.key      access key id                             (SKYSTORE_ACCESS_KEY)
 * fs.skystore.secret.key      secret key                                (SKYSTORE_SECRET_KEY)
 * fs.skystore.region          region of this client: SigV4 scope         (SKYSTORE_REGION, us-east-1)
 *                             (aws-us-east-1 or aws:us-east-1: the gateway reads either spelling)
 * fs.skystore.multipart.size  part size of uploads, at least 5M (8M)
 * fs.skystore.readahead       bytes one GET fetches for small reads (1M)
 * fs.skystore.block.size      block size reported to split planners (128M)
 * fs.skystore.sign.payload    sign body hashes, else UNSIGNED-PAYLOAD (true)
 * fs.skystore.request.timeout seconds one request may take (300)
 * </pre>
 */
public class SkyStoreFileSystem extends FileSystem {
  public static final String SCHEME = "skystore";
  public static final String PREFIX = "fs.skystore.";
  static final long MIN_PART_SIZE = 5L << 20; // S3's smallest non-final part

  private URI uri;
  private String bucket;
  private Path workingDir;
  private SkyStoreClient client;
  private int partSize;
  private int readAhead;
  private long blockSize;

  @Override
  public void initialize(URI name, Configuration conf) throws IOException {
    super.initialize(name, conf);
    setConf(conf);
    bucket = name.getAuthority();
    if (bucket == null || bucket.isEmpty()) {
      throw new IllegalArgumentException(
          "a skystore:// path needs a bucket: skystore://BUCKET/key, got " + name);
    }
    uri = URI.create(SCHEME + "://" + bucket);
    workingDir = new Path(SCHEME, bucket, "/");

    String endpoint = setting(conf, "endpoint", "SKYSTORE_ENDPOINT", null);
    String accessKey = setting(conf, "access.key", "SKYSTORE_ACCESS_KEY", null);
    String secretKey = secret(conf);
    String region = setting(conf, "region", "SKYSTORE_REGION", "us-east-1");
    if (endpoint == null || endpoint.isEmpty()) {
      throw new IOException("no SkyStore gateway configured for " + uri + ": set " + PREFIX
          + "endpoint (spark.hadoop." + PREFIX + "endpoint in Spark) or SKYSTORE_ENDPOINT");
    }
    if (accessKey == null || secretKey == null) {
      throw new IOException("no SkyStore credentials for " + uri + ": set " + PREFIX + "access.key and "
          + PREFIX + "secret.key (or SKYSTORE_ACCESS_KEY and SKYSTORE_SECRET_KEY)");
    }
    long part = Math.max(MIN_PART_SIZE, conf.getLongBytes(PREFIX + "multipart.size", 8L << 20));
    partSize = (int) Math.min(part, Integer.MAX_VALUE - 16);
    readAhead = (int) Math.min(conf.getLongBytes(PREFIX + "readahead", 1L << 20), Integer.MAX_VALUE - 16);
    blockSize = conf.getLongBytes(PREFIX + "block.size", 128L << 20);
    boolean signPayload = conf.getBoolean(PREFIX + "sign.payload", true);
    Duration timeout = Duration.ofSeconds(conf.getLong(PREFIX + "request.timeout", 300));
    client = new SkyStoreClient(URI.create(endpoint), accessKey, secretKey, region, signPayload, timeout);
  }

  private static String setting(Configuration conf, String name, String env, String fallback) {
    String value = conf.getTrimmed(PREFIX + name);
    if (value == null || value.isEmpty()) {
      value = System.getenv(env);
    }
    return value == null || value.isEmpty() ? fallback : value;
  }

  private static String secret(Configuration conf) throws IOException {
    char[] fromConf = conf.getPassword(PREFIX + "secret.key"); // also reads credential providers
    if (fromConf != null && fromConf.length > 0) {
      return new String(fromConf);
    }
    String env = System.getenv("SKYSTORE_SECRET_KEY");
    return env == null || env.isEmpty() ? null : env;
  }

  @Override
  public String getScheme() {
    return SCHEME;
  }

  @Override
  public URI getUri() {
    return uri;
  }

  @Override
  public Path getWorkingDirectory() {
    return workingDir;
  }

  @Override
  public void setWorkingDirectory(Path dir) {
    workingDir = makeQualified(dir);
  }

  @Override
  public long getDefaultBlockSize(Path f) {
    return blockSize;
  }

  @Override
  @SuppressWarnings("deprecation") // still called by older callers; same answer as the Path form
  public long getDefaultBlockSize() {
    return blockSize;
  }

  @Override
  public String getCanonicalServiceName() {
    return null; // no delegation tokens
  }

  // ---------------------------------------------------------------- reads

  @Override
  public FSDataInputStream open(Path f, int bufferSize) throws IOException {
    Path path = makeQualified(f);
    String key = keyOf(path);
    ObjectSummary object = key.isEmpty() ? null : client.head(bucket, key);
    if (object == null) {
      if (statusOrNull(path) != null) {
        throw new FileNotFoundException("cannot open a directory: " + path);
      }
      throw new FileNotFoundException("no such file: " + path);
    }
    return new FSDataInputStream(
        new SkyStoreInputStream(client, bucket, key, object.size(), readAhead, statistics));
  }

  @Override
  public FileStatus getFileStatus(Path f) throws IOException {
    FileStatus status = statusOrNull(makeQualified(f));
    if (status == null) {
      throw new FileNotFoundException("no such file or directory: " + makeQualified(f));
    }
    return status;
  }

  /** A file (HEAD), else a directory (some key under "key/", a marker included), else null. */
  private FileStatus statusOrNull(Path path) throws IOException {
    String key = keyOf(path);
    if (key.isEmpty()) {
      return directory(path);
    }
    ObjectSummary object = client.head(bucket, key);
    if (object != null) {
      return file(path, object);
    }
    return hasKeysUnder(key) ? directory(path) : null;
  }

  private boolean hasKeysUnder(String key) throws IOException {
    ListPage page = client.list(bucket, key + "/", null, null, 1);
    return !page.objects().isEmpty() || !page.prefixes().isEmpty();
  }

  @Override
  public FileStatus[] listStatus(Path f) throws IOException {
    Path path = makeQualified(f);
    String key = keyOf(path);
    String prefix = key.isEmpty() ? "" : key + "/";
    List<FileStatus> out = new ArrayList<>();
    String token = null;
    do {
      ListPage page = client.list(bucket, prefix, "/", token, 1000);
      for (ObjectSummary o : page.objects()) {
        if (!o.key().equals(prefix)) { // the directory's own marker is not a child
          out.add(file(pathOf(o.key()), o));
        }
      }
      for (String p : page.prefixes()) {
        String child = p.substring(0, p.length() - 1);
        if (child.length() > prefix.length()) {
          out.add(directory(pathOf(child)));
        }
      }
      token = page.nextToken();
    } while (token != null);
    if (out.isEmpty() && !key.isEmpty()) {
      FileStatus self = getFileStatus(path); // a file lists as itself; nothing at all is an error
      if (self.isFile()) {
        return new FileStatus[] {self};
      }
    }
    return out.toArray(new FileStatus[0]);
  }

  // ---------------------------------------------------------------- writes

  @Override
  public FSDataOutputStream create(Path f, FsPermission permission, boolean overwrite, int bufferSize,
      short replication, long blockSize, Progressable progress) throws IOException {
    Path path = makeQualified(f);
    String key = keyOf(path);
    FileStatus existing = statusOrNull(path);
    if (existing != null && existing.isDirectory()) {
      throw new FileAlreadyExistsException("a directory exists at " + path);
    }
    if (existing != null && !overwrite) {
      throw new FileAlreadyExistsException("file exists (overwrite is false): " + path);
    }
    return new FSDataOutputStream(new SkyStoreOutputStream(client, bucket, key, partSize, statistics),
        statistics);
  }

  @Override
  public FSDataOutputStream createNonRecursive(Path f, FsPermission permission, boolean overwrite,
      int bufferSize, short replication, long blockSize, Progressable progress) throws IOException {
    // Parents are implied by keys: creating one never needs the parent to exist first.
    return create(f, permission, overwrite, bufferSize, replication, blockSize, progress);
  }

  @Override
  public FSDataOutputStream append(Path f, int bufferSize, Progressable progress) {
    throw new UnsupportedOperationException("append is not supported by skystore:// (objects are immutable)");
  }

  @Override
  public boolean mkdirs(Path f, FsPermission permission) throws IOException {
    Path path = makeQualified(f);
    String key = keyOf(path);
    if (key.isEmpty()) {
      return true;
    }
    FileStatus existing = statusOrNull(path);
    if (existing != null) {
      if (existing.isDirectory()) {
        return true;
      }
      throw new FileAlreadyExistsException("a file exists at " + path);
    }
    for (Path p = path.getParent(); p != null && !p.isRoot(); p = p.getParent()) {
      if (client.head(bucket, keyOf(p)) != null) {
        throw new ParentNotDirectoryException(p + " is a file, not a directory");
      }
    }
    client.put(bucket, key + "/", new byte[0], 0);
    return true;
  }

  @Override
  public boolean delete(Path f, boolean recursive) throws IOException {
    Path path = makeQualified(f);
    String key = keyOf(path);
    if (key.isEmpty()) {
      return false; // never wipe a whole bucket through the file system API
    }
    if (client.head(bucket, key) != null) {
      client.delete(bucket, key);
      keepParentDirectory(path);
      return true;
    }
    List<String> keys = keysUnder(key);
    if (keys.isEmpty()) {
      return false;
    }
    boolean onlyMarker = keys.size() == 1 && keys.get(0).equals(key + "/");
    if (!onlyMarker && !recursive) {
      throw new PathIsNotEmptyDirectoryException(path.toString());
    }
    client.deleteAll(bucket, keys);
    keepParentDirectory(path);
    return true;
  }

  @Override
  public boolean rename(Path src, Path dst) throws IOException {
    Path from = makeQualified(src);
    Path to = makeQualified(dst);
    String fromKey = keyOf(from);
    if (fromKey.isEmpty()) {
      return false;
    }
    FileStatus source = statusOrNull(from);
    if (source == null) {
      return false;
    }
    FileStatus target = statusOrNull(to);
    if (target != null && target.isDirectory()) { // into an existing directory, keeping the name
      to = new Path(to, from.getName());
      target = statusOrNull(to);
    }
    String toKey = keyOf(to);
    if (toKey.equals(fromKey)) {
      return source.isFile();
    }
    if (target != null) {
      return false; // never overwrite
    }
    if (source.isDirectory() && toKey.startsWith(fromKey + "/")) {
      return false; // into its own subtree
    }
    Path toParent = to.getParent();
    if (toParent != null && !toParent.isRoot() && client.head(bucket, keyOf(toParent)) != null) {
      return false; // the target's parent is a file
    }
    if (source.isFile()) {
      client.copy(bucket, fromKey, toKey);
      client.delete(bucket, fromKey);
    } else {
      List<String> keys = keysUnder(fromKey);
      int cut = fromKey.length();
      for (String k : keys) {
        client.copy(bucket, k, toKey + k.substring(cut));
      }
      client.deleteAll(bucket, keys);
    }
    keepParentDirectory(from);
    return true;
  }

  /** Every key under the directory {@code key} (its marker included). */
  private List<String> keysUnder(String key) throws IOException {
    List<String> keys = new ArrayList<>();
    for (ObjectSummary o : client.listAll(bucket, key + "/")) {
      keys.add(o.key());
    }
    return keys;
  }

  /** After removing {@code path}, a marker keeps its parent directory when nothing else does. */
  private void keepParentDirectory(Path path) throws IOException {
    Path parent = path.getParent();
    if (parent == null || parent.isRoot()) {
      return;
    }
    String parentKey = keyOf(parent);
    if (!hasKeysUnder(parentKey)) {
      client.put(bucket, parentKey + "/", new byte[0], 0);
    }
  }

  // ---------------------------------------------------------------- paths

  /** The object key of a path of this bucket: its path without the leading '/'. */
  private String keyOf(Path path) {
    Path qualified = makeQualified(path);
    String p = qualified.toUri().getPath();
    return p.startsWith("/") ? p.substring(1) : p;
  }

  private Path pathOf(String key) {
    return new Path(SCHEME, bucket, "/" + key);
  }

  private FileStatus file(Path path, ObjectSummary o) {
    return new FileStatus(o.size(), false, 1, blockSize, o.modifiedMillis(), path);
  }

  private static FileStatus directory(Path path) {
    return new FileStatus(0, true, 1, 0, 0, path);
  }
}
