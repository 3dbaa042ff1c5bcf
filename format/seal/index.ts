// Sealed objects: compress, then AES-256-GCM with the object's name as
// associated data. Spec: docs/seal-format.md.
export * from './layout.js';
export { Sealer, seal, unseal, DEFAULT_LEVEL } from './seal.js';
export type { RandomSource, SealOptions, SealerOptions } from './seal.js';
export { SealPool } from './pool.js';
export type { SealPoolOptions } from './pool.js';
