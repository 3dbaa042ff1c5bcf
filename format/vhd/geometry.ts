// CHS geometry of the VHD footer (VHD spec, appendix "CHS calculation").
//
// The footer carries both a byte size and a geometry, and readers disagree
// on which wins: qemu 7.2 trusts the geometry unless it is the maximum
// 65535/16/255 (or the creator is one it knows). ferry therefore writes the
// exact geometry when the size has one and the maximum geometry otherwise,
// so every reader sees the byte size ferry wrote.
import { SECTOR } from './layout.js';

export interface Geometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

export const MAX_GEOMETRY: Geometry = { cylinders: 65535, heads: 16, sectorsPerTrack: 255 };

/** The spec's algorithm; rounds down. */
export function chsFor(size: number): Geometry {
  let totalSectors = Math.floor(size / SECTOR);
  if (totalSectors > 65535 * 16 * 255) totalSectors = 65535 * 16 * 255;
  let spt: number;
  let heads: number;
  let cth: number;
  if (totalSectors >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(totalSectors / spt);
  } else {
    spt = 17;
    cth = Math.floor(totalSectors / spt);
    heads = Math.floor((cth + 1023) / 1024);
    if (heads < 4) heads = 4;
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(totalSectors / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(totalSectors / spt);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectorsPerTrack: spt };
}

export function geometrySize(g: Geometry): number {
  return g.cylinders * g.heads * g.sectorsPerTrack * SECTOR;
}

export function isMaxGeometry(g: Geometry): boolean {
  return g.cylinders === 65535 && g.heads === 16 && g.sectorsPerTrack === 255;
}

/** The geometry ferry writes for a disk of `size` bytes (see the module comment). */
export function geometryToWrite(size: number): Geometry {
  const g = chsFor(size);
  return geometrySize(g) === size ? g : MAX_GEOMETRY;
}
