#!/usr/bin/env node
// Explain images with a converted gnl-onnx model in onnxruntime-node (no Python at run time).
//
//   npm ci --prefix web                       # once: the pinned onnxruntime-node (package-lock.json)
//   gnl-onnx convert model.onnx --methods gnl_ig,ig,gradcam -o model_explain.onnx
//   node web/explain-node.mjs model_explain.onnx images.npy OUT
//
// images.npy: float32, the model's own input (already preprocessed, e.g. saved from
// gnl_onnx.images.load_image or numpy). Writes OUT/<method>.npy (the attribution, shaped like the
// images) for every method in the model, and prints one JSON line per method: the explained class
// (each image's top-1) and its score. onnxruntime-node feeds only the inputs without a default, so
// the points, baseline and target are those written at conversion (convert --steps N).
import { mkdirSync, readFileSync, renameSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import ort from "onnxruntime-node";

const DTYPES = { "<f4": [Float32Array, "float32"], "<i8": [BigInt64Array, "int64"] };

export function readNpy(path) {
  const bytes = readFileSync(path);
  if (bytes.toString("latin1", 0, 6) !== "\x93NUMPY") throw new Error(`${path}: not an .npy file`);
  const major = bytes[6];
  const headerLength = major === 1 ? bytes.readUInt16LE(8) : bytes.readUInt32LE(8);
  const start = major === 1 ? 10 : 12;
  const header = bytes.toString("latin1", start, start + headerLength);
  const descr = /'descr':\s*'([^']+)'/.exec(header)[1];
  if (/'fortran_order':\s*True/.test(header)) throw new Error(`${path}: Fortran order; save it C-contiguous`);
  const shape = /'shape':\s*\(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  if (!DTYPES[descr]) throw new Error(`${path}: dtype ${descr}; give float32 images (numpy: .astype('float32'))`);
  const [Typed, type] = DTYPES[descr];
  const body = bytes.subarray(start + headerLength);
  const data = new Typed(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength));
  return new ort.Tensor(type, data, shape);
}

export function writeNpy(path, tensor) {
  const descr = { float32: "<f4", int64: "<i8" }[tensor.type];
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${tensor.dims.join(", ")}${tensor.dims.length === 1 ? "," : ""}), }`;
  header += " ".repeat(63 - ((header.length + 10) % 64)) + "\n"; // total header a multiple of 64 bytes
  const prefix = Buffer.alloc(10);
  prefix.write("\x93NUMPY", 0, "latin1");
  prefix[6] = 1; prefix[7] = 0;
  prefix.writeUInt16LE(header.length, 8);
  const data = Buffer.from(tensor.data.buffer, tensor.data.byteOffset, tensor.data.byteLength);
  const partial = `${path}.partial`; // written whole, then renamed: a reader never sees half a file
  writeFileSync(partial, Buffer.concat([prefix, Buffer.from(header, "latin1"), data]));
  renameSync(partial, path);
}

async function main(argv) {
  if (argv.length !== 3) {
    console.error("usage: node web/explain-node.mjs MODEL.onnx IMAGES.npy OUT");
    process.exit(2);
  }
  const [modelPath, imagesPath, out] = argv;
  // logSeverityLevel 3: errors only, not the note that inputs with defaults are not folded as constants
  const session = await ort.InferenceSession.create(modelPath, { executionProviders: ["cpu"], logSeverityLevel: 3 });
  const images = readNpy(imagesPath);
  const methods = session.outputNames.filter((n) => n.endsWith(".attribution")).map((n) => n.slice(0, -12));
  if (!methods.length) throw new Error(`${modelPath}: no METHOD.attribution output; convert with --methods`);
  const results = await session.run({ [session.inputNames[0]]: images });
  mkdirSync(out, { recursive: true });
  for (const m of methods) {
    writeNpy(join(out, `${m}.npy`), results[`${m}.attribution`]);
    const scores = results[`${m}.scores`], targets = Array.from(results[`${m}.target_used`].data, Number);
    const classes = scores.dims[1];
    const score = targets.map((t, i) => scores.data[i * classes + t]);
    console.log(JSON.stringify({ method: m, target: targets, score, file: join(out, `${m}.npy`) }));
  }
}

main(process.argv.slice(2)).catch((e) => { console.error(`error: ${e.message}`); process.exit(1); });
