// ferry's files-kind volume: a superblock, a SQLite catalog and file data in
// extents inside a virtual disk. Spec: docs/volume-format.md.
export * from './layout.js';
export * from './catalog.js';
export * from './writer.js';
export * from './reader.js';
