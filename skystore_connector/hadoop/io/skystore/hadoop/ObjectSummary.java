package io.skystore.hadoop;

/** One object of a listing or a HEAD: key, size in bytes, last modified (epoch milliseconds). */
record ObjectSummary(String key, long size, long modifiedMillis) {}
