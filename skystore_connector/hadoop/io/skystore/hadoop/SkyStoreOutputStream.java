package io.skystore.hadoop;

import java.io.IOException;
import java.io.OutputStream;
import java.util.ArrayList;
import java.util.List;
import org.apache.hadoop.fs.FileSystem;

/**
 * Writes one object. Bytes collect in memory up to the part size; a file that fits goes up with a
 * single PUT at close, a larger one as a multipart upload (a part each time the buffer is full and
 * more bytes come, the rest and CompleteMultipartUpload at close). Any failure aborts the upload,
 * so a failed write leaves no object and no parts behind. Nothing is visible before close.
 */
final class SkyStoreOutputStream extends OutputStream {
  private static final int FIRST_BUFFER = 64 * 1024;

  private final SkyStoreClient client;
  private final String bucket;
  private final String key;
  private final int partSize;
  private final FileSystem.Statistics stats;

  private byte[] buffer;
  private int count;
  private long total;
  private String uploadId;
  private final List<String> etags = new ArrayList<>();
  private boolean closed;

  SkyStoreOutputStream(SkyStoreClient client, String bucket, String key, int partSize,
      FileSystem.Statistics stats) {
    this.client = client;
    this.bucket = bucket;
    this.key = key;
    this.partSize = partSize;
    this.stats = stats;
    this.buffer = new byte[Math.min(FIRST_BUFFER, partSize)];
  }

  @Override
  public void write(int b) throws IOException {
    write(new byte[] {(byte) b}, 0, 1);
  }

  @Override
  public synchronized void write(byte[] b, int off, int len) throws IOException {
    checkOpen();
    java.util.Objects.checkFromIndexSize(off, len, b.length);
    while (len > 0) {
      if (count == partSize) {
        uploadBufferedPart();
      }
      int n = Math.min(len, partSize - count);
      grow(count + n);
      System.arraycopy(b, off, buffer, count, n);
      count += n;
      total += n;
      off += n;
      len -= n;
    }
  }

  @Override
  public void flush() {
    // S3 objects appear whole at close; there is nothing to push earlier.
  }

  @Override
  public synchronized void close() throws IOException {
    if (closed) {
      return;
    }
    closed = true;
    try {
      if (uploadId == null) {
        client.put(bucket, key, buffer, count);
        if (stats != null) {
          stats.incrementWriteOps(1);
        }
      } else {
        if (count > 0) {
          uploadBufferedPart();
        }
        client.completeMultipart(bucket, key, uploadId, etags);
      }
      if (stats != null) {
        stats.incrementBytesWritten(total);
      }
    } catch (IOException | RuntimeException e) {
      abortQuietly(e);
      throw e;
    } finally {
      buffer = null;
    }
  }

  private void uploadBufferedPart() throws IOException {
    try {
      if (uploadId == null) {
        uploadId = client.createMultipart(bucket, key);
      }
      etags.add(client.uploadPart(bucket, key, uploadId, etags.size() + 1, buffer, count));
      if (stats != null) {
        stats.incrementWriteOps(1);
      }
      count = 0;
    } catch (IOException | RuntimeException e) {
      closed = true;
      abortQuietly(e);
      throw e;
    }
  }

  private void abortQuietly(Exception cause) {
    if (uploadId == null) {
      return;
    }
    try {
      client.abortMultipart(bucket, key, uploadId);
    } catch (IOException | RuntimeException e) {
      cause.addSuppressed(e);
    }
    uploadId = null;
  }

  private void grow(int needed) {
    if (needed > buffer.length) {
      int size = buffer.length;
      while (size < needed) {
        size = (int) Math.min((long) size * 2, partSize);
      }
      buffer = java.util.Arrays.copyOf(buffer, size);
    }
  }

  private void checkOpen() throws IOException {
    if (closed) {
      throw new IOException("stream closed: skystore://" + bucket + "/" + key);
    }
  }
}
