package io.skystore.hadoop;

import java.io.EOFException;
import java.io.IOException;
import java.nio.ByteBuffer;
import org.apache.hadoop.fs.ByteBufferPositionedReadable;
import org.apache.hadoop.fs.ByteBufferReadable;
import org.apache.hadoop.fs.FSExceptionMessages;
import org.apache.hadoop.fs.FSInputStream;
import org.apache.hadoop.fs.FileSystem;
import org.apache.hadoop.fs.StreamCapabilities;

/**
 * A seekable view of one object that reads with ranged GETs.
 *
 * <p>Small sequential reads are served from a read-ahead buffer (one GET fills {@code readAhead}
 * bytes); a read at least that large goes straight into the caller's array; seeking is free (the
 * next read fetches from the new position). Positioned reads ({@code read(position, ...)}, used by
 * Parquet and the vectored-read default) leave the stream position alone. The ByteBuffer forms
 * copy through the same paths.
 */
final class SkyStoreInputStream extends FSInputStream
    implements ByteBufferReadable, ByteBufferPositionedReadable, StreamCapabilities {
  private final SkyStoreClient client;
  private final String bucket;
  private final String key;
  private final long length;
  private final int readAhead;
  private final FileSystem.Statistics stats;

  private long pos;
  private byte[] buffer = new byte[0];
  private long bufferStart;
  private boolean closed;

  SkyStoreInputStream(SkyStoreClient client, String bucket, String key, long length, int readAhead,
      FileSystem.Statistics stats) {
    this.client = client;
    this.bucket = bucket;
    this.key = key;
    this.length = length;
    this.readAhead = Math.max(1, readAhead);
    this.stats = stats;
  }

  @Override
  public synchronized void seek(long target) throws IOException {
    checkOpen();
    if (target < 0) {
      throw new EOFException(FSExceptionMessages.NEGATIVE_SEEK + ": " + target);
    }
    if (target > length) {
      throw new EOFException(FSExceptionMessages.CANNOT_SEEK_PAST_EOF + ": " + target);
    }
    pos = target;
  }

  @Override
  public synchronized long getPos() {
    return pos;
  }

  @Override
  public boolean seekToNewSource(long targetPos) {
    return false; // one gateway: no other replica to switch to (the gateway picks the copy)
  }

  @Override
  public synchronized int read() throws IOException {
    byte[] one = new byte[1];
    int n = read(one, 0, 1);
    return n <= 0 ? -1 : one[0] & 0xff;
  }

  @Override
  public synchronized int read(byte[] b, int off, int len) throws IOException {
    checkOpen();
    java.util.Objects.checkFromIndexSize(off, len, b.length);
    if (len == 0) {
      return 0;
    }
    if (pos >= length) {
      return -1;
    }
    int n = fromBuffer(pos, b, off, len);
    if (n == 0) {
      int wanted = (int) Math.min(len, length - pos);
      if (wanted >= readAhead) {
        n = copy(fetch(pos, wanted), b, off, len);
      } else {
        buffer = fetch(pos, (int) Math.min(readAhead, length - pos));
        bufferStart = pos;
        n = fromBuffer(pos, b, off, len);
      }
    }
    pos += n;
    count(n);
    return n;
  }

  @Override
  public synchronized int read(long position, byte[] b, int off, int len) throws IOException {
    checkOpen();
    validatePositionedReadArgs(position, b, off, len);
    if (len == 0) {
      return 0;
    }
    if (position >= length) {
      return -1;
    }
    int wanted = (int) Math.min(len, length - position);
    int n = fromBuffer(position, b, off, wanted);
    if (n < wanted) { // not (all) buffered: one GET for exactly this range
      n = copy(fetch(position, wanted), b, off, wanted);
    }
    count(n);
    return n;
  }

  @Override
  public synchronized int read(ByteBuffer buf) throws IOException {
    return intoBuffer(buf, -1);
  }

  @Override
  public synchronized int read(long position, ByteBuffer buf) throws IOException {
    return intoBuffer(buf, position);
  }

  @Override
  public synchronized void readFully(long position, ByteBuffer buf) throws IOException {
    while (buf.hasRemaining()) {
      int n = intoBuffer(buf, position);
      if (n < 0) {
        throw new EOFException(FSExceptionMessages.EOF_IN_READ_FULLY + ": skystore://" + bucket + "/" + key);
      }
      position += n;
    }
  }

  /** Reads into {@code buf} at the stream position (position < 0) or at {@code position}. */
  private int intoBuffer(ByteBuffer buf, long position) throws IOException {
    if (!buf.hasRemaining()) {
      return 0;
    }
    int n;
    if (buf.hasArray()) {
      int at = buf.arrayOffset() + buf.position();
      n = position < 0 ? read(buf.array(), at, buf.remaining())
          : read(position, buf.array(), at, buf.remaining());
      if (n > 0) {
        buf.position(buf.position() + n);
      }
    } else {
      byte[] tmp = new byte[(int) Math.min(buf.remaining(), Math.max(1, length - Math.max(position, pos)))];
      n = position < 0 ? read(tmp, 0, tmp.length) : read(position, tmp, 0, tmp.length);
      if (n > 0) {
        buf.put(tmp, 0, n);
      }
    }
    return n;
  }

  @Override
  public boolean hasCapability(String capability) {
    switch (capability.toLowerCase(java.util.Locale.ROOT)) {
      case StreamCapabilities.READBYTEBUFFER:
      case StreamCapabilities.PREADBYTEBUFFER:
        return true;
      default:
        return false;
    }
  }

  @Override
  public synchronized int available() throws IOException {
    checkOpen();
    long buffered = bufferStart + buffer.length - pos;
    return buffered > 0 && pos >= bufferStart ? (int) buffered : 0;
  }

  @Override
  public synchronized void close() {
    closed = true;
    buffer = new byte[0];
  }

  /** Copies what the buffer holds from {@code at} on; 0 when {@code at} is outside it. */
  private int fromBuffer(long at, byte[] b, int off, int len) {
    if (at < bufferStart || at >= bufferStart + buffer.length) {
      return 0;
    }
    int from = (int) (at - bufferStart);
    int n = Math.min(len, buffer.length - from);
    System.arraycopy(buffer, from, b, off, n);
    return n;
  }

  private static int copy(byte[] data, byte[] b, int off, int len) {
    int n = Math.min(len, data.length);
    System.arraycopy(data, 0, b, off, n);
    return n;
  }

  private byte[] fetch(long at, int wanted) throws IOException {
    byte[] data = client.getRange(bucket, key, at, wanted);
    if (stats != null) {
      stats.incrementReadOps(1);
    }
    if (data.length == 0) { // the object shrank under us: do not loop forever
      throw new EOFException("skystore://" + bucket + "/" + key + " ended at " + at
          + " before its length " + length);
    }
    return data;
  }

  private void count(int n) {
    if (stats != null && n > 0) {
      stats.incrementBytesRead(n);
    }
  }

  private void checkOpen() throws IOException {
    if (closed) {
      throw new IOException(FSExceptionMessages.STREAM_IS_CLOSED + ": skystore://" + bucket + "/" + key);
    }
  }
}
