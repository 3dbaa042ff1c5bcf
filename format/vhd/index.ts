// The VHD engine: what the rest of ferry uses.
export { VhdDisk, FileStorage, type VhdStorage } from './vhd.js';
export { openChain, parentCandidates } from './chain.js';
export { createVhd, createDifferencing, writeVhd, isZero, BufferPool, emptyImage, CREATOR_APP, type ParentRef, type EmptyImage } from './create.js';
export { mergeVhd, coalesce, journalPath } from './merge.js';
export { inspectVhd, type Inspection, type LayerInfo } from './check.js';
export { decodeVhd, type ByteSource, type Decoded } from './decode.js';
export { VhdError, type Problem, problemLine } from './problems.js';
export { exportDisk } from './export.js';
export * from './layout.js';
