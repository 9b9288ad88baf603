package io.skystore.hadoop;

import java.util.List;

/**
 * One page of ListObjectsV2: the objects, the common prefixes (sub-"directories", ending in the
 * delimiter) and the continuation token of the next page (null on the last page).
 */
record ListPage(List<ObjectSummary> objects, List<String> prefixes, String nextToken) {}
