// Copies the ONNX Runtime Web files the operator UI loads into the Python package
// (src/isacir/serve/static/vendor), so the service needs no CDN and pip users get them.
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const dist = join(here, "node_modules", "onnxruntime-web", "dist");
const out = join(here, "..", "src", "isacir", "serve", "static", "vendor");
// the UMD build for the WebAssembly backend, and the module and binary it loads at run time
const files = ["ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm"];
mkdirSync(out, { recursive: true });
for (const f of files) copyFileSync(join(dist, f), join(out, f));
const version = JSON.parse(readFileSync(join(dist, "..", "package.json"), "utf8")).version;
writeFileSync(join(out, "VERSION.json"), JSON.stringify({ "onnxruntime-web": version, files }, null, 2) + "\n");
console.log(`onnxruntime-web ${version}: ${files.length} files -> ${out}`);
