// One codec for every fixed-layout structure of the VHD format: a structure
// is a table of fields (name, offset, size, type); decode and encode both
// walk that table, so a layout is written down exactly once.

export type FieldType = 'u8' | 'u16' | 'u32' | 'u64' | 'bytes' | 'ascii';

export interface Field {
  name: string;
  offset: number;
  size: number;
  type: FieldType;
}

export interface Struct<T> {
  name: string;
  size: number;
  fields: Field[];
  decode(buf: Buffer, at?: number): T;
  encode(value: T, into?: Buffer, at?: number): Buffer;
}

const widths: Partial<Record<FieldType, number>> = { u8: 1, u16: 2, u32: 4, u64: 8 };

export function defineStruct<T extends object>(name: string, size: number, fields: Field[]): Struct<T> {
  // Checked when the module loads: fields in order, within the size, widths right.
  let end = 0;
  for (const f of fields) {
    if (f.offset < end) throw new Error(`${name}.${f.name} overlaps the previous field`);
    const w = widths[f.type];
    if (w !== undefined && w !== f.size) throw new Error(`${name}.${f.name}: ${f.type} must be ${w} bytes`);
    end = f.offset + f.size;
  }
  if (end > size) throw new Error(`${name} fields end at ${end}, past its size ${size}`);

  return {
    name,
    size,
    fields,
    decode(buf: Buffer, at = 0): T {
      const out: Record<string, unknown> = {};
      for (const f of fields) {
        const o = at + f.offset;
        switch (f.type) {
          case 'u8': out[f.name] = buf.readUInt8(o); break;
          case 'u16': out[f.name] = buf.readUInt16BE(o); break;
          case 'u32': out[f.name] = buf.readUInt32BE(o); break;
          case 'u64': out[f.name] = buf.readBigUInt64BE(o); break;
          case 'ascii': out[f.name] = buf.toString('latin1', o, o + f.size); break;
          case 'bytes': out[f.name] = Buffer.from(buf.subarray(o, o + f.size)); break;
        }
      }
      return out as T;
    },
    encode(value: T, into?: Buffer, at = 0): Buffer {
      const buf = into ?? Buffer.alloc(size);
      const v = value as Record<string, unknown>;
      for (const f of fields) {
        const o = at + f.offset;
        const x = v[f.name];
        switch (f.type) {
          case 'u8': buf.writeUInt8(x as number, o); break;
          case 'u16': buf.writeUInt16BE(x as number, o); break;
          case 'u32': buf.writeUInt32BE((x as number) >>> 0, o); break;
          case 'u64': buf.writeBigUInt64BE(x as bigint, o); break;
          case 'ascii': {
            buf.fill(0, o, o + f.size);
            buf.write(x as string, o, f.size, 'latin1');
            break;
          }
          case 'bytes': {
            buf.fill(0, o, o + f.size);
            (x as Buffer).copy(buf, o, 0, Math.min(f.size, (x as Buffer).length));
            break;
          }
        }
      }
      return buf;
    },
  };
}
