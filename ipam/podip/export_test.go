package podip

// CompactMinRecords is exported for the compaction test.
const CompactMinRecords = compactMinRecords
