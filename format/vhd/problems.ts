// Everything that can be wrong with a VHD, as stable codes. The decoder
// collects problems instead of throwing; `check` and `open` decide which of
// them stop the show.
import { FerryError } from '../errors.js';

export type ProblemCode =
  | 'VHD_NO_FOOTER'
  | 'VHD_BAD_CHECKSUM'
  | 'VHD_FOOTER_MISMATCH'
  | 'VHD_BAD_VERSION'
  | 'VHD_BAD_DISK_TYPE'
  | 'VHD_BAD_SIZE'
  | 'VHD_BAD_HEADER'
  | 'VHD_BAD_BLOCK_SIZE'
  | 'VHD_BAT_TOO_SMALL'
  | 'VHD_BAT_TRUNCATED'
  | 'VHD_BAT_PAST_END'
  | 'VHD_BAT_OVERLAP'
  | 'VHD_TRUNCATED'
  | 'VHD_BAD_LOCATOR'
  | 'VHD_PARENT_MISSING'
  | 'VHD_PARENT_MISMATCH'
  | 'VHD_PARENT_CYCLE'
  | 'VHD_PARENT_SIZE'
  | 'VHD_NOT_A_FILE'
  | 'VHD_NO_ACCESS'
  | 'VHD_MERGE_UNFINISHED'
  | 'VHD_BLOCK_UNREADABLE';

export interface Problem {
  code: ProblemCode;
  /** 'fatal': the disk cannot be opened; 'error': data may read wrong; 'warning': readable as is. */
  severity: 'fatal' | 'error' | 'warning';
  file: string;
  offset?: number;
  field?: string;
  expected?: unknown;
  actual?: unknown;
  message: string;
}

export class VhdError extends FerryError {
  readonly problem: Problem;
  constructor(problem: Problem) {
    super(problem.code, problemLine(problem), { ...problem });
    this.name = 'VhdError';
    this.problem = problem;
  }
}

export function problemLine(p: Problem): string {
  const where = [p.file, p.offset !== undefined ? `offset ${p.offset}` : undefined, p.field].filter(Boolean).join(', ');
  return `${p.code}: ${where}: ${p.message}`;
}
